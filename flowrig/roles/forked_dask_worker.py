"""A Dask worker whose nanny forks the worker process from a copy of itself.

distributed's worker command is a nanny that imports distributed, then starts the
worker process as a fresh interpreter, which imports distributed again and then the
worker's preloads (Prefect's task engine). In a container that holds one worker, the
two interpreters import one after the other, on the cluster's start-up path, while
the other workers' containers import the same on the same cores.

Here the nanny process imports what a first Prefect task imports (not what only a flow
call does) before the worker command starts, then starts multiprocessing's fork server
as a fork of itself
(:mod:`flowrig.internals.forkserver`, as the local backend does for its runner), and
runs distributed's worker command in this process with the ``forkserver`` method: the
worker process, and any restart of it by the nanny, is a fork that has imported all of
it already. The command line is distributed's own::

    python -m flowrig.roles.forked_dask_worker ADDRESS [dask worker options]

The imports run after the process's environment is final (its run's secrets and
certificates arrive before it starts), so Prefect's settings, read at import, are the
run's. Where the fork server cannot be forked from here (another Python, threads
running), the standard one starts with the first worker and imports the same modules.
"""

from __future__ import annotations

import sys

#: What the standard fork server imports first where this process cannot be forked.
PRELOAD = "prefect.task_engine"


def main(argv: list[str] | None = None) -> None:
    """Import the worker's engine, fork the fork server, then run distributed's worker CLI."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("--help", "--version") for arg in args):
        return _cli(args)
    from flowrig.common.startup_gc import collector_paused
    from flowrig.internals.prefect_engine import import_task_engine

    with collector_paused():
        import distributed.cli.dask_worker  # noqa: F401  (what the nanny runs)

        import_task_engine()
    import dask

    from flowrig.internals import forkserver

    # In this process's group, unlike a runner's: a worker container is stopped by a
    # signal to its whole group (dumb-init forwarding `docker stop`, the drain supervisor
    # ending its child), and the worker process must get it at once, as a spawned one
    # did, instead of waiting for the nanny to close it after its running tasks.
    forkserver.prepare(PRELOAD, own_session=False)
    # Read whenever the nanny starts its worker process; this process is the nanny only.
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    _cli(args)


def _cli(args: list[str]) -> None:
    from distributed.cli.dask_worker import main as worker_cli

    # The click command exits as its own console script does (SystemExit with its code).
    worker_cli.main(args=args)


if __name__ == "__main__":
    main()
