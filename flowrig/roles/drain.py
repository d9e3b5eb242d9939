"""A worker that hands its work over before it goes: the drain supervisor.

A worker stopped with notice (a Fargate or EC2 Spot interruption, a VM's preemption,
``docker stop``) has seconds to minutes before it is killed. Dask's own answer to
SIGTERM ends the worker process at once, so what it held in memory is lost and what it
ran starts again from scratch. Run under this supervisor, the worker instead:

1. takes no new task, and copies the data that only it holds to other workers
   (``Scheduler.retire_workers(remove=False)``, a public RPC);
2. lets the tasks it is executing finish, until the notice's deadline nears;
3. retires for good (``remove=True, close_workers=True``): what finished meanwhile is
   copied too, and the scheduler starts what is left elsewhere, as an expected
   removal, so a drain never counts toward ``KilledWorker``.

It first asks the scheduler (:data:`STATUS_OP`, 2 s at most) whether a drain is worth
it: a worker already retired by a scale-down, a run whose runner is no longer
connected (a cluster torn down at the run's end), a scheduler that is closing or
does not answer, or a cluster with no other worker to take the data, all stop the
worker at once, as Dask does. A teardown is therefore as fast as without it.

The entry point runs it (:func:`flowrig.roles.drained`) when the worker's
environment sets ``FLOWRIG_DRAIN_SECONDS`` (seconds from SIGTERM to the kill) or
``FLOWRIG_SPOT_NOTICE`` (where to read a notice that comes before any signal,
:mod:`flowrig.roles.metadata`)::

    python -m flowrig.roles.drain -- python -m distributed.cli.dask_worker ADDRESS --name N --tls-... ...

The worker's scheduler, name and TLS files are read from its own command line. The
Dask command runs in a session of its own: the init in front of the container
(``dumb-init``) signals the supervisor's whole process group, which would otherwise
stop the worker before it could hand anything over. The child gets SIGTERM when the
supervisor dies (``PR_SET_PDEATHSIG``), and the supervisor exits with the child's code.
A second SIGTERM during a drain is ignored. SIGINT stops the worker at once, asking
nobody: the docker backend sends it first when its cluster stops a worker (a teardown,
a scale-down), so that only a stop from outside the run drains. distributed is
imported once a notice comes, not before: the supervisor stays a small process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from flowrig.internals.drain_status import DRAINED_OP, FLUSH_OP, STATUS_OP
from flowrig.roles.commands import DRAIN_ENV, NOTICE_ENV

#: Seconds from SIGTERM to the kill when ``FLOWRIG_DRAIN_SECONDS`` is not set.
DEFAULT_BUDGET = 25.0
#: Seconds each question to the scheduler may take.
ASK_TIMEOUT = 2.0
#: Seconds between two questions while executing tasks finish.
POLL_INTERVAL = 0.5
#: The most seconds kept, before the deadline, for copying what finished and retiring.
MOVE_MARGIN = 20.0
#: The most seconds the worker may take to send its Prefect task events.
FLUSH_TIMEOUT = 5.0
#: Seconds before the deadline by which the final retirement must have returned.
RETIRE_MARGIN = 3.0
#: Seconds the worker has between the supervisor's SIGTERM and its SIGKILL.
KILL_AFTER = 3.0
#: Seconds a retired worker has to close on its own before it gets SIGTERM.
LEAVE_WITHIN = 10.0
_PREFIX = "flowrig-drain"


def say(message: str) -> None:
    print(f"{_PREFIX}: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class WorkerFacts:
    """What the supervisor needs from the worker's own command line."""

    scheduler: str | None = None
    name: str | None = None
    tls: dict[str, str] = field(default_factory=dict)

    @property
    def drainable(self) -> bool:
        """Whether the scheduler can be asked about this worker at all."""
        return bool(self.scheduler and self.name)


_TLS_OPTIONS = {"--tls-ca-file": "tls_ca_file", "--tls-cert": "tls_client_cert", "--tls-key": "tls_client_key"}


def worker_facts(command: Sequence[str]) -> WorkerFacts:
    """The scheduler address, ``--name`` and TLS files of a Dask worker ``command``.

    The address is the first argument with a ``scheme://``; options are read in both
    spellings (``--name N`` and ``--name=N``).
    """
    values: dict[str, str] = {}
    scheduler = None
    args = list(command)
    for i, arg in enumerate(args):
        flag, eq, inline = arg.partition("=")
        if flag in ("--name", *_TLS_OPTIONS) and flag not in values:
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
            if value:
                values[flag] = value
        elif scheduler is None and "://" in arg and not arg.startswith("-"):
            previous = args[i - 1] if i else ""
            if not previous.startswith("-") or "=" in previous or previous in ("--no-nanny", "--nanny"):
                scheduler = arg
    tls = {key: values[flag] for flag, key in _TLS_OPTIONS.items() if flag in values}
    return WorkerFacts(scheduler=scheduler, name=values.get("--name"), tls=tls)


