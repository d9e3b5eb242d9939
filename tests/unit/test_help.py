"""Every command's help, rendered as a person sees it: its texts as written (brackets
such as ``[run] timeout`` included) and, where a command takes any backend, every
backend of :data:`flowrig.backends.BACKENDS`."""

from __future__ import annotations

import inspect
import re
from typing import Iterator

import click
import pytest
import typer
from typer.testing import CliRunner

from flowrig.backends import BACKENDS, CLASS_PATH, IMPLIED
from flowrig.cli import app as flowrig_app
from flowrig.entrypoint.app import app as entrypoint_app

#: The backends a run may name (the rest are chosen by an option of their own).
NAMED = [name for name in BACKENDS if name not in IMPLIED]
#: "a | b | c": how help texts list alternatives (a trailing full stop is not a name's).
BACKEND_LIST = r"(?:\b[\w.:]+ \| )+[\w:]+(?:\.[\w:]+)*"
#: Help pages that are about any run, so must name every backend.
ANY_BACKEND = {("flowrig",), ("flowrig", "run"), ("flowrig-entrypoint", "run")}


def commands(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def every_command() -> list[tuple[tuple[str, ...], typer.Typer, click.Command]]:
    found = []
    for app, prog in ((flowrig_app, "flowrig"), (entrypoint_app, "flowrig-entrypoint")):
        for path, command in commands(typer.main.get_command(app), (prog,)):
            found.append((path, app, command))
    return found


COMMANDS = every_command()


def render(app: typer.Typer, path: tuple[str, ...]) -> str:
    done = CliRunner().invoke(app, [*path[1:], "--help"], prog_name=path[0], terminal_width=100)
    assert done.exit_code == 0, done.output
    return done.output


def flat(text: str) -> str:
    """Text with its line breaks and runs of spaces as one space each."""
    return " ".join(text.split())


def unwrapped(rendered: str) -> str:
    """Rendered help as one line: click wraps long words after a hyphen, too."""
    return flat(re.sub(r"(?<=\w-)\n\s*", "", rendered))


def written(command: click.Command) -> list[str]:
    """The help texts as written in the code: the command's and each option's."""
    texts = [inspect.cleandoc(command.help or "").split("\f")[0]]
    # Hidden options (kept for old scripts) are left out of the help on purpose.
    texts += [
        param.help for param in command.params if getattr(param, "help", None) and not getattr(param, "hidden", False)
    ]
    return [text for text in texts if text]


def test_every_command_is_found():
    names = {" ".join(path) for path, _, _ in COMMANDS}
    for expected in ("flowrig run", "flowrig local leftovers", "flowrig docker leftovers", "flowrig aws leftovers",
                     "flowrig-entrypoint run", "flowrig-entrypoint info"):
        assert expected in names


@pytest.mark.parametrize(("path", "app", "command"), COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_help_renders_as_written(path, app, command):
    shown = unwrapped(render(app, path))
    for text in written(command):
        for paragraph in re.split(r"\n\s*\n", text):
            # Every bracket survives (rich markup would take "[run]" for a style)...
            for bracket in re.findall(r"\[[^\]]*\]", paragraph):
                assert bracket in shown, (bracket, shown)
            # ...and so does every paragraph, word for word.
            assert flat(paragraph) in shown, (paragraph, shown)


@pytest.mark.parametrize(("path", "app", "command"), COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_help_names_every_backend_where_any_backend_goes(path, app, command):
    shown = unwrapped(render(app, path))
    if path in ANY_BACKEND:
        for name in [*NAMED, CLASS_PATH]:
            assert re.search(rf"(^|[\s|(]){re.escape(name)}([\s|,.;)]|$)", shown), (name, shown)
    # A list of backends written "a | b | ..." is the whole list, wherever it appears.
    for listed in re.findall(BACKEND_LIST, shown):
        names = [part.strip() for part in listed.split("|")]
        if set(names) & set(NAMED):
            assert [n for n in names if n in BACKENDS] == NAMED, listed


def test_the_checks_catch_eaten_brackets_and_short_lists():
    """The probe must be able to fail: rich markup eats "[run]", as the help did."""
    from rich.console import Console
    from rich.text import Text

    console = Console(width=200, record=True)
    console.print(Text.from_markup("Overrides [run] timeout."))
    assert "[run]" not in console.export_text()
    assert re.findall(BACKEND_LIST, "local | docker | ecs | fargate | package.module:Class.") == [
        "local | docker | ecs | fargate | package.module:Class"
    ]
