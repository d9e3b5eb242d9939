"""Local workers fork from a copy of the runner, which has imported Prefect already.

Local worker processes come from multiprocessing's fork server. The standard server is
a fresh interpreter that must import Prefect's engine once more before it forks the
first worker: two to three seconds of CPU, at the very moment the run's API server is
importing Prefect too. When a run starts its cluster the runner has imported all of it
and is still single-threaded, so the fork server is started right there by
``os.fork()`` and holds all of it for free. Workers still fork from that server, never
from the runner, whose threads (the cluster's event loop) start later.

Fenced here:

- :mod:`multiprocessing.forkserver`'s module-level ``_forkserver`` object, the state
  its own ``ensure_running`` sets (``_forkserver_address``, ``_forkserver_alive_fd``,
  ``_forkserver_pid``, ``_lock``) and the signature of ``forkserver.main``. Where they
  are not what this module knows (another Python, such as 3.14 with its authenticated
  fork server), or where the runner already runs threads, :func:`start` returns
  ``False`` and says so in the log; the standard server, preloaded, starts with the
  first worker instead;
- distributed's ``get_mp_context`` setting the fork server's preload list the first
  time it is called, and ``Nanny.instantiate`` being where a nanny starts (and
  restarts) its worker process, reading ``distributed.worker.multiprocessing-method``;
- ``Nanny._on_worker_exit(exitcode)`` being called when the worker process exits, and
  the memory monitor logging its event (:mod:`flowrig.internals.dask_events`) through
  ``Nanny.log_event`` before it terminates a worker: how a lost local worker's reason
  is known (:func:`worker_exits`).

tests/e2e/local/test_internals.py checks each on this machine's Python and in the image's.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from flowrig.common import forksafe
from flowrig.internals.dask_events import MEMORY_RESTART_TOPIC

logger = logging.getLogger("flowrig.local")

_KNOWN_MAIN_PARAMETERS = ["listener_fd", "alive_r", "preload", "main_path", "sys_path"]
_KNOWN_STATE = ("_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid", "_lock")


def supported() -> bool:
    """Whether this Python's fork server is the one this module knows how to start."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or not all(hasattr(server, name) for name in _KNOWN_STATE):
        return False
    if hasattr(server, "_forkserver_authkey"):
        return False  # newer servers authenticate clients with a key this module does not set
    try:
        parameters = list(inspect.signature(forkserver.main).parameters)
    except (TypeError, ValueError):
        return False
    return parameters == _KNOWN_MAIN_PARAMETERS


#: The longest path a Unix socket may have on Linux (``sun_path``, less its closing NUL).
_SUN_PATH_MAX = 107


def _listener_address(connection: Any, util: Any) -> str:
    """Where the fork server listens: multiprocessing's own choice, in its folder under
    TMPDIR; when a deep TMPDIR makes that path longer than a Unix socket's may be (the
    standard fork server fails there too), a private folder of its own under ``/tmp``,
    mode 0700 like multiprocessing's, removed when the runner exits."""
    address = connection.arbitrary_address("AF_UNIX")
    if len(os.fsencode(address)) <= _SUN_PATH_MAX:
        return address
    folder = tempfile.mkdtemp(prefix="flowrig-fs-", dir="/tmp")
    util.Finalize(None, shutil.rmtree, args=(folder, True), exitpriority=-100)
    return os.path.join(folder, "listener")


def start(own_session: bool = True) -> bool:
    """Start the fork server as a fork of this process, unless one runs already.

    ``own_session`` puts the server, and the processes it forks, in a session of their
    own (see :func:`_serve`); without it they stay in this process's group and get the
    signals sent to it.

    Returns
    -------
    bool
        ``True`` when a forked server runs; ``False`` when multiprocessing should
        start its standard one (unknown Python, threads running, or a standard
        server already started).
    """
    from multiprocessing import connection, forkserver, resource_tracker, util

    if not supported():
        logger.info(
            "local workers start from Python's standard fork server: this Python's "
            "(%s) is not one flowrig can fork from the runner",
            sys.version.split()[0],
        )
        return False
    server = forkserver._forkserver
    with server._lock:
        if server._forkserver_pid is not None:
            pid, _ = os.waitpid(server._forkserver_pid, os.WNOHANG)
            if not pid:
                return getattr(server, "_flowrig_forked", False)
            os.close(server._forkserver_alive_fd)
            server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
        if not forksafe.only_fork_safe_threads():
            logger.debug("local workers start from the standard fork server: threads are running")
            return False
        resource_tracker.ensure_running()
        listener = socket.socket(socket.AF_UNIX)
        address = _listener_address(connection, util)
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        # Every client holds the write end of the "alive" pipe; the server exits when
        # the last one has gone, the runner included, even when it is killed.
        alive_r, alive_w = os.pipe()
        # Buffered output would otherwise be written twice, once by each process.
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked server; its workers show it works
            _serve(listener, alive_r, alive_w, own_session)
        os.close(alive_r)
        listener.close()
        server._forkserver_address = address
        server._forkserver_alive_fd = alive_w
        server._forkserver_pid = pid
        server._flowrig_forked = True
    return True


