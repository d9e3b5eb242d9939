"""What a project's code imports, and whether this interpreter can import all of it.

The image build runs :func:`check_imports` inside the finished image, as the image's
user, so that an image which cannot run its flow is never tagged: a package missing
from ``requirements.txt``, a shared library that does not load, a flow module that
raises while it is imported.

The modules checked are the ones the flow file (and the sizing hook's file) import,
followed through the project's own modules, *anywhere* in those files: a task that
does ``import sklearn`` in its body fails on a worker at run time otherwise. Imports a
file marks as optional are left out: inside ``try`` blocks that catch ``ImportError``
(or ``ModuleNotFoundError``, ``Exception``, a bare ``except``), under ``if
TYPE_CHECKING:``, under ``if __name__ == "__main__":``, and under conditions on
``sys.platform``, ``os.name`` or ``platform`` (both branches). Imports made by name at run time
(``importlib.import_module(name)``) are not seen.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from flowrig.errors import BadInput
from flowrig.project import flow_loader
from flowrig.project.build_rules import DEFAULT_REQUIREMENTS

# What a project imports when the flow file is loaded (flow_loader puts its directory
# on sys.path): a name found there as a file or a package is the project's own.
_OPTIONAL_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_PLATFORM_NAMES = frozenset({"platform", "os.name", "sys.platform"})


@dataclass(frozen=True)
class ImportSite:
    """One import statement's module, as it would be resolved at run time.

    Attributes
    ----------
    module
        Absolute dotted name (``scipy.linalg``).
    names
        For ``from module import a, b``: ``("a", "b")``; empty for ``import module``
        and for ``from module import *``.
    file
        The file that holds the statement.
    line
        Its line number.
    """

    module: str
    names: tuple[str, ...]
    file: Path
    line: int


def imports_of(path: Path, package: tuple[str, ...] = ()) -> list[ImportSite]:
    """Every import statement of a Python file that is not marked optional.

    Parameters
    ----------
    path
        The file.
    package
        The dotted package the file belongs to, as parts (for relative imports); a
        module loaded from a directory on ``sys.path`` belongs to none.

    Raises
    ------
    BadInput
        The file is not valid Python.
    """
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise BadInput(f"{path.name} line {exc.lineno}: not valid Python ({exc.msg}): fix the file") from None
    sites: list[ImportSite] = []
    _collect(tree, path, package, sites)
    return sites


def _collect(node: ast.AST, path: Path, package: tuple[str, ...], sites: list[ImportSite]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Try | ast.TryStar) and _catches_import_errors(child):
            # The body's imports are optional; what the handlers and else do is not.
            for handler in child.handlers:
                _collect(handler, path, package, sites)
            _collect(ast.Module(body=[*child.orelse, *child.finalbody], type_ignores=[]), path, package, sites)
            continue
        if isinstance(child, ast.If):
            optional = _optional_condition(child.test)
            if optional == "platform":
                continue  # which branch runs depends on the machine: neither is checked
            if optional:
                # TYPE_CHECKING, __main__: one branch never runs in a flow run, the other does.
                runs = child.orelse if optional == "body" else child.body
                _collect(ast.Module(body=runs, type_ignores=[]), path, package, sites)
                continue
        if isinstance(child, ast.Import):
            sites.extend(ImportSite(alias.name, (), path, child.lineno) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            module = _absolute(child.module, child.level, package)
            if module is not None:
                names = tuple(a.name for a in child.names if a.name != "*")
                sites.append(ImportSite(module, names, path, child.lineno))
        _collect(child, path, package, sites)


def _catches_import_errors(node: ast.Try | ast.TryStar) -> bool:
    for handler in node.handlers:
        if handler.type is None:
            return True
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(_dotted(kind).rpartition(".")[2] in _OPTIONAL_ERRORS for kind in kinds):
            return True
    return False


def _optional_condition(test: ast.expr) -> str:
    """``"body"`` when an ``if`` body never runs in a flow run (``"orelse"`` when its
    ``else`` never does), ``"platform"`` when which branch runs depends on the machine,
    ``""`` otherwise."""
    negated = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
    if negated:
        test = test.operand
    names = {_dotted(n) for n in ast.walk(test) if isinstance(n, ast.Name | ast.Attribute)}
    never_in_a_run = any(name.rpartition(".")[2] == "TYPE_CHECKING" for name in names)
    if "__name__" in names and any(isinstance(n, ast.Constant) and n.value == "__main__" for n in ast.walk(test)):
        never_in_a_run = True
        negated ^= isinstance(test, ast.Compare) and any(isinstance(op, ast.NotEq) for op in test.ops)
    if never_in_a_run:
        return "orelse" if negated else "body"
    if any(name in _PLATFORM_NAMES or name.startswith("platform.") for name in names):
        return "platform"
    return ""


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _absolute(module: str | None, level: int, package: tuple[str, ...]) -> str | None:
    if level == 0:
        return module
    if level > len(package):
        # A relative import in a top-level module, or beyond the top package: it fails
        # at run time with Python's own message, which loading the flow shows.
        return None
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, *(module.split(".") if module else [])])


def _local_file(module: str, roots: list[Path]) -> tuple[Path, tuple[str, ...]] | None:
    """The project file a module resolves to, with its package, or None."""
    parts = module.split(".")
    for root in roots:
        base = root.joinpath(*parts)
        if (base / "__init__.py").is_file():
            return base / "__init__.py", tuple(parts)
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), tuple(parts[:-1])
    return None


def _one_line(exc: BaseException) -> str:
    # Some libraries explain at length (numpy's ImportError); the last line is the cause.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def _import(site: ImportSite) -> BaseException | None:
    try:
        module = importlib.import_module(site.module)
    except Exception as exc:
        return exc
    for name in site.names:
        if hasattr(module, name):
            continue
        try:
            importlib.import_module(f"{site.module}.{name}")
        except ModuleNotFoundError:
            return ImportError(f"cannot import name {name!r} from {site.module!r}")
        except Exception as exc:
            return exc
    return None


def check_imports(root: Path, flow: str, sizing: str | None = None, requirements: str | None = None) -> list[str]:
    """Import what a project's flow needs; raise on the first import that fails.

    Parameters
    ----------
    root
        The project directory.
    flow
        ``path:function`` of the flow (``flowrig.toml``'s ``flow``).
    sizing
        ``path:function`` of the sizing hook, if any.
    requirements
        The project's requirements file name, for the message.

    Returns
    -------
    list[str]
        The modules imported, sorted.

    Raises
    ------
    BadInput
        One line: the file and line of the import, the module, the cause, the fix.
    """
    requirements = requirements or DEFAULT_REQUIREMENTS
    entries = [root / flow.rpartition(":")[0]]
    if sizing:
        entries.append(root / sizing.rpartition(":")[0])
    search = list(dict.fromkeys(p.parent.resolve() for p in entries))
    for directory in reversed(search):
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    queue: list[tuple[Path, tuple[str, ...]]] = [(p.resolve(), ()) for p in entries]
    scanned: set[Path] = set()
    imported: set[str] = set()
    while queue:
        path, package = queue.pop(0)
        if path in scanned or not path.is_file():
            continue
        scanned.add(path)
        for site in imports_of(path, package):
            local = _local_file(site.module, search)
            if local is not None:
                queue.append(local)
            for name in site.names:
                # `from package import module` of the project's own package.
                nested = _local_file(f"{site.module}.{name}", search)
                if nested is not None:
                    queue.append(nested)
            failure = _import(site)
            if failure is not None:
                where = os.path.relpath(site.file, root.resolve())
                fix = (
                    f"add the package that provides it to {requirements}"
                    if isinstance(failure, ModuleNotFoundError) and local is None
                    else "fix the module, or the package versions in " + requirements
                )
                raise BadInput(
                    f"{where} line {site.line} imports {site.module}, which the image cannot import "
                    f"({_one_line(failure)}): {fix}"
                )
            imported.add(site.module)
    # Then as a run loads them: the flow (whatever its module does when imported) and the hook.
    try:
        flow_loader.load_flow(entries[0], flow.rpartition(":")[2])
        if sizing:
            flow_loader.load_function(entries[1], sizing.rpartition(":")[2], "sizing hook")
    except BadInput as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise BadInput(lines[-1] if len(lines) == 1 else f"{lines[0]} {lines[-1]}") from None
    return sorted(imported)
