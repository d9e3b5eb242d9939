"""The manual's generated parts, made from the code at every build so they cannot drift.

A page asks for a generated part with a marker on a line of its own:

``<!-- flowrig:cli -->``
    every ``flowrig`` command and option, from the live typer app (:mod:`flowrig.cli`),
    rendered by typer's own ``utils docs``;
``<!-- flowrig:project -->``
    every key of ``flowrig.toml``, table by table, from :mod:`flowrig.project.models`;
``<!-- flowrig:options NAME -->``
    the ``[cluster.options]`` of backend ``NAME``, from its ``options_model``;
``<!-- flowrig:options-all -->``
    the same for every backend of :data:`flowrig.backends.BACKENDS`;
``<!-- flowrig:layers -->``
    the packages, layer by layer as ``pyproject.toml``'s import contract orders them,
    each with the first paragraph of its docstring;
``<!-- flowrig:include FILE -->``
    a file of the repository (``SECURITY.md``), its headings moved one level down.

Rendering is pure (markdown text in, markdown text out): MkDocs calls
:func:`on_page_markdown` below, and the tests call :func:`expand` and the renderers
directly. A model field without a description, an unknown marker or backend, and a
command the CLI reference left out are errors, so ``mkdocs build --strict`` fails on them.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterator

from pydantic import BaseModel, TypeAdapter

#: The repository's root: this file is docs/hooks/reference.py.
ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- flowrig:(?P<what>[a-z-]+)(?: (?P<arg>[^ ]+))? -->$", re.MULTILINE)


class GenerationError(Exception):
    """A generated part cannot be made truthfully (the build must fail)."""


# --- models: the tables of flowrig.toml and each backend's [cluster.options] ------------


def _fields(model: type) -> dict[str, Any]:
    """``name -> FieldInfo`` of a pydantic model or pydantic dataclass."""
    fields = getattr(model, "model_fields", None)
    if fields is None:
        fields = model.__pydantic_fields__
    return dict(fields)


def _is_table(annotation: Any) -> type | None:
    """The model class a field's annotation names (``X`` or ``X | None``), if any."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if typing.get_origin(annotation) is list:
        # A list of tables (``[[cluster.worker_groups]]``).
        candidates = typing.get_args(annotation)
    for candidate in candidates:
        if isinstance(candidate, type) and (
            issubclass(candidate, BaseModel) or hasattr(candidate, "__pydantic_fields__")
        ):
            return candidate
    return None


def _plural(text: str) -> str:
    return {"table": "tables", "string": "strings", "number": "numbers", "integer": "integers"}.get(text, text)


def _bounds(schema: dict[str, Any]) -> str:
    for key, sign in (("minimum", ">="), ("ge", ">="), ("exclusiveMinimum", ">"), ("gt", ">")):
        if key in schema:
            return f" {sign} {schema[key]}"
    return ""


def type_text(schema: dict[str, Any]) -> str:
    """How a JSON schema's value is written in TOML, for a reader (``number > 0``)."""
    if "anyOf" in schema:
        parts = [type_text(part) for part in schema["anyOf"] if part.get("type") != "null"]
        if {"integer", "number"} <= set(parts):
            parts = [part for part in parts if part != "integer"]
        text = " or ".join(dict.fromkeys(parts))
        return text + _bounds(schema)
    if "enum" in schema:
        return " or ".join(f'`"{value}"`' for value in schema["enum"])
    if isinstance(schema.get("const"), str):  # a Literal of one string
        return f'`"{schema["const"]}"`'
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_plural(type_text(schema.get('items', {})))}"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"table of {_plural(type_text(values))}" if isinstance(values, dict) and values else "table"
    names = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean"}
    return names.get(kind, "any value") + _bounds(schema)


