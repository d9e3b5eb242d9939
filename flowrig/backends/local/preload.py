"""What local workers' fork server imports before it forks the first worker.

It imports what a first Prefect task imports
(:data:`flowrig.internals.prefect_engine.PREFECT_ENGINE_MODULES`), so that no worker
imports it again, with the cyclic collector paused, and freezes the result so that
every forked worker shares those pages and its collections skip them. The fork server
is a process flowrig owns.
"""

from flowrig.common.startup_gc import collector_paused
from flowrig.internals.prefect_engine import import_flow_engine

with collector_paused():
    import_flow_engine()
