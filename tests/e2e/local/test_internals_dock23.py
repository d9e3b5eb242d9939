"""Fences of what the image's worker role assumes of distributed's worker command
(:mod:`flowrig.roles.forked_dask_worker`)."""

from __future__ import annotations

import click


def test_the_dask_worker_command_is_a_click_command_that_runs_in_process():
    from distributed.cli import dask_worker

    # Run with main(args=...) in the nanny's own process, it parses distributed's own options.
    assert isinstance(dask_worker.main, click.Command)
    names = {opt for param in dask_worker.main.params for opt in getattr(param, "opts", [])}
    assert {"--nthreads", "--name", "--preload", "--death-timeout", "--tls-cert"} <= names
    try:
        dask_worker.main.main(args=["--version"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    else:  # pragma: no cover - click exits after --version
        raise AssertionError("--version did not exit")


def test_the_nanny_reads_the_multiprocessing_method_when_it_starts_a_worker_process():
    import inspect

    from distributed.nanny import WorkerProcess
    from distributed.utils import get_mp_context

    assert "get_mp_context" in inspect.getsource(WorkerProcess.start)
    assert "distributed.worker.multiprocessing-method" in inspect.getsource(get_mp_context)