def toml_text(value: Any) -> str:
    """A default as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{key} = {toml_text(item)}" for key, item in value.items()) + " }"
    return str(value)


def _cell(text: str) -> str:
    """Text fit for one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def _prose(docstring: str | None) -> str:
    """A class docstring as Markdown: reST's double backticks become single ones."""
    if not docstring:
        return ""
    text = inspect.cleandoc(docstring)
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def fields_table(model: type, where: str) -> tuple[list[str], list[tuple[str, type]]]:
    """The rows of one table's keys, and the tables nested in it.

    Raises
    ------
    GenerationError
        When a field has no description: the reference would be a list of bare names.
    """
    rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
    nested: list[tuple[str, type]] = []
    for name, info in _fields(model).items():
        description = info.description
        if not description or not description.strip():
            raise GenerationError(
                f"{model.__module__}.{model.__qualname__}.{name} ({where}) has no description: "
                f"give the field one (Field(..., description=...))"
            )
        table = _is_table(info.annotation)
        listed = typing.get_origin(info.annotation) is list
        if table is not None:
            nested.append((name, table))
            place = f"{where}.{name}" if where else name
            kind = f"list of tables (see `[[{place}]]`)" if listed else f"table (see `[{place}]`)"
        else:
            annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            schema = TypeAdapter(annotation).json_schema()
            kind = type_text(schema)
        if table is not None and listed:
            default = "none"
        elif table is not None:
            default = "see its table"
        elif info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            default = "not set" if value is None else f"`{toml_text(value)}`"
        rows.append(f"| `{name}` | {_cell(kind)} | {default} | {_cell(description)} |")
    return rows, nested


def project_reference() -> str:
    """Every table and key of ``flowrig.toml``, from :class:`flowrig.project.models.ProjectFile`."""
    from flowrig.project.models import ProjectFile

    out: list[str] = []
    pending: list[tuple[str, type]] = [("", ProjectFile)]
    #: Places that are lists of tables (``[[...]]``).
    lists: set[str] = set()
    while pending:
        where, model = pending.pop(0)
        title = "The top level" if not where else f"`[[{where}]]`" if where in lists else f"`[{where}]`"
        rows, nested = fields_table(model, where)
        out += [f"## {title}", "", _prose(model.__doc__), "", *rows, ""]
        # Depth first: a nested table follows the table that holds it.
        pending[:0] = [(f"{where}.{name}" if where else name, table) for name, table in nested]
        lists.update(f"{where}.{name}" if where else name for name, info in _fields(model).items()
                     if typing.get_origin(info.annotation) is list and _is_table(info.annotation))
    return "\n".join(out)


def backend_models() -> dict[str, type | None]:
    """Each backend a project may name -> its ``options_model`` (``None``: passed through)."""
    # Backends chosen by an option of their own (address: --scheduler-address) are left out.
    from flowrig.backends import BACKENDS, IMPLIED, get_backend

    return {name: get_backend(name).options_model for name in BACKENDS if name not in IMPLIED}


def options_reference(backend: str) -> str:
    """The ``[cluster.options]`` of one backend: every key, its type, default and meaning."""
    models = backend_models()
    if backend not in models:
        raise GenerationError(f"no backend named {backend!r}; known: {', '.join(models)}")
    model = models[backend]
    if model is None:
        return f"The `{backend}` backend passes `[cluster.options]` through unchecked."
    rows, nested = fields_table(model, "cluster.options")
    if nested:
        raise GenerationError(f"{model.__qualname__}: nested option tables are not rendered")
    out = [_prose(model.__doc__), "", *rows, ""]
    refused = getattr(model, "refused", {})
    if refused:
        out += ["Refused here, each with where it belongs instead:", ""]
        out += [f"- `{key}`: {fix}" for key, fix in sorted(refused.items())]
        out.append("")
    return "\n".join(out)


def all_options_reference() -> str:
    """:func:`options_reference` of every backend, each under a heading of its own."""
    parts = []
    for name in backend_models():
        parts += [f"### `{name}`", "", f"The [{name} page](../backends/{name}.md) says what they do.", ""]
        parts.append(options_reference(name))
    return "\n".join(parts)


# --- the command line ----------------------------------------------------------------------


def command_paths() -> Iterator[tuple[str, list[str]]]:
    """Every command of the live ``flowrig`` app: its path and its option spellings."""
    import typer

    from flowrig.cli import app

    def walk(command: Any, path: str) -> Iterator[tuple[str, list[str]]]:
        if getattr(command, "hidden", False):
            return
        options = [opt for param in command.params if not getattr(param, "hidden", False)
                   for opt in (*param.opts, *getattr(param, "secondary_opts", [])) if opt.startswith("-")]
        yield path, options
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, f"{path} {name}")

    yield from walk(typer.main.get_command(app), "flowrig")


