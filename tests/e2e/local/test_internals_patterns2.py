"""What flowrig.internals.upstream_states assumes of the locked Prefect: each test fails
when Prefect stops resolving upstream States, visiting values or collecting task inputs
the way the early resolution reproduces."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest


def _record(value):
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    return ResultRecord(metadata=ResultRecordMetadata(storage_key="k", serializer=PickleSerializer()), result=value)


def _completed(value, *, record: bool = True, traceparent: str | None = None):
    from prefect.states import Completed

    state = Completed(data=_record(value) if record else value)
    state.state_details.task_run_id = uuid.uuid4()
    state.state_details.traceparent = traceparent
    return state


class _Items(list):
    """A list subclass, as a mapped future list is."""


@dataclasses.dataclass
class _Point:
    x: int


def _prefect(parameters):
    from prefect.utilities.engine import resolve_inputs_sync

    return resolve_inputs_sync(parameters)


def _ours(parameters):
    from flowrig.internals.upstream_states import resolve_completed

    return resolve_completed(parameters)


RESOLVED = {
    "a state with a result record": lambda: _completed(7),
    "a state with its data attached": lambda: _completed(7, record=False),
    "a state of a string": lambda: _completed("s"),
    "a state of an array": lambda: _completed(np.arange(3)),
    "a list of states": lambda: [_completed(i) for i in range(5)],
    "a tuple of states and values": lambda: (_completed(1), 2, "three"),
    "a set of states": lambda: {_completed(1), _completed(2)},
    "a list subclass of states": lambda: _Items([_completed(1), _completed(2)]),
}


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_a_completed_upstream_resolves_to_what_prefect_resolves_it_to(name):
    """``resolve_to_final_result`` gives a Completed State's attached result (the record's
    ``result``, or the data itself), and ``visit_collection`` rebuilds a list, tuple, set
    or list subclass as ``type(seq)(items)``: the early resolution gives the same value,
    of the same type, and Prefect's own resolution of it is then the identity."""
    value = RESOLVED[name]()
    ours = _ours({"x": value})["x"]
    theirs = _prefect({"x": value})["x"]
    assert type(ours) is type(theirs)
    if isinstance(theirs, np.ndarray):
        assert (ours == theirs).all()
    else:
        assert ours == theirs
    again = _prefect({"x": ours})["x"]
    assert again is ours or (type(again) is type(ours) and again == ours)


def _failed():
    from prefect.states import Failed

    return Failed(data=ValueError("boom"))


def _not_ready():
    from prefect.states import Pending

    return Pending(name="NotReady")


def _missing():
    from prefect.states import Completed

    return Completed(data=None)


def _allowed():
    from prefect import allow_failure

    return allow_failure(_failed())


LEFT_ALONE = {
    "a failed upstream": _failed,
    "a NotReady upstream": _not_ready,
    "a completed state without data": _missing,
    "a state with a trace parent": lambda: _completed(1, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
    "a state whose result is a list": lambda: _completed([1, 2]),
    "a state whose result is a dataclass": lambda: _completed(_Point(1)),
    "a list with one failed state": lambda: [_completed(1), _failed()],
    "a list with a nested list": lambda: [_completed(1), [_completed(2)]],
    "an allow_failure annotation": _allowed,
    "a dict of states": lambda: {"a": _completed(1)},
    "a plain list": lambda: [1, 2],
}


@pytest.mark.parametrize("name", sorted(LEFT_ALONE))
def test_what_prefect_must_decide_is_left_as_it_came(name):
    """A failed, NotReady, data-less or traced upstream, a result Prefect would visit
    further, an annotation or a nested collection reach Prefect untouched (the very object)."""
    value = LEFT_ALONE[name]()
    parameters = {"x": value, "y": 3}
    assert _ours(parameters) is parameters
    assert parameters["x"] is value


def test_prefect_still_refuses_the_upstreams_left_to_it():
    """What is left alone is what Prefect turns into NotReady (an upstream error)."""
    from prefect.exceptions import UpstreamTaskError

    for make in (_failed, _not_ready):
        with pytest.raises(UpstreamTaskError):
            _prefect(_ours({"x": [_completed(1), make()]}))


def test_the_task_inputs_prefect_records_do_not_change():
    """Prefect's engine records, per parameter, the task-run ids of the States it finds
    joined to the ``dependencies`` it is given; the runner gives as dependencies the ids
    of the futures (the same task runs). With the States resolved early, the task run's
    inputs are the same."""
    from prefect import task
    from prefect.client.schemas.objects import TaskRunResult
    from prefect.task_engine import _create_task_run_locally

    @task
    def total(values: list[int], scale: int) -> int:
        return sum(values) * scale

    states = [_completed(i) for i in range(4)]
    dependencies = {"values": {TaskRunResult(id=s.state_details.task_run_id) for s in states}, "scale": set()}
    as_states = _create_task_run_locally(task=total, parameters={"values": states, "scale": 2},
                                         extra_task_inputs=dependencies)
    resolved = _create_task_run_locally(task=total, parameters=_ours({"values": states, "scale": 2}),
                                        extra_task_inputs=dependencies)
    def ids(task_run):  # Prefect lists each set, in its iteration order
        return {name: {i.id for i in inputs} for name, inputs in task_run.task_inputs.items()}

    assert ids(as_states) == ids(resolved)
    assert ids(as_states)["values"] == {s.state_details.task_run_id for s in states}


def test_nothing_to_resolve_gives_the_same_parameters():
    """No copy where nothing changes (the common task with plain arguments)."""
    parameters = {"x": 1, "y": "two"}
    assert _ours(parameters) is parameters
    assert _ours({}) == {}
