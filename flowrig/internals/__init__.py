"""The fence: every place flowrig relies on private or undocumented behaviour of
Prefect, prefect-dask, distributed or CPython's multiprocessing.

Nothing outside this package touches such internals. Each module's docstring lists what
it relies on, and ``tests/e2e/local/test_internals.py`` has a test per reliance that fails (never
skips, never falls back quietly) when the locked versions stop behaving as assumed. On
an upgrade of one of those projects, run that file first (CONTRIBUTING.md says how).

- :mod:`~flowrig.internals.prefect_settings`: settings shipped to tasks as objects;
- :mod:`~flowrig.internals.prefect_engine`: the engine's imports, reporting queues and
  the entry for an existing flow run;
- :mod:`~flowrig.internals.prefect_server`: the API server's app and database set-up;
- :mod:`~flowrig.internals.forkserver`: local workers forked from a copy of the runner;
- :mod:`~flowrig.internals.dask_clients`: a worker's own Dask client told from the runner's;
- :mod:`~flowrig.internals.spec_cluster`: a cluster's start given up from another thread;
- :mod:`~flowrig.internals.prefect_prints`: the log records of ``log_prints`` told apart;
- :mod:`~flowrig.internals.dask_events`: the scheduler's events of nannies that ended
  their worker for memory;
- :mod:`~flowrig.internals.lost_task_runs`: task runs set Crashed when Dask gives up on
  their task (the runner's futures);
- :mod:`~flowrig.internals.drain_status`: where a draining worker stands, read from the
  scheduler's worker states and the worker's executing tasks;
- :mod:`~flowrig.internals.group_demand`: each worker group's demand and idle workers,
  read from the scheduler's task and worker states (adaptive worker groups);
- :mod:`~flowrig.internals.task_runner`: prefect-dask's task runner with per-run, not
  per-task, overhead, and its worker side (:mod:`~flowrig.internals.task_worker`).
- :mod:`~flowrig.internals.result_paths` and :mod:`~flowrig.internals.cache_keys`: what
  a worker's task runs repeat (result-storage paths, a task's source hash) done once
  per worker process.

May import: the standard library and the projects it fences; nothing of flowrig.
"""
