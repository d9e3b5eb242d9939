"""The channel between ``flowrig run --backend docker`` on the host and its runner container.

The host owns the run's cluster: only the host process talks to the Docker engine,
and the runner container, where the flow and its dependencies run, holds no Docker
socket. The runner asks the host for its cluster over a channel that the run's own
output cannot reach:

host -> runner: the container's stdin, after the certificates line of
:mod:`flowrig.certs.delivery`. Only the host holds that attach stream::

    {"op": "parameters", "parameters": {...}, "environment": {...}, "key": "<hex>"}   first, once
    {"op": "started", "re": 1, "scheduler_address": "tls://...", "dashboard_link": "...",
     "marks": {"containers_started": <wall clock>, "scheduler_up": <wall clock>}}
    {"op": "failed", "re": 1, "kind": "bad_input" | "infrastructure", "message": "..."}
    {"op": "workers", "joined": 2}      whenever the number of joined workers changes
    {"op": "news", "items": [...]}      what the workers did (asked for with "news": true;
                                        items of :class:`~flowrig.backends.watch.ClusterNews`)
    {"op": "closed", "re": 2, "lives": [...]}   the lives of the run's containers (the
                                        runner's still open; items of
                                        :class:`~flowrig.backends.usage.RoleLife`)

runner -> host: the container's stdout, which the runner claims before it imports
anything of the flow's (:mod:`flowrig.common.claimed_stdout`). File descriptor 1 of the runner
becomes a pipe, and a thread copies what arrives there to the container's stdout with
every record separator (``0x1e``) doubled: nothing the flow, its dependencies or their
subprocesses print, however it was made (a parameter echoed, a line printed at import
time), can begin a control message. A control message is a single separator, the tag,
the HMAC-SHA256 of its body under the run's key, and the body::

    \\x1eflowrig-control <hex mac> {"op": "start", "seq": 1, "n_workers": 2, "adapt": null,
        "worker_threads": 1, "options": {...}, "worker_env": {...}, "no_client_timeout": 60,
        "news": false}
    (with ``[[cluster.worker_groups]]``: "n_workers" is their sum, and "groups":
    [{"name": "gpu", "n_workers": 1, "adapt": [1, 3], "threads": 2, "resources": {"flowrig-group-gpu": 2},
    "cpu": 2.0, "memory_mib": 4096, "gpu": 1, "options": {}}, ...])
    \\x1eflowrig-control <hex mac> {"op": "close", "seq": 2}

The key is made by the host for each run and arrives in the parameters message; the
runner keeps it in its channel object only, never in an environment. The parameters
and the ``environment`` (secrets such as ``PREFECT_API_KEY``) travel on stdin rather
than in the container's environment, which ``docker inspect`` shows.

What this does not stop: the flow runs in the runner's own process, so code in it can
write to the claimed descriptor and read the key from memory, and thus send whatever
the runner could. That is why the host decides every request itself
(:mod:`~flowrig.backends.docker.policy`): the sizes, options and environment the
project baked into the image allows, one start and one close per run. Code in the
flow can end or fail its own run that way, as it could by raising; it cannot make the
host start more, or anything other, than the project allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import queue
import secrets
import signal
import sys
import threading
import time
from typing import Any, BinaryIO, Callable

from flowrig import layout
from flowrig.backends.usage import RoleLife
from flowrig.backends.watch import ClusterNews
from flowrig.common.claimed_stdout import SEPARATOR, ClaimedStdout, claim_stdout, escape
from flowrig.errors import BadInput, InfrastructureError

__all__ = [
    "CONTROL_ENV", "CONTROL_PROTOCOL", "PREFIX", "SEPARATOR", "ClaimedStdout", "Demux", "Refused",
    "RunnerChannel", "claim_stdout", "controlled", "decode", "encode", "escape", "groups_message", "lives_of",
    "new_key", "open_message",
    "runner_channel", "sign", "take_run_inputs",
]

#: Set in a runner container the host controls; its value names the protocol.
CONTROL_ENV = layout.DOCKER_CONTROL_ENV
CONTROL_PROTOCOL = "claimed-stdout-hmac"
#: Starts every control message on the runner's stdout (a separator, then a tag).
PREFIX = SEPARATOR + b"flowrig-control "
#: Host environment variables that reach the runner over the channel, never its
#: environment: they are credentials.
SECRET_PASSTHROUGH = ("PREFECT_API_KEY",)
#: Seconds a runner waits for the host's answer to ``start`` (it starts containers).
START_REPLY_TIMEOUT = 600.0
#: Seconds a runner waits for the host to close its cluster.
CLOSE_REPLY_TIMEOUT = 120.0
#: Bytes of the run's key (HMAC-SHA256).
KEY_BYTES = 32
#: The longest control message the host reads; a start request is a few KB.
MAX_MESSAGE = 64 * 1024
#: The longest line of output the host holds before passing it on in pieces.
MAX_LINE = 1024 * 1024


class Refused(Exception):
    """A control message the host does not act on; the text says why."""


def groups_message(groups: Any) -> list[dict[str, Any]]:
    """Worker groups (:class:`~flowrig.backends.base.WorkerGroupSpec`) as a start request carries them."""
    return [
        {"name": g.name, "n_workers": g.n_workers, "adapt": list(g.adapt) if g.adapt else None, "threads": g.threads,
         "resources": dict(g.resources), "cpu": g.cpu, "memory_mib": g.memory_mib, "gpu": g.gpu,
         "options": dict(g.options)}
        for g in groups
    ]


def new_key() -> bytes:
    """A run's key for its control messages."""
    return secrets.token_bytes(KEY_BYTES)