def budget_from(environ: dict[str, str] | os._Environ) -> float:
    """Seconds from SIGTERM to the kill, from :data:`DRAIN_ENV` (a number > 0)."""
    text = environ.get(DRAIN_ENV, "")
    try:
        value = float(text)
    except ValueError:
        if text:
            say(f"{DRAIN_ENV}={text!r} is not a number of seconds: using {DEFAULT_BUDGET:g}")
        return DEFAULT_BUDGET
    return value if value > 0 else DEFAULT_BUDGET


@dataclass
class DrainResult:
    """How a drain went: ``drained`` (the worker retired), ``reason`` (why not, or how)."""

    drained: bool
    reason: str
    finished: int = 0
    rescheduled: int = 0


class _Scheduler:
    """The scheduler, as the worker's certificates reach it (distributed's ``rpc``)."""

    def __init__(self, facts: WorkerFacts) -> None:
        from distributed.core import rpc
        from distributed.security import Security

        security = Security(require_encryption=bool(facts.tls), **facts.tls)
        self.rpc = rpc(facts.scheduler, timeout=ASK_TIMEOUT, connection_args=security.get_connection_args("client"))

    async def call(self, op: str, timeout: float, **kwargs: Any) -> Any:
        return await asyncio.wait_for(getattr(self.rpc, op)(**kwargs), max(0.1, timeout))

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.rpc.close_rpc(), 1.0)
        except Exception:
            pass


async def drain(facts: WorkerFacts, deadline: float, *, clock: Callable[[], float] = time.monotonic) -> DrainResult:
    """Hand the worker's work over before ``deadline`` (a ``clock`` time), or say why not.

    Never raises: a failure to ask is a reason not to drain.
    """
    scheduler = _Scheduler(facts)
    try:
        return await _drain(scheduler, str(facts.name), deadline, clock)
    except Exception as exc:
        return DrainResult(False, f"the scheduler did not answer ({type(exc).__name__}: {exc})")
    finally:
        await scheduler.close()


async def _drain(scheduler: _Scheduler, name: str, deadline: float, clock: Callable[[], float]) -> DrainResult:
    ask = scheduler.call
    first = await ask(STATUS_OP, ASK_TIMEOUT, name=name)
    why_not = _why_not(first)
    if why_not:
        return DrainResult(False, why_not)
    budget = deadline - clock()
    move_margin = min(MOVE_MARGIN, max(budget, 0.0) / 3)
    stimulus = f"flowrig-notice-{name}-{time.time():.0f}"
    # 1. No new task; the data only this worker holds goes to others. Much data may
    # not be copied by then: step 3 copies what it can and retires it in any case.
    try:
        kept = await ask("retire_workers", deadline - move_margin - clock(), names=[name], close_workers=False,
                         remove=False, stimulus_id=stimulus + "-hold")
    except asyncio.TimeoutError:
        kept = {"still copying": True}
    if not kept:
        return DrainResult(False, "no other worker can take its data")
    # 2. What it executes finishes, while there is time.
    now = first
    while clock() < deadline - move_margin:
        now = await ask(STATUS_OP, ASK_TIMEOUT, name=name)
        if not now["known"] or now["executing"] == 0:
            break
        await asyncio.sleep(POLL_INTERVAL)
    finished = max(0, int(first["executing"]) - int(now.get("executing", 0)))
    rescheduled = int(now.get("processing", 0)) if now["known"] else 0
    # The final states of what finished go to Prefect before the worker process ends.
    flush = min(FLUSH_TIMEOUT, deadline - RETIRE_MARGIN - clock())
    if flush > 0:
        try:
            await ask(FLUSH_OP, 2 * flush + 2, name=name, timeout=flush)
        except Exception:
            pass  # the retirement matters more
    # 3. What finished meanwhile is copied; the rest starts elsewhere, as expected.
    retired = await ask("retire_workers", deadline - RETIRE_MARGIN - clock(), names=[name], close_workers=True,
                        remove=True, stimulus_id=stimulus + "-leave")
    if not retired:
        return DrainResult(False, "no other worker can take its data", finished, rescheduled)
    result = DrainResult(True, "retired", finished, rescheduled)
    try:
        await ask(DRAINED_OP, 1.0, name=name, facts={"finished": finished, "rescheduled": rescheduled})
    except Exception:
        pass  # only news
    return result


