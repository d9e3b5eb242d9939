"""The fence of a container worker's imports (:mod:`flowrig.internals.prefect_engine`),
checked on the locked versions.

A worker container's nanny imports :data:`TASK_ENGINE_MODULES` before it forks its
worker process, and leaves out :data:`FLOW_ONLY_MODULES`, which only a flow call
needs. That is a saving only while Prefect's task engine and prefect-dask do not import
those themselves. The probe runs in a fresh interpreter: what is imported is a fact
about ``sys.modules``, which this process's own imports would spoil.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, sys
    import distributed.cli.dask_worker
    from flowrig.internals import prefect_engine

    prefect_engine.import_task_engine()
    out = {"flow_only": [name for name in prefect_engine.FLOW_ONLY_MODULES if name in sys.modules],
           "task": [name for name in prefect_engine.TASK_ENGINE_MODULES if name in sys.modules]}
    prefect_engine.import_flow_engine()
    out["after_flow"] = [name for name in prefect_engine.FLOW_ONLY_MODULES if name in sys.modules]
    print(json.dumps(out))
    """
)


def test_a_workers_imports_leave_out_what_only_a_flow_call_needs():
    from flowrig.internals import prefect_engine

    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["flow_only"] == [], "the task engine now imports these itself: the worker's list saves nothing"
    assert out["task"] == list(prefect_engine.TASK_ENGINE_MODULES)
    assert out["after_flow"] == list(prefect_engine.FLOW_ONLY_MODULES)
