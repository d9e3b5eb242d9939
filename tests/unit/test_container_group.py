"""What :func:`flowrig.containers.group.run_group` refuses before it asks Docker anything."""

from __future__ import annotations

import pytest

from flowrig.containers import ContainerPlan
from flowrig.containers.group import Member, run_group


class NoEngine:
    """Any use of the engine fails the test: the refusals come first."""

    def __getattr__(self, name):
        raise AssertionError(f"the engine was used ({name})")


def plan(name: str, **extra) -> ContainerPlan:
    return ContainerPlan(name=name, image="img", command=None, labels={}, environment={}, network="n", **extra)


def test_a_group_without_an_essential_member_is_refused_before_the_engine():
    with pytest.raises(ValueError, match="needs an essential member"):
        run_group(NoEngine(), [Member(plan("a"), "a", essential=False)], out=None)


def test_stdin_for_a_member_whose_stdin_stays_closed_is_refused_before_the_engine():
    with pytest.raises(ValueError, match="member a has stdin to write but its plan keeps stdin closed"):
        run_group(NoEngine(), [Member(plan("a"), "a", stdin=b"x")], out=None)
    with pytest.raises(ValueError, match="needs an essential member"):
        run_group(NoEngine(), [], out=None)
