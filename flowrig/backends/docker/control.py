"""The channel between ``flowrig run --backend docker`` on the host and its runner container.

The host owns the run's cluster: only the host process talks to the Docker engine,
and the runner container, where the flow and its dependencies run, holds no Docker
socket. The runner asks the host for its cluster over its own standard streams:

host -> runner (the container's stdin, after the certificates line of
:mod:`flowrig.certs.delivery`)::

    {"op": "parameters", "parameters": {...}, "environment": {...}}   first, once
    {"op": "started", "scheduler_address": "tls://...", "dashboard_link": "..."}
    {"op": "failed", "kind": "bad_input" | "infrastructure", "message": "..."}
    {"op": "workers", "joined": 2}      whenever the number of joined workers changes
    {"op": "news", "items": [...]}      what the workers did (asked for with "news": true;
                                        items of :class:`~flowrig.backends.watch.ClusterNews`)
    {"op": "closed"}

runner -> host (lines of the container's stdout that start with :data:`PREFIX`; every
other line is the run's own output)::

    {"op": "start", "n_workers": 2, "adapt": null, "worker_threads": 1,
     "options": {...}, "worker_env": {...}, "no_client_timeout": 60, "news": false}
    {"op": "close"}

The parameters and the ``environment`` (secrets such as ``PREFECT_API_KEY``) travel
here rather than in the container's environment, which ``docker inspect`` shows.
Whatever a runner asks for, the host starts only workers of the run's own image on the
run's own network, with options it validates itself.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
from typing import Any, BinaryIO, Callable

from flowrig.backends.watch import ClusterNews
from flowrig.errors import BadInput, InfrastructureError

#: Set in a runner container the host controls.
CONTROL_ENV = "FLOWRIG_DOCKER_CONTROL"
#: Starts every control line on the runner's stdout (a record separator, then a tag).
PREFIX = b"\x1eflowrig-control "
#: Host environment variables that reach the runner over the channel, never its
#: environment: they are credentials.
SECRET_PASSTHROUGH = ("PREFECT_API_KEY",)
#: Seconds a runner waits for the host's answer to ``start`` (it starts containers).
START_REPLY_TIMEOUT = 600.0
#: Seconds a runner waits for the host to close its cluster.
CLOSE_REPLY_TIMEOUT = 120.0


def encode(op: str, **fields: Any) -> bytes:
    """One message as a line (without :data:`PREFIX`)."""
    return json.dumps({"op": op, **fields}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """A message from its line.

    Raises
    ------
    InfrastructureError
        When the line is not a message (the other side is not a flowrig of this kind).
    """
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise InfrastructureError(f"unexpected line on the docker backend's control channel: {line[:80]!r}")
    return message


def split_control(line: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """A line of the runner's stdout as (the run's own output, the message in it or ``None``).

    A message may follow output that did not end its line (``print(..., end="")`` in
    the flow): the text before :data:`PREFIX` is output, what follows is the message.
    """
    at = line.find(PREFIX)
    if at < 0:
        return line, None
    return line[:at], decode(line[at + len(PREFIX):])


def raise_failure(message: dict[str, Any]) -> None:
    """Raise what a ``failed`` message reports, as the error it was on the host."""
    text = str(message.get("message") or "the host could not start the cluster")
    if message.get("kind") == "bad_input":
        raise BadInput(text)
    raise InfrastructureError(text)


class RunnerChannel:
    """The runner's end: reads the host's messages from stdin, writes requests to stdout.

    A thread reads stdin for the run's whole life: when it ends (the host process has
    gone, however it went), the runner gets SIGTERM and tears its run down.
    """

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._replies: "queue.Queue[dict[str, Any] | None]" = queue.Queue()
        self._write_lock = threading.Lock()
        #: Workers joined to the run's scheduler, as the host last reported.
        self.workers_joined = 0
        #: Called with each piece of the host's news about the workers.
        self.on_news: Callable[[ClusterNews], None] | None = None
        self.parameters_message = self._read()
        if self.parameters_message is None or self.parameters_message.get("op") != "parameters":
            raise InfrastructureError("the host that started this runner sent no parameters")
        threading.Thread(target=self._read_all, name="flowrig-docker-control", daemon=True).start()

    def _read(self) -> dict[str, Any] | None:
        line = self._stdin.readline()
        return decode(line) if line.strip() else None

    def _read_all(self) -> None:
        try:
            while True:
                message = self._read()
                if message is None:
                    break
                if message["op"] == "workers":
                    # News, not an answer: no request waits for it.
                    self.workers_joined = int(message.get("joined") or 0)
                    continue
                if message["op"] == "news":
                    self._tell(message.get("items"))
                    continue
                self._replies.put(message)
        except (OSError, InfrastructureError):
            pass
        self._replies.put(None)
        # No host any more: nothing can tear the cluster down but the runner itself.
        os.kill(os.getpid(), signal.SIGTERM)

    def _tell(self, items: Any) -> None:
        on_news = self.on_news
        if on_news is None or not isinstance(items, list):
            return
        for item in items:
            try:
                on_news(ClusterNews.from_dict(item))
            except ValueError:
                continue  # not news of a kind this runner knows

    def request(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Send ``op`` and wait for the host's answer.

        Raises
        ------
        BadInput, InfrastructureError
            What the host reports (``failed``), a host that has gone, or no answer.
        """
        with self._write_lock:
            sys.stdout.flush()  # the run's own output first, so no line is split
            self._stdout.write(PREFIX + encode(op, **fields))
            self._stdout.flush()
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise InfrastructureError(f"the host did not answer {op!r} within {timeout:.0f} s") from None
        if reply is None:
            raise InfrastructureError("the host that started this run has gone")
        if reply.get("op") == "failed":
            raise_failure(reply)
        return reply


_channel: RunnerChannel | None = None


def runner_channel() -> RunnerChannel:
    """This runner's channel to its host, opened on first use (stdin, stdout)."""
    global _channel
    if _channel is None:
        # Unbuffered reads of fd 0 went before (the certificates line): from here on
        # the channel is stdin's only reader.
        stdin = os.fdopen(os.dup(0), "rb")
        _channel = RunnerChannel(stdin, sys.stdout.buffer)
    return _channel


def controlled() -> bool:
    """Whether this process is a runner container whose host owns the cluster."""
    return bool(os.environ.get(CONTROL_ENV))


def take_run_inputs() -> dict[str, Any]:
    """The parameters the host sent; its secrets go into this process's environment
    (not the container's, which ``docker inspect`` shows): :data:`SECRET_PASSTHROUGH`
    and the project's ``[cluster.options] secrets``, which the host read from its own."""
    message = runner_channel().parameters_message
    for name, value in (message.get("environment") or {}).items():
        if isinstance(name, str) and name.isidentifier() and isinstance(value, str):
            os.environ[name] = value
    parameters = message.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InfrastructureError("the host sent parameters that are not a JSON object")
    return parameters