def _serve(listener: socket.socket, alive_r: int, alive_w: int, own_session: bool) -> None:
    from multiprocessing import forkserver

    code = 0
    try:
        os.close(alive_w)
        # The runner's signal handling is not the server's: its SIGTERM handler would
        # raise the runner's exception here, and its wakeup fd would report this
        # process's SIGCHLDs to the runner as signals the run received.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # A session of its own, for the server and the roles it forks: a signal sent to
        # the runner's whole process group (Ctrl-C in a terminal, timeout(1), an init
        # forwarding `docker stop`) reaches only the runner, which tears the cluster down
        # in order. Roles that die with the runner's SIGTERM would leave it waiting
        # on them, and their nannies would start them again.
        if own_session:
            os.setsid()
        forkserver.main(listener.fileno(), alive_r, [])
    except SystemExit as exc:  # the server's normal end: its last client has gone
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        code = 1
    finally:
        # Never return into the runner's code, nor run its exit handlers.
        os._exit(code)


def prepare(preload: str, own_session: bool = True) -> bool:
    """Make local workers fork from a server that imported ``preload`` (and distributed).

    The server is a fork of this process where :func:`start` can do it, else Python's
    standard one, started with the first worker, which imports ``preload`` first.
    ``own_session`` is :func:`start`'s.

    Returns
    -------
    bool
        Whether the server is a fork of this process.
    """
    import multiprocessing

    import dask
    from distributed.utils import get_mp_context

    # distributed sets the fork server's preload list the first time it is asked for a
    # forkserver context; ask first, then set ours, or its list would replace ours.
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context()
    multiprocessing.get_context("forkserver").set_forkserver_preload([preload, "distributed"])
    return start(own_session)


def nanny_class() -> type:
    """A nanny whose worker processes come from the fork server.

    The multiprocessing method is distributed's public setting, read whenever a nanny
    starts a worker process; it is set only around that, so nothing else in this process
    (a notebook's own clusters, say) changes how it starts processes.
    """
    import dask
    from distributed import Nanny
    from distributed.core import Status

    #: A nanny in these states has its worker stop on purpose: no exit to record.
    stopping = (Status.closing, Status.closed, Status.closing_gracefully, Status.failed)

    class ForkserverNanny(Nanny):
        async def instantiate(self) -> Any:
            with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
                return await super().instantiate()

        def log_event(self, topic: Any, msg: Any) -> None:
            # The memory monitor's notice, just before it terminates the worker process.
            if topic == MEMORY_RESTART_TOPIC and isinstance(msg, dict):
                self._flowrig_memory = {**msg, "limit": getattr(self.memory_manager, "memory_limit", None)}
            super().log_event(topic, msg)

        async def _on_worker_exit(self, exitcode: int) -> Any:
            if self.status not in stopping:
                exits = self.__dict__.setdefault("flowrig_worker_exits", [])
                exits.append(WorkerExit(exitcode, self.__dict__.pop("_flowrig_memory", None)))
                del exits[:-WORKER_EXITS_KEPT]
            return await super()._on_worker_exit(exitcode)

    return ForkserverNanny


#: Unexpected exits a nanny remembers (oldest dropped).
WORKER_EXITS_KEPT = 16


@dataclass(frozen=True)
class WorkerExit:
    """A worker process that exited while its nanny was running (not asked to stop).

    Parameters
    ----------
    code
        Its exit code (negative: the signal that ended it).
    memory
        The nanny's memory-restart event (``rss``, ``limit`` in bytes), when the
        nanny ended it for using too much memory.
    """

    code: int
    memory: dict[str, Any] | None = None


def worker_exits(nanny: Any) -> list[WorkerExit]:
    """The unexpected exits a :func:`nanny_class` nanny recorded, oldest first (taken
    from it: each is returned once)."""
    exits = getattr(nanny, "__dict__", {}).get("flowrig_worker_exits") or []
    taken = []
    while exits:  # one at a time: the nanny may add one meanwhile
        taken.append(exits.pop(0))
    return taken
