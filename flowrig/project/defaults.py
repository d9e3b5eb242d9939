"""Defaults of a flow project's ``flowrig.toml``."""

from __future__ import annotations

from flowrig.project.build_rules import PROJECT_FILE

__all__ = ["BACKEND", "MAX_WORKERS", "MIN_WORKERS", "N_WORKERS", "PROJECT_FILE", "WORKER_THREADS"]

#: Backend used when neither the project nor the command line names one.
BACKEND = "local"
#: Cluster size when the project sets neither ``n_workers`` nor ``adapt``.
N_WORKERS = 1
#: Bounds every size is clamped to (a sizing hook cannot escape them).
MIN_WORKERS = 0
MAX_WORKERS = 10
#: Threads per worker process.
WORKER_THREADS = 1
#: The most task runs of one map a Dask task runs (``[cluster] map_chunk``).
MAP_CHUNK = 16
