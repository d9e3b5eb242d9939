"""A task's source hashed once per worker process, not once per task run.

Prefect's default cache policy (``INPUTS + TASK_SOURCE + RUN_ID``) computes a key for
every task run, and its ``TaskSource`` part hashes the task's stored source code
(``task.source_code``) each time: a JSON dump and a hash of the same text, thousands of
times on a worker of a mapped task (about a twentieth of the task engine's time there).
That part of the key depends on the text only.

:func:`install` wraps ``TaskSource.compute_key`` (once per worker process) with a memo
keyed by that text: the first call for a text runs Prefect's own function and later
calls return its result. A task without stored source (Prefect then reads it with
``inspect``) and a text that cannot be a dictionary key go to Prefect's function every
time. The key is therefore the one Prefect computes: caching, its lookups and its
writes are as before; only the repeated hashing is gone.

Fenced by tests/e2e/local/test_internals_workercost2.py: ``TaskSource.compute_key``
returning ``hash_objects(task.source_code, raise_on_failure=True)`` whenever the task
has stored source, whatever the task's other attributes, inputs and flow parameters;
the default policy reaching it through ``TaskSource.compute_key`` on the class.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_INSTALLED = False
_LOCK = threading.Lock()
#: Source text -> its key part; bounded (a worker runs a run's few task functions).
_KEYS: dict[str, Any] = {}
_MAX_KEYS = 512


def install() -> None:
    """Wrap ``TaskSource.compute_key`` (once per process)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        from prefect.cache_policies import TaskSource

        original = TaskSource.compute_key

        @functools.wraps(original)
        def compute_key(self: Any, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> Any:
            lines = getattr(getattr(task_ctx, "task", None), "source_code", None) if task_ctx else None
            if type(lines) is not str:
                return original(self, task_ctx, inputs, flow_parameters, **kwargs)
            try:
                return _KEYS[lines]
            except KeyError:
                pass
            key = original(self, task_ctx, inputs, flow_parameters, **kwargs)
            if key is not None:
                if len(_KEYS) >= _MAX_KEYS:
                    _KEYS.clear()
                _KEYS[lines] = key
            return key

        TaskSource.compute_key = compute_key
        _INSTALLED = True
