"""Worker groups' shapes and adaptive sizes: the model's rules, what each backend refuses,
the sizing hook per group, and the carriers a backend gets (real models, no cluster)."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from flowrig.backends.base import WorkerGroupSpec
from flowrig.errors import BadInput
from flowrig.project.groups import memory_mib
from flowrig.project.models import parse_project
from flowrig.project.sizing import ClusterSize, GroupSize, decide


def _project(*groups: dict, **cluster) -> object:
    return parse_project({"flow": "flow.py:main", "cluster": {**cluster, "worker_groups": list(groups)}}, Path("."))


def _refused(*groups: dict, **cluster) -> str:
    with pytest.raises(BadInput) as refused:
        _project(*groups, **cluster)
    text = str(refused.value)
    assert "\n" not in text
    return text


# --- the model -----------------------------------------------------------------------------


def test_a_group_takes_a_shape_and_an_adaptive_range():
    gpu, cpu = _project(
        {"name": "gpu", "gpu": 1, "cpu": 4, "memory": "8GiB", "adapt": {"maximum": 2}},
        {"name": "cpu", "n_workers": 2, "cpu": 0.5, "memory": 1024, "max_workers": 3, "min_workers": 1},
    ).cluster.worker_groups
    assert (gpu.size, gpu.most, gpu.memory_mib, gpu.gpu, gpu.cpu) == (0, 2, 8192, 1, 4)
    assert gpu.sizing() == {"adaptive_min_workers": 0, "adaptive_max_workers": 2}
    assert (cpu.size, cpu.most, cpu.memory_mib, cpu.bounds(10)) == (2, 2, 1024, (1, 3))
    assert cpu.sizing() == {"n_workers": 2}
    assert gpu.bounds(10) == (0, 10)


@pytest.mark.parametrize(
    ("text", "mib"),
    [(4096, 4096), ("8GiB", 8192), ("512MiB", 512), ("2g", 2048), ("1.5GiB", 1536), ("1Ti", 1024**2), ("300m", 300)],
)
def test_memory_is_mib_or_binary_units(text, mib):
    assert memory_mib(text) == mib


@pytest.mark.parametrize(
    ("group", "cluster", "message"),
    [
        ({"name": "gpu", "n_workers": 2, "adapt": {"maximum": 3}}, {}, "group 'gpu' sets both n_workers and adapt"),
        ({"name": "gpu", "adapt": {"minimum": 1}}, {}, "group 'gpu' adapt has no maximum"),
        ({"name": "gpu", "adapt": {"minimum": 3, "maximum": 2}}, {},
         "group 'gpu' adapt minimum (3) is larger than its maximum (2)"),
        ({"name": "gpu", "adapt": {"maximum": 0}}, {}, "group 'gpu' adapt maximum is 0"),
        ({"name": "gpu", "adapt": {"maximum": 4}, "max_workers": 3}, {},
         "group 'gpu' adapt 0-4 is outside its min_workers and max_workers (0-3)"),
        ({"name": "gpu", "adapt": {"maximum": 4}, "min_workers": 1}, {},
         "group 'gpu' adapt 0-4 is outside its min_workers and max_workers (1-10)"),
        ({"name": "gpu", "n_workers": 4, "max_workers": 3}, {},
         "group 'gpu' n_workers (4) is outside its min_workers and max_workers (0-3)"),
        ({"name": "gpu", "min_workers": 3, "max_workers": 2}, {},
         "group 'gpu' min_workers (3) is larger than its max_workers (2)"),
        ({"name": "gpu", "max_workers": 11}, {}, "group 'gpu' max_workers (11) is above 'cluster.max_workers' (10)"),
        ({"name": "gpu", "adapt": {"maximum": 8}}, {"max_workers": 5},
         "group 'gpu' adapt 0-8 is outside its min_workers and max_workers (0-5)"),  # the cluster's bound
        ({"name": "gpu", "memory": "8GB"}, {}, "group 'gpu' memory '8GB' is not a size: give MiB (4096)"),
        ({"name": "gpu", "memory": "lots"}, {}, "group 'gpu' memory 'lots' is not a size"),
        ({"name": "gpu", "memory": 100}, {}, "group 'gpu' memory is 100 MiB, too little for a worker"),
        ({"name": "gpu", "gpu": 1, "resources": {"GPU": 1}}, {}, "group 'gpu' sets gpu and resources.GPU"),
        ({"name": "gpu", "gpu": -1}, {}, "'cluster.worker_groups.0.gpu' must be a whole number of GPUs >= 0"),
        ({"name": "gpu", "gpu": 1.5}, {}, "'cluster.worker_groups.0.gpu' must be a whole number of GPUs"),
        ({"name": "gpu", "cpu": 0}, {}, "'cluster.worker_groups.0.cpu' must be a number of vCPUs greater than 0"),
        ({"name": "gpu", "cpu": "2"}, {}, "'cluster.worker_groups.0.cpu' must be a number of vCPUs"),
        ({"name": "gpu", "memory": 1.5}, {}, "'cluster.worker_groups.0.memory' must be MiB (4096) or text"),
        ({"name": "gpu", "market": "cheap"}, {},
         "'cluster.worker_groups.0.market' must be \"on-demand\", \"spot\" or \"fallback\", got 'cheap'"),
        ({"name": "gpu", "options": []}, {}, "'cluster.worker_groups.0.options' must be a table"),
        ({"name": "gpu", "adapt": {"maximum": 2, "most": 3}}, {},
         "unknown key 'cluster.worker_groups.0.adapt.most'; allowed here: maximum, minimum"),
    ],
)
def test_each_shape_and_size_rule_is_one_line_of_bad_input(group, cluster, message):
    assert message in _refused(group, **cluster)


def test_the_groups_maxima_count_against_the_clusters_max_workers():
    assert "add up to 7 workers at most (gpu 4, cpu 3), above 'cluster.max_workers' (6)" in _refused(
        {"name": "gpu", "adapt": {"maximum": 4}}, {"name": "cpu", "n_workers": 3}, max_workers=6)


def test_a_group_in_toml_with_every_field():
    text = """
