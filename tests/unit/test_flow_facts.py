"""The flow's facts read from its source (flowrig.project.flow_facts): the same name,
description and parameter schema Prefect gives the imported flow, without running a
line of the project or importing what it imports."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

from flowrig.errors import BadInput
from flowrig.project.flow_facts import flow_facts_from_source, manifest_flow_facts, same_entrypoint
from tests.docker_support import SEED_PROJECT

RICH_FLOW = '''
from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import Annotated, Literal, Optional

from prefect import flow
from pydantic import Field

LIMIT = 7


@flow(name="rich-flow", version="1.2", log_prints=True)
def rich(
    items: list[int],
    label: str = "x",
    ratio: Optional[float] = None,
    mode: Literal["fast", "slow"] = "fast",
    when: dt.date | None = None,
    limit: int = LIMIT,
    bounded: Annotated[int, Field(ge=1, le=10)] = 3,
    mapping: dict[str, list[float]] = {"a": [1.0]},
    *,
    dry_run: bool = False,
) -> int:
    """Process the items.

    Args:
        items: what to process.
        label: a name for the run.
    """
    return 0
'''


def _imported_flow(path: Path, function: str):
    spec = importlib.util.spec_from_file_location(f"facts_{path.stem}_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return getattr(module, function)


@pytest.mark.parametrize("source, function", [
    ((SEED_PROJECT / "flow.py").read_text(), "dask_cloud_provider_test"),
    (RICH_FLOW, "rich"),
    ('from prefect import flow\n@flow\ndef plain_flow(a, b=2, *args, c: str = "x", **kwargs):\n    pass\n', "plain_flow"),
])
def test_facts_are_what_prefect_gives_the_imported_flow(tmp_path, source, function):
    path = tmp_path / "flow.py"
    path.write_text(source)
    flow = _imported_flow(path, function)
    facts = flow_facts_from_source(source, function, f"flow.py:{function}")
    assert facts.name == flow.name
    assert facts.description == flow.description
    assert facts.version == flow.version
    assert facts.parameter_schema == flow.parameters.model_dump_for_openapi()
    assert facts.entrypoint == f"flow.py:{function}"


def test_version_and_name_come_from_literals():
    facts = flow_facts_from_source(RICH_FLOW, "rich", "f.py:rich")
    assert (facts.name, facts.version) == ("rich-flow", "1.2")
    assert facts.parameter_names == ["items", "label", "ratio", "mode", "when", "limit", "bounded", "mapping", "dry_run"]


def test_nothing_of_the_project_runs_or_is_imported(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    marker = tmp_path / "ran.txt"
    (tmp_path / "helpers.py").write_text(f"open({str(marker)!r}, 'w').write('helpers imported')\nclass Thing: pass\n")
    source = textwrap.dedent(f'''
        import pathlib
        import helpers
        import not_installed_anywhere
        from prefect import flow
        open({str(marker)!r}, "w").write("module ran")

        class Local:
            open({str(marker)!r}, "w").write("class body ran")

        @flow
        def f(
            a: helpers.Thing = None,
            b: "pathlib.Path.unlink(pathlib.Path({str(victim)!r}))" = 1,
            c: pathlib.Path.unlink(pathlib.Path({str(victim)!r})) = 2,
            d: ().__class__ = 3,
            e: Local = None,
            g: int = len("abc"),
        ):
            pass
    ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    facts = flow_facts_from_source(source, "f", "flow.py:f")
    assert not marker.exists()
    assert victim.read_text() == "still here"
    assert "helpers" not in sys.modules and "not_installed_anywhere" not in sys.modules
    properties = facts.parameter_schema["properties"]
    # What cannot be evaluated safely is "any value"; a default that is not a literal
    # is left out (the parameter stays optional), never guessed.
    assert all("type" not in properties[name] for name in "abcde")
    assert "default" not in properties["g"] and "g" not in facts.parameter_schema.get("required", [])


@pytest.mark.parametrize("source, words", [
    ("from prefect import flow\nNAME = f'x{1}'\n@flow(name=NAME)\ndef f():\n    pass\n", "is not a literal"),
    ("from prefect import flow\n@flow\ndef g():\n    pass\n", "has no top-level function 'f'"),
    ("def f():\n    pass\n", "is not decorated with @flow"),
    ("def f(:\n", "does not parse"),
])
def test_what_cannot_be_read_is_bad_input(source, words):
    with pytest.raises(BadInput) as info:
        flow_facts_from_source(source, "f", "flow.py:f")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_name_held_by_a_literal_constant_is_read():
    source = "import prefect\nNAME = 'named'\n@prefect.flow(name=NAME)\ndef f():\n    pass\n"
    assert flow_facts_from_source(source, "f", "flow.py:f").name == "named"


@pytest.mark.parametrize("recorded, own, same", [
    ("flow.py:main", "flow.py:main", True),
    ("flows/etl/flow.py:main", "flow.py:main", True),      # prefect deploy from a repository's root
    ("/opt/flowrig/project/flow.py:main", "flow.py:main", True),
    ("./flow.py:main", "flow.py:main", True),
    (None, "flow.py:main", True),                           # a deployment without one: the flow name decides
    ("other.py:other", "flow.py:main", False),
    ("flow.py:other", "flow.py:main", False),
    ("flows/flow.py:main", "etl/flow.py:main", False),
    ("myflow.py:main", "flow.py:main", False),
])
def test_entrypoints_match_by_function_and_path_suffix(recorded, own, same):
    assert same_entrypoint(recorded, own) is same


def test_a_rendered_context_records_the_flows_facts_in_its_manifest():
    from flowrig.builder import render_context

    context = render_context(SEED_PROJECT, base_image="debian:12")
    facts = manifest_flow_facts(context.manifest)
    assert facts is not None
    assert (facts.name, facts.entrypoint) == ("dask-cloud-provider-test", "flow.py:dask_cloud_provider_test")
    assert facts.parameter_names == ["x"]


@pytest.mark.parametrize("flow_name, entrypoint, deployment, refused", [
    ("seed", "flow.py:main", "seed/nightly", False),
    ("seed", None, None, False),                    # a flow run without a deployment: the name decides
    ("seed", "flows/seed/flow.py:main", "seed/x", False),
    ("other", "flow.py:main", "other/x", True),
    ("seed", "other.py:main", "seed/x", True),
    ("seed", "flow.py:other", "seed/x", True),
])
def test_a_flow_run_is_the_images_when_flow_and_entry_point_match(flow_name, entrypoint, deployment, refused):
    from flowrig.run.flow_runs import FlowRunRequest, mismatch

    request = FlowRunRequest("run-1", {}, flow_name, deployment, entrypoint)
    reason = mismatch(request, "seed", "flow.py:main")
    assert (reason is not None) is refused
    if refused:
        assert "\n" not in reason and f"flow {flow_name!r}" in reason and "this image runs flow 'seed' (flow.py:main)" in reason


def test_an_annotation_calls_type_helpers_only(monkeypatch):
    import pydantic.v1

    calls = []

    def parse_file_as(*args, **kwargs):  # reads (and with allow_pickle, unpickles) a file
        calls.append(args)
        return int

    parse_file_as.__module__ = "pydantic.v1.tools"
    monkeypatch.setattr(pydantic.v1, "parse_file_as", parse_file_as)
    source = textwrap.dedent('''
        import pydantic
        from prefect import flow

        @flow
        def f(a: pydantic.v1.parse_file_as(int, "payload.pickle", allow_pickle=True) = 1,
              b: pydantic.conint(ge=1) = 3):
            pass
    ''')
    properties = flow_facts_from_source(source, "f", "flow.py:f").parameter_schema["properties"]
    assert calls == [] and "type" not in properties["a"]
    assert properties["b"] == {"default": 3, "minimum": 1, "position": 1, "title": "b", "type": "integer"}
