"""What a person or a script sees of a run: the outcome line or JSON object.

With ``--output json`` a command prints its outcome as the last line on stdout on every
way out: a run that completed or failed, bad input, an infrastructure failure, its
timeout, a signal. :class:`OutcomeReport` makes sure of it: it prints once, and a run
whose outcome another process printed (the docker backend's runner container, whose
output is copied here) is not printed twice.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from flowrig.run.config import RunOutcome, RunRecord


def outcome_line(outcome: RunOutcome) -> str:
    """``flowrig run ID: Completed, result 90`` (text output's last line)."""
    line = f"flowrig run {outcome.run_id}: {outcome.state}"
    if outcome.ok:
        data = outcome.to_dict()
        if outcome.tasks_failed:
            line += f", but {outcome.failed_tasks_text()}"
        line += f", result {data.get('result', data.get('result_repr'))}"
    elif outcome.message:
        line += f": {outcome.message}"
    return line


def print_outcome(outcome: RunOutcome, output: str) -> None:
    """Print the outcome for ``--output text|json`` (JSON: the last stdout line)."""
    if output == "json":
        print(outcome.to_json(), flush=True)
        return
    print(outcome_line(outcome), file=sys.stdout, flush=True)


def is_outcome_line(line: str) -> bool:
    """Whether ``line`` is a JSON outcome (what :meth:`RunOutcome.to_json` prints)."""
    if not line.startswith("{") or '"exit_code"' not in line:
        return False
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and {"state", "exit_code", "run_id"} <= set(data)


class _Watched:
    """A text stream that notes whether an outcome line passed through it."""

    def __init__(self, stream: TextIO, report: "OutcomeReport") -> None:
        self._stream, self._report, self._pending = stream, report, ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        if any(is_outcome_line(line) for line in lines):
            self._report.printed = True
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        # Everything else (flush, fileno, isatty, encoding) is the stream's; ``buffer``
        # is left out on purpose, so that bytes copied here are written as text.
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._stream, name)


class OutcomeReport:
    """Prints a command's outcome exactly once (see the module's documentation).

    Parameters
    ----------
    output
        ``text`` or ``json``.
    record
        What the run reached so far.
    """

    def __init__(self, output: str, record: RunRecord) -> None:
        self.output = output
        self.record = record
        self.printed = False

    def outcome(self, outcome: RunOutcome) -> None:
        """Print the run's outcome (its flow ended)."""
        self.printed = True
        print_outcome(outcome, self.output)

    def ended(self, exit_code: int, error: str | None) -> None:
        """The command ends with ``exit_code`` before an outcome was printed: with
        ``--output json``, print what the run reached, the code and the error."""
        if self.printed or self.output != "json":
            return
        self.printed = True
        self.record.timer.end_open_phase(before="teardown")
        self.record.timer.finish()
        try:
            print_outcome(self.record.ended_early(exit_code, error), self.output)
        except (BrokenPipeError, ValueError):  # stdout closed: nobody reads the outcome
            pass

    @contextmanager
    def watching_stdout(self) -> Iterator[None]:
        """Within the block, an outcome line written to ``sys.stdout`` by anyone (a
        runner container's output copied here) counts as printed."""
        original = sys.stdout
        sys.stdout = _Watched(original, self)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout = original
