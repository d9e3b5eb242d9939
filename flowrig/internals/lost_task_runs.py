"""Task runs never left RUNNING when Dask gives up on their task.

A Prefect task run's states are set from where it runs: the worker. When Dask gives up
on a task instead (``KilledWorker``: it took workers down; ``CancelledError``: the
cluster lost it), no worker reports again, and the task run would stay RUNNING on the
server for ever (PrefectHQ/prefect#8602). The runner's futures of such a task set its
task run Crashed through Prefect's public client (``set_task_run_state(..., force=True)``),
once, naming Dask's error; what the flow sees is unchanged (the same exception).

Fenced here (checked by tests/e2e/local/test_internals_drain.py on the locked versions):
``PrefectDaskFuture`` keeps the Dask future as ``._wrapped_future`` and its final state as
``._final_state``, its ``result``/``wait`` are the only places that read the Dask
future's outcome, and a final state's ``result(raise_on_failure=, _sync=True)`` is what
``result`` returns (the method is prefect-dask's, with one ``except`` added).

May import: the standard library and the projects it fences.
"""

from __future__ import annotations

import logging
from typing import Any

import distributed
from distributed.client import FutureCancelledError
from prefect.states import State
from prefect_dask.task_runners import PrefectDaskFuture

logger = logging.getLogger("flowrig.tasks")

#: What a Dask future raises when the cluster, not the task, ended it.
LOST = (distributed.KilledWorker, FutureCancelledError)


def report_lost(task_run_id: Any, error: BaseException) -> bool:
    """Set the task run ``task_run_id`` Crashed on the run's API, naming ``error``;
    whether the API took it (a task run it never heard of is no error)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    message = f"the Dask cluster gave up on this task ({type(error).__name__}: {error})"
    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_state(task_run_id, Crashed(message=message), force=True)
    except Exception as exc:  # the flow's own outcome matters more
        logger.debug("could not mark task run %s crashed: %s", task_run_id, exc)
        return False
    return True


class LostAwareFuture(PrefectDaskFuture):
    """A ``PrefectDaskFuture`` whose task run ends Crashed when Dask gives up on it.

    Its Dask future may run several task runs (a chunk of a map): then ``_index`` is
    this one's place in the list of States it gives, and when Dask gives up on the
    chunk, ``_rebind()`` may give this future a Dask future of its own, which is then
    waited on instead.
    """

    _lost_reported = False
    #: This task run's place in its Dask future's list of States (``None``: the Dask
    #: future's result is this task run's own).
    _index: int | None = None

    def _lost(self, error: BaseException) -> None:
        if not self._lost_reported:
            self._lost_reported = True
            report_lost(self.task_run_id, error)

    def _rebind(self) -> bool:
        """Whether this future now has another Dask future to wait on (after a loss)."""
        return False

    def _pick(self, value: Any) -> Any:
        """This task run's outcome out of what its Dask future gave."""
        if self._index is None or not isinstance(value, list):
            return value
        return value[self._index]

    def wait(self, timeout: float | None = None) -> None:
        try:
            result = self._pick(self._wrapped_future.result(timeout=timeout))
        except LOST as error:
            if self._rebind():
                return self.wait(timeout)
            self._lost(error)
            return
        except Exception:
            return  # the task failed, or the timeout passed: as prefect-dask does
        if isinstance(result, State):
            self._final_state = result

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        # prefect-dask's own, with Dask giving up told to the API before it is raised.
        if not self._final_state:
            try:
                future_result = self._pick(self._wrapped_future.result(timeout=timeout))
            except distributed.TimeoutError as exc:
                raise TimeoutError(f"Task run {self.task_run_id} did not complete within {timeout} seconds") from exc
            except LOST as error:
                if self._rebind():
                    return self.result(timeout=timeout, raise_on_failure=raise_on_failure)
                self._lost(error)
                raise
            if not isinstance(future_result, State):
                return future_result
            self._final_state = future_result
        return self._final_state.result(raise_on_failure=raise_on_failure, _sync=True)