def encode(op: str, **fields: Any) -> bytes:
    """One host -> runner message as a line."""
    return json.dumps({"op": op, **fields}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """A host -> runner message from its line.

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


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def sign(key: bytes, op: str, seq: int, **fields: Any) -> bytes:
    """One runner -> host control message, ready for :meth:`ClaimedStdout.send`."""
    body = json.dumps({"op": op, "seq": seq, **fields}, separators=(",", ":")).encode()
    return PREFIX + _mac(key, body) + b" " + body + b"\n"


def open_message(key: bytes, payload: bytes) -> dict[str, Any]:
    """The request in a control message (what follows :data:`PREFIX`), once its MAC
    checks out.

    Raises
    ------
    Refused
        A message that is not signed with the run's key, or not a request.
    """
    mac, _, body = payload.partition(b" ")
    if not mac or not body:
        raise Refused("it carries no signature (an image whose flowrig is older than the host's?)")
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise Refused("its signature is not the run's")
    try:
        message = json.loads(body)
    except ValueError:
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise Refused("it is not a request")
    seq = message.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise Refused("it has no sequence number")
    return message


def describe(payload: bytes, width: int = 160) -> str:
    """A short, printable form of a control message for a log line."""
    _, _, body = payload.partition(b" ")
    text = (body or payload).decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= width else text[: width - 3] + "..."


def lives_of(message: dict[str, Any]) -> list[RoleLife]:
    """The roles' lives a ``closed`` message carries; items that are not one are left out."""
    items = message.get("lives")
    lives = []
    for item in items if isinstance(items, list) else []:
        try:
            lives.append(RoleLife.from_dict(item))
        except ValueError:
            continue  # not a life this runner knows
    return lives


#: The marks of a cluster's start a ``started`` answer may carry (the run's timeline).
START_MARKS = ("containers_started", "scheduler_up")


def start_marks(message: dict[str, Any]) -> dict[str, float]:
    """The marks of a ``started`` answer on this process's ``time.perf_counter()`` clock;
    what is not a known mark with a time of the wall clock is left out."""
    marks = message.get("marks")
    if not isinstance(marks, dict):
        return {}
    now, wall = time.perf_counter(), time.time()
    return {
        key: now - (wall - float(at)) for key, at in marks.items()
        if key in START_MARKS and isinstance(at, (int, float)) and not isinstance(at, bool) and 0 < at <= wall + 60
    }


def raise_failure(message: dict[str, Any]) -> None:
    """Raise what a ``failed`` message reports, as the error it was on the host."""
    text = str(message.get("message") or "the host could not start the cluster")
    if message.get("kind") == "bad_input":
        raise BadInput(text)
    raise InfrastructureError(text)


# --- the host's reading of it -------------------------------------------------------


def _significant(escaped: bytes, start: int = 0) -> int:
    """Index of the first separator in ``escaped`` that is not one of a doubled pair
    (a control message's start, or a lone separator), else -1."""
    i = start
    while (j := escaped.find(SEPARATOR, i)) >= 0:
        if escaped[j + 1:j + 2] == SEPARATOR:
            i = j + 2
            continue
        return j
    return -1


def _unescape(escaped: bytes) -> bytes:
    # A lone separator (output written before the claim) stays as it is.
    return escaped.replace(SEPARATOR + SEPARATOR, SEPARATOR)


class Demux:
    """The runner's stdout as the host reads it: the run's output apart from control
    messages.

    :meth:`feed` takes the stream in chunks as they come and returns the output that
    is ready to copy (whole lines, unescaped, byte for byte what the run wrote); each
    control message goes to ``on_message`` (what follows :data:`PREFIX`, without its
    newline). Output that holds :data:`PREFIX` (the run printed something that looks
    like a request) is also shown to ``on_printed``, from the tag to the line's end.
    """

    def __init__(
        self, on_message: Callable[[bytes], None], on_printed: Callable[[bytes], None] | None = None
    ) -> None:
        self._on_message = on_message
        self._on_printed = on_printed
        self._pending = b""
        self._tail = b""

    def _line(self, escaped: bytes, newline: bytes = b"") -> bytes:
        """The output of one escaped line; its message, if it ends with one, is handed
        on (and the newline is the message's, not the output's)."""
        i = 0
        while (j := _significant(escaped, i)) >= 0:
            if escaped.startswith(PREFIX, j):
                payload = escaped[j + len(PREFIX):]
                if len(payload) > MAX_MESSAGE:
                    payload = b"(a control message of more than %d bytes)" % MAX_MESSAGE
                self._on_message(payload)
                return self._printed(_unescape(escaped[:j]))
            i = j + 1  # a lone separator: output
        return self._printed(_unescape(escaped)) + newline

    def _printed(self, output: bytes) -> bytes:
        # The output is looked at as one stream: a control message of the runner's
        # may fall in the middle of a printed line.
        window = self._tail + output
        at = window.find(PREFIX)
        if self._on_printed is not None and at >= 0:
            self._on_printed(window[at:].split(b"\n", 1)[0])
        self._tail = window[-(len(PREFIX) - 1):]
        return output

    def feed(self, chunk: bytes) -> bytes:
        """The output ready to copy after ``chunk``."""
        self._pending += chunk
        out = []
        while (end := self._pending.find(b"\n")) >= 0:
            line, self._pending = self._pending[:end], self._pending[end + 1:]
            out.append(self._line(line, b"\n"))
        if len(self._pending) > MAX_LINE:
            out.append(self._overflow())
        return b"".join(out)

    def _overflow(self) -> bytes:
        """Part of a line too long to hold: the output before the first separator that
        may start a control message (or pair with one in the next chunk)."""
        pending = self._pending
        cut = _significant(pending)
        if cut <= 0:
            # No such separator, or a "message" longer than any the runner sends:
            # output, which it must be.
            cut = len(pending)
        self._pending = pending[cut:]
        return _unescape(pending[:cut])

    def end(self) -> bytes:
        """The output of an unfinished last line (the stream has ended)."""
        pending, self._pending = self._pending, b""
        return self._line(pending) if pending else b""


# --- the runner's end ---------------------------------------------------------------


class RunnerChannel:
    """The runner's end: reads the host's messages from stdin, sends signed requests.

    A thread reads stdin for the run's whole life: when it ends (the host process has
    gone, however it went), the runner gets SIGTERM and tears its run down.
    """

    def __init__(self, stdin: BinaryIO, out: ClaimedStdout) -> None:
        self._stdin = stdin
        self._out = out
        self._replies: "queue.Queue[dict[str, Any] | None]" = queue.Queue()
        self._write_lock = threading.Lock()
        self._seq = 0
        #: Workers joined to the run's scheduler, as the host last reported.
        self.workers_joined = 0
        #: Called with each piece of the host's news about the workers.
        self.on_news: Callable[[ClusterNews], None] | None = None
        message = self._read()
        if message is None or message.get("op") != "parameters":
            raise InfrastructureError("the host that started this runner sent no parameters")
        try:
            self._key = bytes.fromhex(str(message.pop("key", "")))
        except ValueError:
            self._key = b""
        if len(self._key) != KEY_BYTES:
            raise InfrastructureError("the host that started this runner sent no key for its requests")
        self.parameters_message = message
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
        """Send ``op`` and wait for the host's answer to it.

        Answers to other requests (the host refused something it did not get from
        here) are passed over.

        Raises
        ------
        BadInput, InfrastructureError
            What the host reports (``failed``), a host that has gone, or no answer.
        """
        with self._write_lock:
            self._seq += 1
            seq = self._seq
            with contextlib.suppress(Exception):
                sys.stdout.flush()  # the run's own output first
            self._out.send(sign(self._key, op, seq, **fields))
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise InfrastructureError(f"the host did not answer {op!r} within {timeout:.0f} s") from None
            if reply is None:
                self._replies.put(None)
                raise InfrastructureError("the host that started this run has gone")
            if reply.get("re") != seq:
                continue
            if reply.get("op") == "failed":
                raise_failure(reply)
            return reply


_channel: RunnerChannel | None = None


def runner_channel() -> RunnerChannel:
    """This runner's channel to its host, opened on first use (stdin, claimed stdout)."""
    global _channel
    if _channel is None:
        # Unbuffered reads of fd 0 went before (the certificates line): from here on
        # the channel is stdin's only reader.
        stdin = os.fdopen(os.dup(0), "rb")
        _channel = RunnerChannel(stdin, claim_stdout())
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