flow = "flow.py:main"
[cluster]
backend = "docker"
[[cluster.worker_groups]]
name = "gpu"
gpu = 1
cpu = 2
memory = "4GiB"
adapt = { minimum = 0, maximum = 3 }
options = { drain_timeout = 10 }
"""
    (group,) = parse_project(tomllib.loads(text), Path(".")).cluster.worker_groups
    assert (group.adapt.maximum, group.memory_mib, group.options) == (3, 4096, {"drain_timeout": 10})


# --- what each backend refuses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "group", "message"),
    [
        ("docker", {"name": "gpu", "market": "spot"},
         "[[cluster.worker_groups]] group 'gpu' sets market, which the docker backend cannot honour: drop market"),
        ("local", {"name": "gpu", "market": "on-demand"}, "group 'gpu' sets market, which the local backend cannot"),
        ("local", {"name": "gpu", "gpu": 1},
         "group 'gpu' sets gpu, which the local backend cannot honour: drop gpu, or run with --backend docker"),
        ("local", {"name": "gpu", "cpu": 2}, "group 'gpu' sets cpu, which the local backend cannot honour: drop cpu"),
        ("docker", {"name": "gpu", "options": {"worker_memory": "2g"}},
         "group 'gpu' options.worker_memory is not taken per group by the docker backend (it takes drain_timeout)"),
        ("local", {"name": "gpu", "options": {"timeout": 3}},
         "group 'gpu' options.timeout is not taken per group by the local backend (it takes none)"),
        ("docker", {"name": "gpu", "options": {"drain_timeout": -1}},
         "group 'gpu' options: [cluster.options] drain_timeout must be greater than 0, got -1"),
        ("address", {"name": "gpu"}, "[[cluster.worker_groups]] do not run on the address backend"),
    ],
)
def test_a_backend_refuses_what_it_cannot_honour_in_one_line(backend, group, message):
    from flowrig.backends import get_backend

    groups = _project(group).cluster.worker_groups
    with pytest.raises(BadInput) as refused:
        get_backend(backend).check_worker_groups(groups, {})
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_backend_takes_what_it_honours():
    from flowrig.backends import get_backend

    get_backend("docker").check_worker_groups(_project(
        {"name": "gpu", "gpu": 1, "cpu": 2, "memory": "2GiB", "adapt": {"maximum": 2}, "options": {"drain_timeout": 5}},
    ).cluster.worker_groups, {})
    get_backend("local").check_worker_groups(_project(
        {"name": "big", "memory": 2048, "adapt": {"maximum": 2}}).cluster.worker_groups, {})


# --- sizing per group ----------------------------------------------------------------------


BOUNDS = {"gpu": (0, 3), "cpu": (1, 4)}
SIZES = {"gpu": {"adaptive_min_workers": 0, "adaptive_max_workers": 2}, "cpu": {"n_workers": 2}}


def test_groups_take_the_projects_ranges_without_a_hook():
    decided = decide({}, groups=SIZES, group_bounds=BOUNDS)
    assert decided.size == ClusterSize(2, groups=(GroupSize("gpu", 0, (0, 2)), GroupSize("cpu", 2)))
    assert decided.size.most == 4
    assert decided.size.describe() == "2-4 workers (gpu 0-2, cpu 2)"


def test_the_hook_sees_each_groups_size_or_range_and_changes_them():
    seen = {}

    def hook(parameters, provider_kwargs):
        groups = provider_kwargs["worker_groups"]
        seen.update({name: dict(entry) for name, entry in groups.items()})
        groups["gpu"]["adaptive_max_workers"] = parameters["n"]
        groups["cpu"] = {"adaptive_min_workers": 1, "adaptive_max_workers": 2}  # the fixed group adapts

    decided = decide({"n": 3}, groups=SIZES, group_bounds=BOUNDS, hook=hook)
    assert seen == SIZES
    assert decided.size.groups == (GroupSize("gpu", 0, (0, 3)), GroupSize("cpu", 1, (1, 2)))


def test_a_fixed_size_the_hook_sets_wins_over_the_groups_range(caplog):
    def hook(parameters, provider_kwargs):
        provider_kwargs["worker_groups"]["gpu"]["n_workers"] = 2

    with caplog.at_level(logging.WARNING, logger="flowrig.sizing"):
        decided = decide({}, groups=SIZES, group_bounds=BOUNDS, hook=hook, hook_name="flow.py:size")
    assert decided.size.groups[0] == GroupSize("gpu", 2)
    assert "set worker_groups['gpu']['n_workers']=2: the group has a fixed size instead of adapting 0-2" in caplog.text


def test_the_hooks_sizes_are_clamped_to_each_groups_bounds_with_a_warning(caplog):
    def hook(parameters, provider_kwargs):
        provider_kwargs["worker_groups"]["gpu"]["adaptive_max_workers"] = 9
        provider_kwargs["worker_groups"]["cpu"]["n_workers"] = 0

    with caplog.at_level(logging.WARNING, logger="flowrig.sizing"):
        decided = decide({}, groups=SIZES, group_bounds=BOUNDS, hook=hook, hook_name="flow.py:size", max_workers=10)
    assert decided.size.groups == (GroupSize("gpu", 0, (0, 3)), GroupSize("cpu", 1))
    assert ("sizing hook flow.py:size asked for worker_groups['gpu']['adaptive_max_workers']=9; clamped to 3 "
            "(bounds 0-3)") in caplog.text
    assert "asked for worker_groups['cpu']['n_workers']=0; clamped to 1 (bounds 1-4)" in caplog.text


def test_the_groups_maxima_must_fit_the_clusters_bounds_after_the_hook():
    def hook(parameters, provider_kwargs):
        provider_kwargs["worker_groups"]["gpu"]["adaptive_max_workers"] = 3

    with pytest.raises(BadInput, match=r"asks for 5 workers in worker groups \(gpu 0-3, cpu 2\), outside min_workers "
                                       r"= 0 and max_workers = 4"):
        decide({}, groups=SIZES, group_bounds=BOUNDS, hook=hook, max_workers=4)


# --- the carriers ----------------------------------------------------------------------------


def test_the_plan_carries_each_groups_shape_and_range_to_the_backend():
    from flowrig.run.execute import _group_specs
    from flowrig.run.prepared import PreparedRun

    project = _project(
        {"name": "gpu", "gpu": 2, "cpu": 4, "memory": "8GiB", "adapt": {"maximum": 2}, "options": {"drain_timeout": 5}},
        {"name": "cpu", "n_workers": 2, "market": "spot"},
    )
    run = PreparedRun(flow=None, backend=None, tls=None, api=None, api_url=None, worker_threads=3,
                      worker_groups=tuple(project.cluster.worker_groups))
    specs = _group_specs(run, ClusterSize(2, groups=(GroupSize("gpu", 0, (0, 2)), GroupSize("cpu", 2))))
    assert specs == (
        WorkerGroupSpec("gpu", 0, 3, {"flowrig-group-gpu": 3, "GPU": 2}, adapt=(0, 2), cpu=4.0, memory_mib=8192, gpu=2,
                        options={"drain_timeout": 5}),
        WorkerGroupSpec("cpu", 2, 3, {"flowrig-group-cpu": 3}, market="spot"),
    )
    assert (specs[0].most, specs[0].worker_names(), specs[0].worker_name(7)) == (2, [], "gpu-7")
