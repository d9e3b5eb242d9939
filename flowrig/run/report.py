"""What a person or a script sees of a run: the outcome line or JSON object."""

from __future__ import annotations

import sys

from flowrig.run.config import RunOutcome


def print_outcome(outcome: RunOutcome, output: str) -> None:
    """Print the outcome for ``--output text|json`` (JSON: the last stdout line)."""
    if output == "json":
        print(outcome.to_json(), flush=True)
        return
    line = f"flowrig run {outcome.run_id}: {outcome.state}"
    if outcome.ok:
        data = outcome.to_dict()
        line += f", result {data.get('result', data.get('result_repr'))}"
    elif outcome.message:
        line += f": {outcome.message}"
    print(line, file=sys.stdout, flush=True)
