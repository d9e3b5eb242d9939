"""Cluster sizing: declarative sizes, the ``on_execute`` hook, validation and clamping."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flowrig.errors import BadInput
from flowrig.project.flow_loader import load_function
from flowrig.project.sizing import ClusterSize, SizingResult, decide

SEED_FLOW = Path(__file__).resolve().parents[2] / "examples" / "seed" / "flow.py"


def test_default_is_one_worker():
    assert decide({}) == SizingResult(ClusterSize(1), {})


def test_declarative_n_workers_and_adapt():
    assert decide({}, n_workers=3).size == ClusterSize(3)
    assert decide({}, adapt=(1, 4)).size == ClusterSize(1, (1, 4))


def test_adapt_with_minimum_zero():
    assert decide({}, adapt=(0, 5)).size == ClusterSize(0, (0, 5))


def test_describe():
    assert ClusterSize(1).describe() == "1 worker"
    assert ClusterSize(3).describe() == "3 workers"
    assert ClusterSize(0, (0, 5)).describe() == "adaptive 0-5 workers"


def test_hook_mutating_n_workers_uses_parameters():
    def hook(parameters, provider_kwargs):
        provider_kwargs["n_workers"] = len(parameters["x"])

    assert decide({"x": [1, 2, 3]}, hook=hook).size == ClusterSize(3)


def test_hook_sees_declared_size_and_options():
    seen = {}

    def hook(parameters, provider_kwargs):
        seen.update(provider_kwargs)

    decide({}, n_workers=2, options={"memory_limit": "1GiB"}, hook=hook)
    assert seen == {"n_workers": 2, "memory_limit": "1GiB"}
    seen.clear()
    decide({}, adapt=(0, 3), hook=hook)
    assert seen == {"adaptive_min_workers": 0, "adaptive_max_workers": 3}


def test_hook_returning_an_int_replaces_adapt():
    result = decide({}, adapt=(0, 5), hook=lambda parameters, kwargs: 4)
    assert result.size == ClusterSize(4)
    assert result.size.adapt is None


def test_hook_raising_names_the_hook():
    def on_execute(parameters, provider_kwargs):
        raise KeyError("x")

    with pytest.raises(BadInput) as info:
        decide({}, hook=on_execute, hook_name="flow.py:on_execute")
    message = str(info.value)
    assert "sizing hook flow.py:on_execute failed" in message and "KeyError" in message
    assert "\n" not in message


@pytest.mark.parametrize("value", [-1, 2.5, "3", True, None, [2]])
def test_bad_values_from_the_hook(value):
    def hook(parameters, provider_kwargs):
        provider_kwargs["n_workers"] = value

    with pytest.raises(BadInput) as info:
        decide({}, hook=hook, hook_name="my_hook")
    assert "sizing hook my_hook" in str(info.value) and "n_workers" in str(info.value)


@pytest.mark.parametrize("value", [-2, 1.0, "2", False])
def test_bad_return_values_from_the_hook(value):
    with pytest.raises(BadInput, match="its return value|workers"):
        decide({}, hook=lambda parameters, kwargs: value)


def test_bad_declarative_values():
    with pytest.raises(BadInput, match="the project"):
        decide({}, n_workers=-1)
    with pytest.raises(BadInput, match="whole number"):
        decide({}, n_workers=True)


def test_contradicting_bounds():
    with pytest.raises(BadInput, match=r"min_workers \(5\) is larger than max_workers \(2\)"):
        decide({}, min_workers=5, max_workers=2)


def test_clamped_down_and_logged(caplog):
    def hook(parameters, provider_kwargs):
        provider_kwargs["n_workers"] = 50

    with caplog.at_level(logging.WARNING, logger="flowrig.sizing"):
        result = decide({}, max_workers=8, hook=hook, hook_name="big")
    assert result.size == ClusterSize(8)
    [record] = [r for r in caplog.records if r.name == "flowrig.sizing"]
    assert record.levelno == logging.WARNING
    assert "sizing hook big asked for n_workers=50; clamped to 8 (bounds 0-8)" == record.getMessage()


def test_clamped_up_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="flowrig.sizing"):
        result = decide({}, n_workers=1, min_workers=3, max_workers=6)
    assert result.size == ClusterSize(3)
    assert [r.getMessage() for r in caplog.records if r.name == "flowrig.sizing"] == [
        "the project asked for n_workers=1; clamped to 3 (bounds 3-6)"
    ]


def test_size_within_bounds_is_not_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="flowrig.sizing"):
        decide({}, n_workers=4, min_workers=1, max_workers=6)
    assert not [r for r in caplog.records if r.name == "flowrig.sizing"]


def test_adapt_bounds_are_clamped(caplog):
    with caplog.at_level(logging.WARNING, logger="flowrig.sizing"):
        result = decide({}, adapt=(0, 20), min_workers=1, max_workers=6)
    assert result.size == ClusterSize(1, (1, 6))
    messages = [r.getMessage() for r in caplog.records if r.name == "flowrig.sizing"]
    assert len(messages) == 2
    assert "adaptive_min_workers=0; clamped to 1" in messages[0]
    assert "adaptive_max_workers=20; clamped to 6" in messages[1]


def test_adapt_via_hook_keys():
    def hook(parameters, provider_kwargs):
        provider_kwargs.pop("n_workers")
        provider_kwargs["adaptive_min_workers"] = 0
        provider_kwargs["adaptive_max_workers"] = parameters["most"]

    assert decide({"most": 4}, hook=hook).size == ClusterSize(0, (0, 4))


def test_adapt_via_hook_keys_wins_over_n_workers():
    # A hook that adds the adaptive keys but leaves n_workers makes the cluster adaptive.
    def hook(parameters, provider_kwargs):
        provider_kwargs["adaptive_min_workers"] = 1
        provider_kwargs["adaptive_max_workers"] = 3

    assert decide({}, n_workers=2, hook=hook).size == ClusterSize(1, (1, 3))


def test_adapt_minimum_without_maximum():
    def hook(parameters, provider_kwargs):
        provider_kwargs["adaptive_min_workers"] = 1

    with pytest.raises(BadInput, match="adaptive_min_workers without adaptive_max_workers"):
        decide({}, hook=hook)


def test_adapt_maximum_alone_means_minimum_zero():
    def hook(parameters, provider_kwargs):
        provider_kwargs["adaptive_max_workers"] = 2

    assert decide({}, hook=hook).size == ClusterSize(0, (0, 2))


def test_adapt_minimum_above_maximum():
    def hook(parameters, provider_kwargs):
        del provider_kwargs["adaptive_min_workers"], provider_kwargs["adaptive_max_workers"]
        provider_kwargs.update(adaptive_min_workers=4, adaptive_max_workers=2)

    with pytest.raises(BadInput, match="adaptive_min_workers=4 above adaptive_max_workers=2"):
        decide({}, adapt=(0, 1), hook=hook)


def test_fixed_zero_workers_rejected():
    with pytest.raises(BadInput, match="0 workers") as info:
        decide({}, n_workers=0)
    assert "adapt = { minimum = 0" in str(info.value)
    with pytest.raises(BadInput, match="sizing hook zero"):
        decide({}, hook=lambda p, k: 0, hook_name="zero")


def test_hook_gets_a_deep_copy_of_parameters():
    parameters = {"x": [1, 2, 3], "nested": {"k": "v"}}

    def hook(params, provider_kwargs):
        params["x"].append(4)
        params["nested"]["k"] = "changed"
        params["new"] = 1

    decide(parameters, hook=hook)
    assert parameters == {"x": [1, 2, 3], "nested": {"k": "v"}}


def test_options_the_hook_sets_come_back():
    def hook(parameters, provider_kwargs):
        provider_kwargs["n_workers"] = 2
        provider_kwargs["memory_limit"] = "2GiB"
        provider_kwargs["worker_cpu"] = 512
        del provider_kwargs["to_drop"]

    options = {"to_drop": 1, "kept": "yes"}
    result = decide({}, hook=hook, options=options)
    assert result == SizingResult(
        ClusterSize(2), {"kept": "yes", "memory_limit": "2GiB", "worker_cpu": 512}
    )
    assert options == {"to_drop": 1, "kept": "yes"}  # the caller's mapping is not changed


# The seed's rule: one worker per five items of x, within 1-10.
@pytest.mark.parametrize(("items", "workers"), [(10, 2), (0, 1), (1, 1), (11, 3), (1000, 10)])
def test_seed_example_hook(items, workers):
    on_execute = load_function(SEED_FLOW, "on_execute", "sizing hook")
    result = decide(
        {"x": list(range(items))}, min_workers=1, max_workers=10, hook=on_execute, hook_name="on_execute"
    )
    assert result.size == ClusterSize(workers)


def test_hook_setting_n_workers_over_a_project_adapt_range_gives_a_fixed_size(caplog):
    result = decide({}, adapt=(0, 5), hook=lambda p, k: k.update(n_workers=4), hook_name="h")
    assert result.size == ClusterSize(4)
    assert "fixed size instead of adapting 0-5" in caplog.text