def command_sections(markdown: str) -> dict[str, str]:
    """``command path -> its section`` of a CLI reference whose headings are `` `flowrig run` ``."""
    parts = re.split(r"^#+ `([^`]+)`$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def check_cli_reference(text: str) -> str:
    """``text``, once every command and visible option of the live app is in it.

    Raises
    ------
    GenerationError
        Naming the first command, or the options of a command, that ``text`` leaves out.
    """
    sections = command_sections(text)
    for path, options in command_paths():
        if path not in sections:
            raise GenerationError(f"the CLI reference leaves out `{path}`")
        listed = {word for spelled in re.findall(r"^\* `([^`]+)`", sections[path], flags=re.MULTILINE)
                  for word in re.split(r"[ ,/]+", spelled)}
        missing = [opt for opt in options if opt not in listed]
        if missing:
            raise GenerationError(f"the CLI reference of `{path}` leaves out {', '.join(missing)}")
    return text


def cli_reference() -> str:
    """Every command and option of ``flowrig``, as typer's own ``utils docs`` renders them.

    Raises
    ------
    GenerationError
        When typer fails, or its text leaves out a command or an option of the app.
    """
    done = subprocess.run(
        [sys.executable, "-m", "typer", "flowrig.cli", "utils", "docs", "--name", "flowrig"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    if done.returncode != 0:
        raise GenerationError(f"typer utils docs failed: {done.stderr.strip()[-400:]}")
    return check_cli_reference(demote(done.stdout))


# --- the packages and their layers ---------------------------------------------------------


def _summary(path: Path) -> str:
    """The first paragraph of a module's docstring, read without importing it."""
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(_prose(doc).split("\n\n")[0].split())


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def layers_reference() -> str:
    """The import contracts of ``pyproject.toml`` (``lint-imports`` checks them), each
    package with what its docstring says it owns.

    Raises
    ------
    GenerationError
        When a package of the layers has no docstring, or the file names no layers.
    """
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = [contract for contract in contracts if contract.get("type") == "layers"]
    if not layered:
        raise GenerationError("pyproject.toml has no layers contract")
    rows = ["| layer | package | what it owns |", "|---|---|---|"]
    for number, layer in enumerate(layered[0]["layers"], start=1):
        for module in (name.strip() for name in layer.split("|")):
            path = _module_file(module)
            summary = _summary(path) if path else ""
            if not summary:
                raise GenerationError(f"{module} has no docstring to say what it owns")
            rows.append(f"| {number} | `{module}` | {_cell(summary)} |")
            if path is not None and path.name == "__init__.py":
                for sub in sorted(p for p in path.parent.iterdir() if (p / "__init__.py").is_file()):
                    dotted = f"{module}.{sub.name}"
                    rows.append(f"| {number} | `{dotted}` | {_cell(_summary(sub / '__init__.py'))} |")
    out = [*rows, "", "Other contracts:", ""]
    out += [f"- {contract['name']}" for contract in contracts if contract is not layered[0]]
    return "\n".join(out) + "\n"


# --- pages ---------------------------------------------------------------------------------


def demote(markdown: str, levels: int = 1) -> str:
    """Headings moved ``levels`` down (``#`` -> ``##``), code blocks left alone."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out) + "\n"


def include(name: str) -> str:
    """A file of the repository's root, for a page that presents it whole."""
    path = (ROOT / name).resolve()
    if path.parent != ROOT or not path.is_file():
        raise GenerationError(f"include {name!r}: not a file at the repository's root")
    return demote(path.read_text())


def expand(markdown: str) -> str:
    """A page's markdown with every marker replaced by its generated part.

    Raises
    ------
    GenerationError
        For an unknown marker or argument, and whatever a generator raises.
    """

    def one(match: re.Match[str]) -> str:
        what, arg = match["what"], match["arg"]
        if what == "cli" and arg is None:
            return cli_reference()
        if what == "project" and arg is None:
            return project_reference()
        if what == "options" and arg is not None:
            return options_reference(arg)
        if what == "options-all" and arg is None:
            return all_options_reference()
        if what == "layers" and arg is None:
            return layers_reference()
        if what == "include" and arg is not None:
            return include(arg)
        raise GenerationError(f"unknown marker {match[0]!r}")

    return MARKER.sub(one, markdown)


def check_fences(markdown: str) -> None:
    """Refuse a code block left open: Markdown would swallow the rest of the page into it.

    Raises
    ------
    GenerationError
        Naming the line of the fence that is never closed.
    """
    opened = None
    for number, line in enumerate(markdown.splitlines(), start=1):
        if line.startswith("```"):
            opened = None if opened else number
    if opened:
        raise GenerationError(f"the code block opened on line {opened} is never closed")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: expand the page's markers (an error stops the build)."""
    try:
        check_fences(markdown)
        return expand(markdown)
    except GenerationError as exc:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{page.file.src_uri}: {exc}") from None
