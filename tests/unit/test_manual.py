"""The manual (docs/, built by MkDocs): its generated references cover the code whole.

The generator is docs/hooks/reference.py, which MkDocs runs as a hook; here it is
imported by path and called directly, so these tests need no MkDocs. The one test that
builds the site needs it (the ``docs`` dependency group, which CI installs).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import Field

from flowrig.backends import BACKENDS, get_backend
from flowrig.backends.base import Options
from flowrig.project.models import ProjectFile

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _load_generator():
    spec = importlib.util.spec_from_file_location("flowrig_manual_reference", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


reference = _load_generator()


def _fields(model: type) -> dict:
    return dict(getattr(model, "model_fields", None) or model.__pydantic_fields__)


def _nested_model(annotation) -> type | None:
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return next((o for o in options if isinstance(o, type) and hasattr(o, "__pydantic_fields__")), None)


def project_tables() -> dict[str, type]:
    """Every table of flowrig.toml: dotted name ('' for the top level) -> its model."""
    tables, pending = {}, [("", ProjectFile)]
    while pending:
        where, model = pending.pop()
        tables[where] = model
        for name, info in _fields(model).items():
            nested = _nested_model(info.annotation)
            if nested is not None:
                pending.append((f"{where}.{name}".lstrip("."), nested))
    return tables


def options_models() -> dict[str, type[Options]]:
    """Each registered backend's ``options_model`` (backends without one pass options through)."""
    models = {name: get_backend(name).options_model for name in BACKENDS}
    return {name: model for name, model in models.items() if model is not None}


def test_the_models_walked_here_are_the_whole_configuration():
    assert set(project_tables()) == {"", "cluster", "cluster.adapt", "build", "run"}
    assert set(options_models()) == {"local", "docker", "ecs", "fargate", "ec2", "azure", "gcp"}


def test_every_field_of_flowrig_toml_and_of_every_options_model_has_a_description():
    models = {f"flowrig.toml [{table}]": model for table, model in project_tables().items()}
    models.update({f"[cluster.options] of {name}": model for name, model in options_models().items()})
    undescribed = [
        f"{where}: {name}" for where, model in models.items() for name, info in _fields(model).items()
        if not (info.description or "").strip()
    ]
    assert not undescribed, "fields without a description:\n" + "\n".join(undescribed)


def test_a_field_without_a_description_stops_the_generator():
    class Undescribed(Options):
        described: bool = Field(False, description="has one")
        bare: int = 1

    with pytest.raises(reference.GenerationError, match=r"Undescribed\.bare .*has no description"):
        reference.fields_table(Undescribed, "cluster.options")


def _rows(markdown: str) -> list[str]:
    return re.findall(r"^\| `([^`]+)` \|", markdown, flags=re.MULTILINE)


def test_every_option_each_backend_accepts_is_on_its_page_and_in_the_configuration_reference():
    everything = reference.expand((DOCS / "reference" / "configuration.md").read_text())
    sections = re.split(r"^### `([a-z0-9]+)`$", everything.split("## `[cluster.options]`", 1)[1], flags=re.MULTILINE)
    per_backend = dict(zip(sections[1::2], sections[2::2]))
    for name, model in options_models().items():
        page = DOCS / "backends" / f"{name}.md"
        assert f"<!-- flowrig:options {name} -->" in page.read_text(), page
        on_page = reference.expand(page.read_text())
        keys = set(model.model_fields)
        assert keys <= set(_rows(on_page)), (name, sorted(keys - set(_rows(on_page))))
        assert set(_rows(per_backend[name])) == keys, name
        for refused in model.refused:
            assert f"- `{refused}`: " in per_backend[name], (name, refused)


def test_every_key_of_flowrig_toml_is_in_the_configuration_reference():
    text = reference.expand((DOCS / "reference" / "configuration.md").read_text())
    headings = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    sections = dict(zip(headings[1::2], headings[2::2]))
    for table, model in project_tables().items():
        section = sections["The top level" if not table else f"`[{table}]`"]
        assert set(_rows(section)) == set(_fields(model)), table


