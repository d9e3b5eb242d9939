"""``flowrig.toml`` parsing: a valid file round-trips into a typed Project, and every
mistake is a BadInput whose one line names the key at fault."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowrig.errors import BadInput
from flowrig.project import Adapt, ClusterConfig, Project, load_project, parse_project
from flowrig.project import defaults as project_defaults

FLOW = "from prefect import flow\n\n@flow\ndef main():\n    return 1\n"


def make(tmp_path: Path, toml: str, *, flow_file: str | None = "flow.py", extra: dict | None = None) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "flowrig.toml").write_text(textwrap.dedent(toml))
    if flow_file:
        (root / flow_file).write_text(FLOW)
    for name, text in (extra or {}).items():
        (root / name).write_text(text)
    return root


def bad(data: dict, tmp_path: Path) -> str:
    with pytest.raises(BadInput) as info:
        parse_project(data, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_full_file_round_trips_into_typed_config(tmp_path):
    root = make(
        tmp_path,
        """
        name = "demo"
        flow = "flow.py:main"
        requirements = "requirements.txt"

        [cluster]
        backend = "docker"
        adapt = { minimum = 0, maximum = 4 }
        sizing = "flow.py:on_execute"
        min_workers = 0
        max_workers = 6
        worker_threads = 2
        map_chunk = 4
        image = "demo:1"

        [cluster.options]
        memory_limit = "1GiB"
        nested = { a = 1 }
        """,
        extra={"requirements.txt": "toolz\n"},
    )
    project = load_project(root)
    assert project.root == root.resolve()
    assert project.flow == "flow.py:main"
    assert project.flow_path == root.resolve() / "flow.py"
    assert project.flow_function == "main"
    assert project.requirements == "requirements.txt"
    assert project.cluster == ClusterConfig(
        backend="docker",
        n_workers=None,
        adapt=Adapt(0, 4),
        sizing="flow.py:on_execute",
        min_workers=0,
        max_workers=6,
        worker_threads=2,
        map_chunk=4,
        image="demo:1",
        options={"memory_limit": "1GiB", "nested": {"a": 1}},
    )
    assert project.raw["name"] == "demo"


def test_minimal_file_takes_the_defaults(tmp_path):
    root = make(tmp_path, 'flow = "flow.py:main"\n')
    project = load_project(root / "flowrig.toml")  # the file itself works as well as its directory
    assert project.requirements is None
    cluster = project.cluster
    assert cluster.backend == project_defaults.BACKEND
    assert cluster.n_workers is None and cluster.adapt is None and cluster.sizing is None
    assert (cluster.min_workers, cluster.max_workers) == (project_defaults.MIN_WORKERS, project_defaults.MAX_WORKERS)
    assert cluster.worker_threads == project_defaults.WORKER_THREADS
    assert cluster.map_chunk == project_defaults.MAP_CHUNK
    assert cluster.image is None
    assert dict(cluster.options) == {}


def test_flow_in_a_subdirectory_and_adapt_minimum_defaults_to_zero(tmp_path):
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "flows.py").write_text(FLOW)
    (root / "flowrig.toml").write_text('flow = "pkg/flows.py:main"\n[cluster]\nadapt = { maximum = 3 }\n')
    project = load_project(root)
    assert project.flow_path == root.resolve() / "pkg" / "flows.py"
    assert project.cluster.adapt == Adapt(0, 3)


def test_seed_example_parses():
    seed = Path(__file__).resolve().parents[2] / "examples" / "seed"
    project = load_project(seed)
    assert project.flow_function == "dask_cloud_provider_test"
    assert project.cluster.sizing == "flow.py:on_execute"
    assert (project.cluster.min_workers, project.cluster.max_workers) == (1, 10)


def test_project_equality_ignores_raw(tmp_path):
    a = parse_project({"flow": "flow.py:main"}, tmp_path)
    b = parse_project({"flow": "flow.py:main", "name": "x"}, tmp_path)
    assert isinstance(a, Project) and a == b


# --- errors from the parsed document --------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    message = bad({"flow": "flow.py:main", "flwo": 1}, tmp_path)
    assert "'flwo'" in message and "unknown key" in message


def test_unknown_cluster_key_has_dotted_name(tmp_path):
    message = bad({"flow": "flow.py:main", "cluster": {"n_worker": 2}}, tmp_path)
    assert "'cluster.n_worker'" in message
    assert "n_workers" in message  # the allowed keys are listed


def test_unknown_adapt_key_has_dotted_name(tmp_path):
    message = bad({"flow": "flow.py:main", "cluster": {"adapt": {"max": 3}}}, tmp_path)
    assert "'cluster.adapt.max'" in message


@pytest.mark.parametrize(
    ("cluster", "key"),
    [
        ({"n_workers": True}, "cluster.n_workers"),
        ({"n_workers": "2"}, "cluster.n_workers"),
        ({"n_workers": 1.5}, "cluster.n_workers"),
        ({"max_workers": False}, "cluster.max_workers"),
        ({"min_workers": "0"}, "cluster.min_workers"),
        ({"worker_threads": True}, "cluster.worker_threads"),
        ({"adapt": {"minimum": True, "maximum": 2}}, "cluster.adapt.minimum"),
        ({"adapt": {"maximum": "5"}}, "cluster.adapt.maximum"),
        ({"adapt": [1, 2]}, "cluster.adapt"),
        ({"backend": 3}, "cluster.backend"),
        ({"sizing": 1}, "cluster.sizing"),
        ({"options": "fast"}, "cluster.options"),
        ({"image": 5}, "cluster.image"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, cluster, key):
    message = bad({"flow": "flow.py:main", "cluster": cluster}, tmp_path)
    assert f"'{key}'" in message
    assert "must be" in message


def test_wrong_type_of_top_level_values(tmp_path):
    assert "'flow'" in bad({"flow": 3}, tmp_path)
    assert "'requirements'" in bad({"flow": "flow.py:main", "requirements": ["a"]}, tmp_path)
    assert "'cluster'" in bad({"flow": "flow.py:main", "cluster": "local"}, tmp_path)


def test_negative_count_names_the_key(tmp_path):
    message = bad({"flow": "flow.py:main", "cluster": {"n_workers": -1}}, tmp_path)
    assert "'cluster.n_workers'" in message and ">= 0" in message


def test_zero_worker_threads_rejected(tmp_path):
    assert "'cluster.worker_threads'" in bad({"flow": "flow.py:main", "cluster": {"worker_threads": 0}}, tmp_path)


def test_map_chunks_default_is_the_task_runners():
    from flowrig.internals.task_runner import FlowrigTaskRunner

    assert project_defaults.MAP_CHUNK == FlowrigTaskRunner.CHUNK


def test_zero_map_chunk_rejected(tmp_path):
    assert "'cluster.map_chunk'" in bad({"flow": "flow.py:main", "cluster": {"map_chunk": 0}}, tmp_path)


def test_adapt_minimum_above_maximum(tmp_path):
    message = bad({"flow": "flow.py:main", "cluster": {"adapt": {"minimum": 5, "maximum": 2}}}, tmp_path)
    assert "'cluster.adapt.minimum' (5)" in message and "'cluster.adapt.maximum' (2)" in message


def test_adapt_without_maximum(tmp_path):
    message = bad({"flow": "flow.py:main", "cluster": {"adapt": {"minimum": 1}}}, tmp_path)
    assert "'cluster.adapt.maximum'" in message and "required" in message


def test_min_workers_above_max_workers(tmp_path):
    message = bad({"flow": "flow.py:main", "cluster": {"min_workers": 4, "max_workers": 3}}, tmp_path)
    assert "'cluster.min_workers' (4)" in message and "'cluster.max_workers' (3)" in message


def test_n_workers_and_adapt_both_set(tmp_path):
    message = bad(
        {"flow": "flow.py:main", "cluster": {"n_workers": 2, "adapt": {"minimum": 0, "maximum": 2}}},
        tmp_path,
    )
    assert "'cluster.n_workers'" in message and "'cluster.adapt'" in message


def test_missing_flow(tmp_path):
    message = bad({"cluster": {}}, tmp_path)
    assert "missing 'flow'" in message


@pytest.mark.parametrize("flow", ["flow.py", "flow.py:", ":main", "flow.py:not-a-name", "flow.py:1main"])
def test_malformed_flow_reference(tmp_path, flow):
    message = bad({"flow": flow}, tmp_path)
    assert "'flow'" in message and repr(flow) in message


def test_sizing_without_function(tmp_path):
    assert "'cluster.sizing'" in bad({"flow": "flow.py:main", "cluster": {"sizing": "flow.py"}}, tmp_path)


# --- errors from the files on disk ----------------------------------------------------


def load_bad(path: Path) -> str:
    with pytest.raises(BadInput) as info:
        load_project(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_flow_file(tmp_path):
    root = make(tmp_path, 'flow = "flows.py:main"\n')
    message = load_bad(root)
    assert "flows.py" in message and "does not exist" in message and "'flow'" in message


def test_missing_requirements_file(tmp_path):
    root = make(tmp_path, 'flow = "flow.py:main"\nrequirements = "reqs.txt"\n')
    message = load_bad(root)
    assert "'reqs.txt'" in message and "does not exist" in message and "'requirements'" in message


def test_invalid_toml(tmp_path):
    root = make(tmp_path, 'flow = "flow.py:main\n')
    message = load_bad(root)
    assert "not valid TOML" in message and "flowrig.toml" in message


def test_toml_error_keeps_the_key_name(tmp_path):
    root = make(tmp_path, 'flow = "flow.py:main"\n[cluster]\nn_workers = true\n')
    assert "'cluster.n_workers'" in load_bad(root)


def test_missing_project_file(tmp_path):
    (tmp_path / "empty").mkdir()
    message = load_bad(tmp_path / "empty")
    assert "no flowrig.toml" in message and "flow = " in message


def test_project_directory_missing(tmp_path):
    message = load_bad(tmp_path / "nowhere")
    assert "does not exist" in message and "nowhere" in message


@pytest.mark.parametrize("image", [0, False])
def test_falsy_image_of_wrong_type_is_rejected(tmp_path, image):
    assert "'cluster.image'" in bad({"flow": "flow.py:main", "cluster": {"image": image}}, tmp_path)


# --- loading the flow file (flowrig.project.flow_loader) -------------------------------------------

TASK_FLOW = '''
from prefect import flow, task

FACTOR = 3


def helper(x):
    return x * FACTOR


@task
def scaled(x: int) -> int:
    return helper(x) + 1


@flow
def main(x: int = 1) -> int:
    return scaled(x)


not_a_function = 42


def plain(x):
    return helper(x)
'''


def flow_file(tmp_path: Path, source: str, name: str = "flow.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_loading_twice_gives_the_same_module(tmp_path):
    from flowrig.project.flow_loader import load_flow, load_module

    path = flow_file(tmp_path, TASK_FLOW)
    first = load_module(path)
    # Another spelling of the same file is still the same module.
    second = load_module(tmp_path / "." / "flow.py")
    assert first is second
    assert load_flow(path, "main") is first.main


def test_two_projects_with_the_same_file_name_do_not_collide(tmp_path):
    from flowrig.project.flow_loader import load_module

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = flow_file(tmp_path / "a", "WHO = 'a'\n")
    b = flow_file(tmp_path / "b", "WHO = 'b'\n")
    ma, mb = load_module(a), load_module(b)
    assert ma is not mb and ma.__name__ != mb.__name__
    assert (ma.WHO, mb.WHO) == ("a", "b")


def test_import_error_names_the_line(tmp_path):
    from flowrig.project.flow_loader import load_module

    path = flow_file(tmp_path, "import os\n\nvalue = 1 / 0\n")
    with pytest.raises(BadInput) as info:
        load_module(path)
    message = str(info.value)
    assert message == "importing flow.py failed at line 3: ZeroDivisionError: division by zero"


def test_import_error_in_a_function_called_at_import_names_its_line(tmp_path):
    from flowrig.project.flow_loader import load_module

    path = flow_file(tmp_path, "def f():\n    raise RuntimeError('boom')\n\nf()\n")
    with pytest.raises(BadInput, match=r"at line 2: RuntimeError: boom"):
        load_module(path)


def test_failed_import_is_not_cached(tmp_path):
    import sys

    from flowrig.project.flow_loader import load_module

    path = flow_file(tmp_path, "raise ValueError('first')\n")
    before = set(sys.modules)
    with pytest.raises(BadInput, match="first"):
        load_module(path)
    assert not {m for m in set(sys.modules) - before if m.startswith("flowrig_project_")}
    path.write_text("OK = True\n")
    assert load_module(path).OK is True


def test_syntax_error_is_bad_input(tmp_path):
    from flowrig.project.flow_loader import load_module

    path = flow_file(tmp_path, "def broken(:\n    pass\n")
    with pytest.raises(BadInput, match="importing flow.py failed.*SyntaxError"):
        load_module(path)


def test_missing_flow_file_for_loader(tmp_path):
    from flowrig.project.flow_loader import load_module

    with pytest.raises(BadInput, match="does not exist"):
        load_module(tmp_path / "absent.py")


def test_sibling_modules_import(tmp_path):
    from flowrig.project.flow_loader import load_module

    (tmp_path / "flowrig_sibling_helpers.py").write_text("VALUE = 17\n")
    path = flow_file(tmp_path, "from flowrig_sibling_helpers import VALUE\n")
    assert load_module(path).VALUE == 17


def test_missing_function_not_callable_and_not_a_flow(tmp_path):
    from flowrig.project.flow_loader import load_flow, load_function

    path = flow_file(tmp_path, TASK_FLOW)
    with pytest.raises(BadInput, match="flow.py has no flow named 'mian'"):
        load_flow(path, "mian")
    with pytest.raises(BadInput, match="flow.py has no sizing hook named 'on_execute'"):
        load_function(path, "on_execute", "sizing hook")
    with pytest.raises(BadInput, match="flow.py:not_a_function is not a function"):
        load_flow(path, "not_a_function")
    with pytest.raises(BadInput, match="flow.py:plain is not a Prefect flow"):
        load_flow(path, "plain")
    with pytest.raises(BadInput, match="flow.py:scaled is not a Prefect flow"):
        load_flow(path, "scaled")
    assert load_function(path, "plain", "sizing hook")(2) == 6
