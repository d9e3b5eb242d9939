"""flowrig's task runner: prefect-dask's ``DaskTaskRunner`` as every flowrig run uses it.

Fenced here:

- ``DaskTaskRunner.duplicate`` rebuilding the runner from its constructor arguments
  (Prefect's flow engine runs a flow on a duplicate of its runner), so flowrig's own
  state is carried over explicitly;
- ``DaskTaskRunner.client`` creating the Dask client on first use, so the run's
  progress subscription is made then;
- Prefect shipping the flow, and with it its task runner, in every task's context: the
  runner pickles without the run's own state (its progress counts).

tests/test_internals.py checks both on the locked versions.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from prefect_dask import DaskTaskRunner

if TYPE_CHECKING:
    from typing import Protocol

    class TaskProgress(Protocol):
        topic: str

        def hook(self, task: Any) -> Any: ...
        def submitted(self, name: str, count: int = 1) -> None: ...
        def event(self, event: Any) -> None: ...


class FlowrigTaskRunner(DaskTaskRunner):
    """A ``DaskTaskRunner`` that reports every task's final state to the run.

    Parameters
    ----------
    progress
        Where task states are counted (``None``: not counted): it adds its hooks to
        each task (``hook``), counts submissions, and handles the workers' events on
        its ``topic`` (:class:`flowrig.run.progress.TaskProgress`).
    **kwargs
        As for ``DaskTaskRunner`` (``address``, ``client_kwargs``...).
    """

    def __init__(self, *args: Any, progress: "TaskProgress | None" = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress
        self._hooked: dict[int, tuple[Any, Any]] = {}
        self._subscribed = False
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # The flow travels with every task (Prefect ships it in the task's context) and
        # carries its task runner: the run's own state stays with the runner process.
        state = dict(self.__dict__)
        for name in ("progress", "_hooked", "_lock", "_subscribed"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.progress = None
        self._hooked = {}
        self._subscribed = False
        self._lock = threading.Lock()

    def duplicate(self) -> "FlowrigTaskRunner":
        twin = super().duplicate()
        twin.progress = self.progress
        return twin

    def _with_hooks(self, task: Any) -> Any:
        """The task with the progress hooks, made once per task object."""
        assert self.progress is not None
        key = id(task)
        with self._lock:
            entry = self._hooked.get(key)
            if entry is None or entry[0] is not task:
                # The original is kept with its copy, so its id cannot be reused.
                entry = self._hooked[key] = (task, self.progress.hook(task))
        return entry[1]

    def _subscribe(self) -> None:
        with self._lock:
            if self._subscribed or self.progress is None:
                return
            self._subscribed = True
        self.client.subscribe_topic(self.progress.topic, self.progress.event)

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
        if self.progress is None:
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
        self._subscribe()
        hooked = self._with_hooks(task)
        self.progress.submitted(task.name)
        return super().submit(hooked, parameters, wait_for=wait_for, dependencies=dependencies)