def test_the_reference_shows_types_and_defaults_as_toml_writes_them():
    from flowrig.backends.aws.ecs.options import ECSOptions

    rows = {
        row.split("|")[1].strip(): [cell.strip() for cell in row.split("|")[2:4]]
        for row in reference.fields_table(ECSOptions, "cluster.options")[0][2:]
    }
    assert rows["`provision_timeout`"][0] == "number > 0"
    assert rows["`fargate_spot`"] == ["boolean", "`false`"]
    assert rows["`spot`"] == ['boolean or `"fallback"`', "`false`"]
    assert rows["`subnets`"] == ["list of strings", "not set"]
    assert rows["`environment`"] == ["table of strings", "`{}`"]
    project = reference.project_reference()
    assert "| `flow` | string | required |" in project
    assert "| `worker_threads` | integer >= 1 | `1` |" in project


def test_the_cli_reference_has_every_command_and_option_of_the_live_app():
    text = reference.cli_reference()
    sections = reference.command_sections(text)
    paths = dict(reference.command_paths())
    assert {"flowrig run", "flowrig build", "flowrig aws leftovers", "flowrig vm run-local"} <= set(paths)
    assert set(paths) <= set(sections)
    assert "--scheduler-address" in paths["flowrig run"] and "--scheduler-address" in sections["flowrig run"]


def test_the_cli_check_fails_on_a_reference_that_lost_an_option_or_a_command():
    text = reference.cli_reference()
    without_option = "\n".join(line for line in text.splitlines() if not line.startswith("* `--timeout"))
    with pytest.raises(reference.GenerationError, match=r"`flowrig run` leaves out --timeout"):
        reference.check_cli_reference(without_option)
    without_command = text.replace("## `flowrig vm run-local`", "## `flowrig vm replay`")
    with pytest.raises(reference.GenerationError, match=r"leaves out `flowrig vm run-local`"):
        reference.check_cli_reference(without_command)


def test_an_unknown_marker_or_backend_stops_the_build():
    with pytest.raises(reference.GenerationError, match="unknown marker"):
        reference.expand("text\n<!-- flowrig:optoins ecs -->\n")
    with pytest.raises(reference.GenerationError, match="no backend named 'kubernetes'"):
        reference.expand("<!-- flowrig:options kubernetes -->\n")


def test_a_code_block_left_open_stops_the_build():
    with pytest.raises(reference.GenerationError, match="opened on line 3 is never closed"):
        reference.check_fences("# Page\n\n```toml\nflow = 'f.py:f'\n\nThe rest of the page.\n")
    reference.check_fences("```\ncode\n```\n\n```python\nx = 1\n```\n")


def test_every_backend_has_a_page_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text()
    for name in [*reference.backend_models(), "custom"]:
        assert (DOCS / "backends" / f"{name}.md").is_file(), name
        assert f"backends/{name}.md" in nav, name


def test_the_security_page_includes_security_md_rather_than_a_copy():
    page = (DOCS / "security.md").read_text()
    assert "<!-- flowrig:include SECURITY.md -->" in page
    first_heading = (REPO / "SECURITY.md").read_text().splitlines()[0]
    assert "#" + first_heading in reference.expand(page)


def test_the_readme_is_short_and_keeps_its_two_commands():
    readme = (REPO / "README.md").read_text()
    # The performance table is generated (benchmarks/readme_table.py); the prose around it counts.
    prose = re.sub(r"(<!-- performance:begin -->\n).*?(<!-- performance:end -->)", r"\1\2", readme, flags=re.S)
    assert len(prose.splitlines()) <= 150
    assert re.search(r"^    pip install uv==\S+ && uv run --locked flowrig run examples/seed ", readme, re.MULTILINE)
    assert re.search(r"<!-- test-command -->\n    uv run --locked --all-extras --group dev python -m pytest", readme)
