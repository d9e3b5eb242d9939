"""Upstream results handed to a task as the values Prefect would resolve them to.

A task whose parameters hold futures of other tasks (a map over a mapped list, a mapped
list passed to a downstream task) gets, on its worker, their final States: Dask resolves
the futures there. Prefect's task engine then walks every State twice, once to record it
as a task input and once to resolve it to its result, and each walk goes into the State's
own fields: about a millisecond of a worker's CPU per upstream State on this machine
(5000 States: seconds, on one worker, before a downstream task starts).

:func:`resolve_completed` does the resolving beforehand, only where the outcome is
certainly the one Prefect's ``resolve_to_final_result`` gives:

* a State that is Completed, carries no trace parent (Prefect links a span to it), and
  whose result is attached (an in-memory ``ResultRecord``, or data that is no result
  object at all): its value;
* a value whose type Prefect's ``visit_collection`` goes into no further (a number, a
  string, an array; not a list, dict, model, dataclass, annotation, State or future).

A top-level parameter that is such a State, or a plain list/tuple/set made only of those
and of such values, is replaced; anything else (a failed or NotReady upstream, a result
in storage, an annotation such as ``allow_failure`` or ``quote``, a nested collection) is
left exactly as it came, for Prefect to handle. The task-run inputs do not change: the
runner computes them from the futures themselves (the same task-run ids) and ships them
as the task's ``dependencies``, which Prefect's engine joins to what it finds.

Fenced by tests/e2e/local/test_internals_patterns2.py: ``resolve_to_final_result``'s
outcome for such States; ``visit_collection`` leaving such values alone and rebuilding
lists/tuples/sets as here; the task inputs a State gives being its task-run id's.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

_UNSET = object()
_TYPES: tuple[Any, ...] | None = None


def _types() -> tuple[Any, ...]:
    global _TYPES
    if _TYPES is None:
        from unittest.mock import Mock

        import pydantic
        from prefect.futures import PrefectFuture
        from prefect.results import ResultRecord
        from prefect.states import State
        from prefect.utilities.annotations import BaseAnnotation

        visited = (types.GeneratorType, types.AsyncGeneratorType, Mock, BaseAnnotation, list, tuple, set, dict,
                   pydantic.BaseModel, PrefectFuture)
        _TYPES = (State, ResultRecord, visited)
    return _TYPES


def _opaque(value: Any) -> bool:
    """Whether ``visit_collection`` returns ``value`` as it is, looking no further."""
    _, _, visited = _types()
    return not isinstance(value, visited) and not (dataclasses.is_dataclass(value) and not isinstance(value, type))


def _value(item: Any) -> Any:
    """``item``'s resolved value, or ``_UNSET`` where Prefect must decide."""
    state_type, record_type, _ = _types()
    if not isinstance(item, state_type):
        return item if _opaque(item) else _UNSET
    if not item.is_completed() or item.state_details.traceparent:
        return _UNSET
    data = item.data
    if isinstance(data, record_type):
        data = data.result
    elif data is None:
        return _UNSET  # Prefect raises MissingResult
    return data if _opaque(data) else _UNSET


def _resolve(value: Any) -> Any:
    state_type = _types()[0]
    if isinstance(value, state_type):
        return _value(value)
    if type(value) in (list, tuple, set) or (isinstance(value, list) and not hasattr(type(value), "_make")):
        if not any(isinstance(item, state_type) for item in value):
            return _UNSET
        items = [_value(item) for item in value]
        if any(item is _UNSET for item in items):
            return _UNSET
        return type(value)(items)
    return _UNSET


def resolve_completed(parameters: Any) -> Any:
    """``parameters`` with each top-level completed upstream State (or plain list of them)
    replaced by its value, where that is what Prefect would resolve it to; the rest
    unchanged (the same dict when nothing was replaced)."""
    if not isinstance(parameters, dict) or not parameters:
        return parameters
    resolved = None
    for name, value in parameters.items():
        new = _resolve(value)
        if new is not _UNSET:
            if resolved is None:
                resolved = dict(parameters)
            resolved[name] = new
    return parameters if resolved is None else resolved