def _why_not(status: dict[str, Any]) -> str:
    """Why the worker should stop at once instead of draining (``""``: drain it)."""
    if not status.get("known"):
        return "the scheduler has retired it already"
    if not status.get("runner"):
        return "the run is ending (no runner connected)"
    if status.get("status") not in ("running", "paused"):
        return f"it is {status.get('status')} already"
    return ""


#: ``prctl`` of the C library, looked up before the child is forked (Linux only).
_PRCTL: Callable[..., int] | None = None
#: PR_SET_PDEATHSIG: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> None:
    global _PRCTL
    if sys.platform == "linux" and _PRCTL is None:
        try:
            import ctypes

            _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _PRCTL = None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """What the child runs before exec: SIGTERM when the supervisor dies, also when it
    died before this ran."""

    def in_child() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


class Supervisor:
    """Runs the worker ``command`` and drains it on a notice."""

    def __init__(self, command: Sequence[str], budget: float) -> None:
        self.command = list(command)
        self.budget = budget
        self.facts = worker_facts(command)
        self.child: subprocess.Popen | None = None
        self._noticed = threading.Lock()

    def start(self) -> None:
        # Looked up before any thread starts: the forked child only calls it.
        _load_prctl()
        self.child = subprocess.Popen(
            self.command, start_new_session=True, preexec_fn=_die_with_parent(os.getpid()) if _PRCTL else None
        )
        if not self.facts.drainable:
            say("the worker's command names no scheduler address or --name: it will stop without a drain")

    def notice(self, source: str, deadline: float | None = None) -> None:
        """A notice came: drain (once), then stop the worker by ``deadline``."""
        if not self._noticed.acquire(blocking=False):
            return  # one drain; later notices change nothing
        deadline = time.monotonic() + self.budget if deadline is None else deadline
        threading.Thread(target=self._drain_then_stop, args=(source, deadline), name="flowrig-drain",
                         daemon=True).start()

    def stop_now(self) -> None:
        """Stop the worker at once, without a drain (SIGINT: a cluster's own teardown)."""
        self._noticed.acquire(blocking=False)  # a SIGTERM after this starts no drain
        self._signal(signal.SIGTERM)

    def _drain_then_stop(self, source: str, deadline: float) -> None:
        started = time.monotonic()
        try:
            if self.facts.drainable:
                result = asyncio.run(drain(self.facts, deadline))
            else:
                result = DrainResult(False, "the worker's scheduler or name is unknown")
        except Exception as exc:  # distributed missing, say: the worker still stops
            result = DrainResult(False, f"{type(exc).__name__}: {exc}")
        took = time.monotonic() - started
        if result.drained:
            say(f"drained after {source} in {took:.1f} s: {result.finished} tasks finished, "
                f"{result.rescheduled} rescheduled")
        else:
            say(f"{source}: stopping without a drain: {result.reason}")
            self._signal(signal.SIGTERM)
        # Retired, the worker closes on the scheduler's word within a second or two;
        # it has nothing left to hand over, so it need not be given the whole budget.
        self._stop_by(min(deadline, time.monotonic() + LEAVE_WITHIN) if result.drained
                      else time.monotonic() + KILL_AFTER * 2)

    def _stop_by(self, deadline: float) -> None:
        """Wait for the worker until ``deadline``, then SIGTERM, then SIGKILL."""
        assert self.child is not None
        try:
            self.child.wait(timeout=max(0.0, deadline - time.monotonic()))
            return
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGTERM)
        try:
            self.child.wait(timeout=KILL_AFTER)
        except subprocess.TimeoutExpired:
            say("the worker did not stop: killing it")
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        """Wait for the worker; its exit code (``128 + N`` when signal N ended it)."""
        assert self.child is not None
        code = self.child.wait()
        return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowrig.roles.drain [--] COMMAND...``: run and supervise a worker."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        say("usage: python -m flowrig.roles.drain -- WORKER COMMAND...")
        return 2
    supervisor = Supervisor(args, budget_from(os.environ))
    supervisor.start()
    signal.signal(signal.SIGTERM, lambda *_: supervisor.notice("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: supervisor.stop_now())
    if os.environ.get(NOTICE_ENV):
        from flowrig.roles import metadata

        metadata.watch(os.environ[NOTICE_ENV], os.environ, supervisor.notice)
    return supervisor.wait()


if __name__ == "__main__":
    sys.exit(main())
