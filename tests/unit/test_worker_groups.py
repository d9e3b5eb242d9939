"""``[[cluster.worker_groups]]``: the model's rules, task routing by tag, sizing per group,
the docker backend's plans and the host's policy for groups. Runs of groups on real
clusters are in tests/e2e/local/test_worker_groups.py and tests/e2e/docker/test_worker_groups.py."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest

from flowrig.backends.base import WorkerGroupSpec
from flowrig.common.routes import group_resource, resources_flag, resources_for, routes_of, worker_resources
from flowrig.errors import BadInput
from flowrig.project.models import parse_project
from flowrig.project.sizing import ClusterSize, GroupSize, decide

RUN = "g22test01"


def _project(*groups: dict, **cluster) -> object:
    return parse_project({"flow": "flow.py:main", "cluster": {**cluster, "worker_groups": list(groups)}}, Path("."))


# --- the model -----------------------------------------------------------------------------


def test_a_group_takes_its_name_as_tag_one_worker_and_the_clusters_threads_by_default():
    project = _project({"name": "gpu", "worker_threads": 2, "resources": {"GPU": 1}}, {"name": "cpu"}, worker_threads=3)
    gpu, cpu = project.cluster.worker_groups
    assert (gpu.routed_tags, gpu.size, gpu.worker_threads, gpu.resources) == (("gpu",), 1, 2, {"GPU": 1})
    assert (cpu.routed_tags, cpu.size, cpu.worker_threads) == (("cpu",), 1, None)
    assert _project({"name": "io", "tags": ["fetch", "load"], "n_workers": 3}).cluster.worker_groups[0].routed_tags == (
        "fetch", "load")


@pytest.mark.parametrize(
    ("groups", "cluster", "message"),
    [
        ([{"name": "gpu"}, {"name": "gpu"}], {}, "'cluster.worker_groups' names 'gpu' twice"),
        ([{"name": "gpu", "tags": ["x"]}, {"name": "big", "tags": ["x"]}], {},
         "tag 'x' goes to groups 'gpu' and 'big': give each tag one group"),
        ([{"name": "gpu"}, {"name": "big", "tags": ["gpu"]}], {}, "tag 'gpu' goes to groups 'gpu' and 'big'"),
        ([{"name": "gpu"}], {"n_workers": 2},
         "'cluster.worker_groups' beside 'cluster.n_workers': set the size in each [[cluster.worker_groups]]"),
        ([{"name": "gpu"}], {"adapt": {"maximum": 3}}, "beside 'cluster.adapt'"),
        ([{"name": "gpu", "n_workers": 8}, {"name": "cpu", "n_workers": 3}], {},
         "add up to 11 workers at most (gpu 8, cpu 3), above 'cluster.max_workers' (10)"),
        ([{"name": "gpu", "n_workers": 0}], {}, "group 'gpu' has 0 workers"),
        ([{"name": "gpu", "tags": []}], {}, "group 'gpu' has no tags"),
        ([{"name": "gpu", "tags": [" "]}], {}, "group 'gpu' has an empty tag"),
        ([{"name": "gpu", "resources": {"flowrig-group-cpu": 1}}], {}, "resource 'flowrig-group-cpu' is flowrig's own"),
        ([{"name": "gpu", "resources": {"GPU": -1}}], {}, "resource 'GPU' is -1: give a finite amount >= 0"),
        ([{"name": "gpu", "resources": {"GPU": float("inf")}}], {}, "resource 'GPU' is inf"),
        ([{"name": "gpu", "resources": {"GPU": float("nan")}}], {}, "resource 'GPU' is nan"),
        ([{"name": "gpu", "resources": {"GPU=1,MEM": 1}}], {}, "resource 'GPU=1,MEM' must be a letter or _"),
        ([{"name": "gpu", "resources": {"A B": 1}}], {}, "resource 'A B' must be"),
        ([{"name": "GPU"}], {}, "'cluster.worker_groups.0.name' must be a lowercase letter"),
        ([{"name": "gpu_1"}], {}, "'cluster.worker_groups.0.name' must be"),
        ([{"name": "a" * 21}], {}, "'cluster.worker_groups.0.name' must be"),
        ([{"n_workers": 1}], {}, "'cluster.worker_groups.0.name' is required"),
        ([{"name": "gpu", "gpus": 1}], {},
         "unknown key 'cluster.worker_groups.0.gpus'; allowed here: adapt, cpu, gpu, market, max_workers, memory, "
         "min_workers, n_workers, name, options, resources, tags, worker_threads"),
        ([{"name": "gpu", "n_workers": "2"}], {}, "'cluster.worker_groups.0.n_workers' must be a whole number"),
        ([{"name": "gpu", "worker_threads": 0}], {}, "'cluster.worker_groups.0.worker_threads' must be >= 1"),
    ],
)
def test_each_rule_is_one_line_of_bad_input(groups, cluster, message):
    with pytest.raises(BadInput) as refused:
        _project(*groups, **cluster)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[cluster.worker_groups]\nname = "gpu"\n', "must be a list of tables: write [[cluster.worker_groups]]"),
        ('[[cluster.worker_groups]]\nname = "gpu"\nresources = { GPU = "1" }\n',
         "'cluster.worker_groups.0.resources.GPU' must be a number, got '1'"),
        ('[[cluster.worker_groups]]\nname = "gpu"\ntags = "gpu"\n', "'cluster.worker_groups.0.tags' must be a list"),
    ],
)
def test_toml_slips_name_the_key_and_the_fix(text, message):
    import tomllib

    with pytest.raises(BadInput) as refused:
        parse_project(tomllib.loads('flow = "flow.py:main"\n' + text), Path("."))
    assert message in str(refused.value)


# --- routing -------------------------------------------------------------------------------


ROUTES = routes_of([("gpu", ("gpu",)), ("cpu", ("io", "big"))])


def test_a_task_goes_to_the_group_its_tags_meet_and_an_untagged_one_anywhere():
    assert resources_for("train", {"gpu", "nightly"}, ROUTES) == {"flowrig-group-gpu": 1}
    assert resources_for("fetch", ["big"], ROUTES) == {"flowrig-group-cpu": 1}
    assert resources_for("fetch", ["io", "big"], ROUTES) == {"flowrig-group-cpu": 1}
    assert resources_for("plain", [], ROUTES) is None
    assert resources_for("plain", ["nightly"], ROUTES) is None
    assert resources_for("plain", ["gpu"], {}) is None


def test_a_task_with_tags_of_two_groups_is_one_line_naming_both():
    with pytest.raises(BadInput, match=r"^task 'train' has tags of worker groups 'cpu' and 'gpu': give it the tags "
                                        r"of one group only$"):
        resources_for("train", ["gpu", "io"], ROUTES)


def test_a_groups_workers_offer_one_slot_per_thread_and_its_own_resources():
    assert worker_resources("gpu", 2, {"GPU": 1}) == {"flowrig-group-gpu": 2, "GPU": 1}
    assert resources_flag(worker_resources("gpu", 2, {"GPU": 1, "MEM": 2.5e9})) == "flowrig-group-gpu=2,GPU=1,MEM=2.5e+09"
    assert group_resource("cpu") == "flowrig-group-cpu"


def test_the_task_runner_routes_by_the_tasks_tags_and_the_tags_block_around_it():
    from prefect import tags, task

    from flowrig.internals.task_runner import FlowrigTaskRunner

    @task(tags=["gpu"])
    def train() -> None: ...

    @task
    def plain() -> None: ...

    runner = FlowrigTaskRunner(address="tls://127.0.0.1:1", routes=ROUTES)
    assert runner._resources(train) == {"flowrig-group-gpu": 1}
    assert runner._resources(plain) is None
    with tags("big"):
        assert runner._resources(plain) == {"flowrig-group-cpu": 1}
        with pytest.raises(BadInput, match="task 'train' has tags of worker groups 'cpu' and 'gpu'"):
            runner._resources(train)
    # The routes travel with the runner (nested submissions on workers) and its twins.
    import cloudpickle

    assert cloudpickle.loads(cloudpickle.dumps(runner)).routes == ROUTES
    assert runner.duplicate().routes == ROUTES
    assert FlowrigTaskRunner(address="tls://127.0.0.1:1")._resources(train) is None


# --- sizing --------------------------------------------------------------------------------


def test_groups_take_the_projects_sizes_without_a_hook():
    decided = decide({}, groups={"gpu": 1, "cpu": 2}, options={"worker_memory": "2g"})
    assert decided.size == ClusterSize(3, groups=(GroupSize("gpu", 1), GroupSize("cpu", 2)))
    assert decided.options == {"worker_memory": "2g"}
    assert decided.size.describe() == "3 workers (gpu 1, cpu 2)"


def test_the_hook_sees_and_sets_each_groups_size():
    seen = {}

    def hook(parameters, provider_kwargs):
        seen.update(copy.deepcopy(provider_kwargs["worker_groups"]))
        provider_kwargs["worker_groups"]["cpu"]["n_workers"] = parameters["n"]
        provider_kwargs["worker_memory"] = "4g"

    decided = decide({"n": 4}, groups={"gpu": 1, "cpu": 2}, hook=hook)
    assert seen == {"gpu": {"n_workers": 1}, "cpu": {"n_workers": 2}}
    assert decided.size.groups == (GroupSize("gpu", 1), GroupSize("cpu", 4)) and decided.size.n_workers == 5
    assert decided.options == {"worker_memory": "4g"}


def _hook(change):
    def hook(parameters, provider_kwargs):
        change(provider_kwargs)
    return hook


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda kw: kw.__setitem__("n_workers", 3), "set n_workers, but the project has worker groups"),
        (lambda kw: kw["worker_groups"].pop("cpu"), "changed which worker groups there are (['gpu'] instead of"),
        (lambda kw: kw["worker_groups"].__setitem__("tpu", {"n_workers": 1}), "changed which worker groups"),
        (lambda kw: kw["worker_groups"]["cpu"].__setitem__("n_workers", 0), "gives worker group 'cpu' 0 workers"),
        (lambda kw: kw["worker_groups"]["cpu"].__setitem__("n_workers", -1), "asked for -1 workers"),
        (lambda kw: kw["worker_groups"]["cpu"].__setitem__("n_workers", "2"), "it must be a whole number"),
        (lambda kw: kw["worker_groups"]["cpu"].__setitem__("adapt", (0, 2)), "set worker group 'cpu' to"),
        (lambda kw: kw["worker_groups"]["cpu"].__setitem__("n_workers", 10),
         "asks for 11 workers in worker groups (gpu 1, cpu 10), outside min_workers = 0 and max_workers = 10"),
        (lambda kw: kw["worker_groups"]["cpu"].update(n_workers=5, adaptive_max_workers=3),
         "set both a fixed size and an adaptive range for worker group 'cpu'"),
        (lambda kw: kw["worker_groups"]["cpu"].update(adaptive_min_workers=0), "without 'adaptive_max_workers'"),
        (lambda kw: kw["worker_groups"]["cpu"].update(adaptive_min_workers=3, adaptive_max_workers=2),
         "set worker_groups['cpu']['adaptive_min_workers']=3 above 'adaptive_max_workers'=2"),
        (lambda kw: kw["worker_groups"]["cpu"].update(adaptive_max_workers=0), "gives worker group 'cpu' at most 0"),
        (lambda kw: 1 / 0, "failed: ZeroDivisionError"),
    ],
)
def test_a_hook_that_breaks_the_groups_is_one_line_of_bad_input(change, message):
    with pytest.raises(BadInput) as refused:
        decide({}, groups={"gpu": 1, "cpu": 2}, hook=_hook(change), hook_name="flow.py:size")
    assert message in str(refused.value)


def test_a_hook_that_returns_a_count_is_told_where_group_sizes_go():
    with pytest.raises(BadInput, match=r"returned a count, but the project has worker groups: set "
                                       r"provider_kwargs\['worker_groups'\]\[GROUP\]\['n_workers'\]"):
        decide({}, groups={"gpu": 1}, hook=lambda p, kw: 3)


def test_groups_below_min_workers_are_refused():
    with pytest.raises(BadInput, match="asks for 1 workers in worker groups .gpu 1., outside min_workers = 2"):
        decide({}, groups={"gpu": 1}, min_workers=2)


# --- the backends --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["address"])
def test_a_backend_that_does_not_start_groups_refuses_them_before_anything_starts(name):
    from flowrig.backends import get_backend
    from flowrig.run.execute import _decide
    from flowrig.run.prepared import PreparedRun

    project = _project({"name": "gpu"})
    run = PreparedRun(flow=None, backend=get_backend(name), tls=None, api=None, api_url=None,
                      worker_groups=tuple(project.cluster.worker_groups))
    with pytest.raises(BadInput, match=rf"^\[\[cluster.worker_groups\]\] do not run on the {name} backend: drop the "
                                       r"groups, or run with a backend that starts them \(docker, local, fargate"):
        _decide(run, run.backend, {})


@pytest.mark.parametrize(("name", "group", "words"), [
    ("fargate", {"name": "gpu", "options": {"capacity_provider": "gpu-cp", "fargate_workers": False}}, None),
    ("ecs", {"name": "gpu", "options": {"spot_capacity_provider": "spot-cp"}, "market": "spot"}, None),
    ("ec2", {"name": "gpu", "gpu": 1, "options": {"worker_instance_type": "g5.xlarge"}}, None),
    ("gcp", {"name": "big", "options": {"worker_machine_type": "n2-standard-8"}}, None),
    ("azure", {"name": "big", "options": {"worker_vm_size": "Standard_D8s_v5"}}, None),
    ("fargate", {"name": "cpu", "adapt": {"minimum": 0, "maximum": 2}}, None),  # the pool scales it
    ("ec2", {"name": "cpu", "cpu": 4}, "sets cpu, which the ec2 backend cannot honour: a VM's CPUs come with its type"),
    ("gcp", {"name": "gpu", "gpu": 1, "options": {"accelerator_type": "nvidia-tesla-t4"}}, None),
    ("azure", {"name": "gpu", "gpu": 1, "options": {"worker_vm_size": "Standard_NC4as_T4_v3"}}, None),
    ("gcp", {"name": "cpu", "adapt": {"minimum": 0, "maximum": 2}}, None),  # the pool scales it
    ("ec2", {"name": "cpu", "options": {"worker_mem": 2}}, "options.worker_mem is not taken per group by the ec2"),
    ("fargate", {"name": "cpu", "options": {"worker_extra_args": ["--resources", "GPU=1"]}},
     "options.worker_extra_args is not taken per group by the fargate backend"),
    # A group's own boot image on GCP and Azure, validated as the run's is; EC2 groups share the run's AMI.
    ("gcp", {"name": "gpu", "gpu": 1, "options": {"source_image": "projects/p/global/images/family/f"}}, None),
    ("azure", {"name": "gpu", "gpu": 1, "options": {"vm_image": {"publisher": "p", "offer": "o", "sku": "s"}}}, None),
    ("gcp", {"name": "own", "options": {"source_image": 7}}, "group 'own' options: [cluster.options] source_image"),
    ("azure", {"name": "own", "options": {"vm_image": "Canonical:ubuntu:server"}},
     "group 'own' options: [cluster.options] vm_image"),
    ("ec2", {"name": "own", "options": {"source_image": "x"}}, "options.source_image is not taken per group by the ec2"),
])
def test_the_cloud_backends_take_groups_and_refuse_in_one_line_what_they_cannot_honour(name, group, words):
    from flowrig.backends import get_backend

    project = _project(group)
    backend = get_backend(name)
    if words is None:
        backend.check_worker_groups(project.cluster.worker_groups, {})
        return
    with pytest.raises(BadInput) as info:
        backend.check_worker_groups(project.cluster.worker_groups, {})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_plan_gives_each_group_its_shape_in_the_workers_order():
    from flowrig.run.execute import _group_specs
    from flowrig.run.prepared import PreparedRun

    project = _project({"name": "gpu", "worker_threads": 2, "resources": {"GPU": 1}}, {"name": "cpu", "n_workers": 2})
    run = PreparedRun(flow=None, backend=None, tls=None, api=None, api_url=None, worker_threads=3,
                      worker_groups=tuple(project.cluster.worker_groups))
    specs = _group_specs(run, ClusterSize(3, groups=(GroupSize("gpu", 1), GroupSize("cpu", 2))))
    assert specs == (
        WorkerGroupSpec("gpu", 1, 2, {"flowrig-group-gpu": 2, "GPU": 1}),
        WorkerGroupSpec("cpu", 2, 3, {"flowrig-group-cpu": 3}),
    )
    assert specs[1].worker_names() == ["cpu-1", "cpu-2"]


def test_a_docker_workers_container_carries_its_group_in_its_name_and_offers_its_resources():
    from flowrig.backends.docker.cluster import DockerWorker
    from flowrig.backends.docker.group_workers import group_workers as _group_workers
    from flowrig.backends.docker.plans import render_worker

    template = {"cls": DockerWorker, "options": {"settings": "S"}}
    groups = (WorkerGroupSpec("gpu", 1, 2, {"flowrig-group-gpu": 2, "GPU": 1}),
              WorkerGroupSpec("cpu", 2, 1, {"flowrig-group-cpu": 1}))
    workers = _group_workers(template, groups)
    assert list(workers) == ["gpu-1", "cpu-1", "cpu-2"]
    assert workers["gpu-1"]["options"] == {"settings": "S", "threads": 2, "resources": {"flowrig-group-gpu": 2,
                                                                                          "GPU": 1}}
    assert _group_workers(template, ()) == {}
    plan = render_worker(RUN, "img", "net", "gpu-1", threads=2, resources=workers["gpu-1"]["options"]["resources"])
    assert plan.name == f"flowrig-{RUN}-worker-gpu-1"
    assert plan.command[plan.command.index("--resources") + 1] == "flowrig-group-gpu=2,GPU=1"
    assert plan.command[plan.command.index("--nthreads") + 1] == "2"
    assert "--resources" not in render_worker(RUN, "img", "net", 0).command


# --- the docker host's policy --------------------------------------------------------------

GROUPS_PROJECT = textwrap.dedent(
    """
    flow = "flow.py:main"
    [cluster]
    backend = "docker"
    max_workers = 4
    [[cluster.worker_groups]]
    name = "gpu"
    worker_threads = 2
    resources = { GPU = 1 }
    [[cluster.worker_groups]]
    name = "cpu"
    n_workers = 2
    """
)


def _limits(toml: str = GROUPS_PROJECT):
    from flowrig.backends.docker.policy import RunnerLimits

    return RunnerLimits.from_toml(RUN, toml.encode(), "flowrig.toml")


def _groups(**changes) -> list[dict]:
    shape = {"adapt": None, "cpu": None, "memory_mib": None, "gpu": 0, "options": {}}
    groups = [
        {"name": "gpu", "n_workers": 1, "threads": 2, "resources": {"flowrig-group-gpu": 2, "GPU": 1}, **shape},
        {"name": "cpu", "n_workers": 2, "threads": 1, "resources": {"flowrig-group-cpu": 1}, **shape},
    ]
    for key, value in changes.items():
        name, _, field = key.partition("__")
        next(g for g in groups if g["name"] == name)[field] = value
    return groups


def _start(**changes) -> dict:
    request = {"op": "start", "seq": 1, "n_workers": 3, "adapt": None, "worker_threads": 1, "options": {},
               "worker_env": {"FLOWRIG_RUN_ID": RUN}, "no_client_timeout": None, "groups": _groups()}
    request.update(changes)
    return request


def test_the_host_starts_the_groups_the_images_project_names_sized_by_the_hook():
    accepted = _limits().check_start(_start(n_workers=4, groups=_groups(cpu__n_workers=3)))
    assert accepted.groups == (
        WorkerGroupSpec("gpu", 1, 2, {"flowrig-group-gpu": 2, "GPU": 1}),
        WorkerGroupSpec("cpu", 3, 1, {"flowrig-group-cpu": 1}),
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"groups": [_groups()[0], {**_groups()[1], "name": "tpu"}]}, "worker groups ['gpu', 'tpu']; flowrig.toml has"),
        ({"groups": _groups()[:1], "n_workers": 1}, "worker groups ['gpu']; flowrig.toml has ['gpu', 'cpu']"),
        ({"groups": _groups()[::-1]}, "worker groups ['cpu', 'gpu']"),
        ({"groups": _groups(gpu__threads=64)}, "worker group gpu with threads 64; flowrig.toml has 2"),
        ({"groups": _groups(cpu__resources={"flowrig-group-cpu": 1, "flowrig-group-gpu": 1})},
         "worker group cpu with resources"),
        ({"groups": _groups(cpu__resources={"flowrig-group-gpu": 1})}, "worker group cpu with resources"),
        ({"groups": _groups(cpu__n_workers=0), "n_workers": 1}, "worker group cpu of 0 workers (its bounds: 1-4)"),
        ({"groups": _groups(cpu__n_workers=True), "n_workers": 2}, "worker group cpu of True workers"),
        ({"groups": _groups(cpu__n_workers=3), "n_workers": 3}, "worker groups starting with 4 workers in a start of 3"),
        ({"groups": _groups(cpu__n_workers=9), "n_workers": 10}, "worker group cpu of 9 workers (its bounds: 1-4)"),
        ({"groups": None}, "a cluster without the worker groups of flowrig.toml"),
        ({"groups": [{**_groups()[0], "image": "x"}, _groups()[1]]}, "worker groups that are not tables of"),
        ({"adapt": [3, 4]}, "a cluster without the worker groups"),
    ],
)
def test_the_host_refuses_groups_the_images_project_does_not_have(changes, reason):
    from flowrig.backends.docker.policy import Refusal

    with pytest.raises(Refusal) as refused:
        _limits().check_start(_start(**changes))
    assert reason in str(refused.value)


def test_the_host_refuses_groups_to_a_project_without_them():
    from flowrig.backends.docker.policy import Refusal

    plain = 'flow = "flow.py:main"\n[cluster]\nbackend = "docker"\nn_workers = 1\n'
    with pytest.raises(Refusal, match="worker groups, which flowrig.toml does not have"):
        _limits(plain).check_start(_start(n_workers=1, groups=_groups()[:1]))
    assert _limits(plain).check_start(_start(n_workers=1, groups=None)).groups == ()


def test_a_sized_cluster_line_names_each_group():
    assert ClusterSize(1, groups=(GroupSize("gpu", 1),)).describe() == "1 worker (gpu 1)"


def test_preflight_counts_the_groups_workers_and_refuses_groups_where_they_do_not_run(tmp_path):
    from flowrig.run.preflight import maximum_workers, preflight

    project = _project({"name": "gpu", "n_workers": 2}, {"name": "cpu", "n_workers": 3})
    assert maximum_workers(project) == 5
    (tmp_path / "flow.py").write_text("from prefect import flow\n@flow\ndef main(): ...\n")
    (tmp_path / "flowrig.toml").write_text('flow = "flow.py:main"\n[cluster]\nbackend = "fargate"\n'
                                           '[[cluster.worker_groups]]\nname = "gpu"\n')
    with pytest.raises(BadInput, match=r"^\[\[cluster.worker_groups\]\] do not run on the address backend"):
        preflight(tmp_path, backend="address")
