"""What a project's flow is, read from its source file without importing it.

``flowrig deploy`` runs where the flow's own dependencies are not installed (a CI job
that builds and pushes the image), and the image's manifest records the same facts at
build time: the flow's Prefect name, its entry point, description, version and the
OpenAPI schema of its parameters, as Prefect's UI and its parameter checks use it.

Everything comes from the file's syntax tree; no line of the project runs, and no
module it imports is imported. Prefect's own
``prefect.utilities.callables.parameter_schema_from_entrypoint`` reads the signature
from source too, but it imports every module the file imports that happens to be
installed (the project's own helper modules included) and executes the file's
top-level classes, functions and assignments. Here an annotation is evaluated only when
it is made of built-in types and names imported from :data:`TYPE_MODULES` (typing,
datetime, pydantic and the like, imported only when the file imports them), and a
default only when it is a literal (or a name assigned a literal at the top of the
file). Whatever else an annotation names (a class of the project, a pandas type)
becomes "any value" in the schema, as Prefect does for types it cannot describe; the
run in the image still validates parameters against the real signature.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.project.models import Project

#: Top-level packages whose names an annotation may use. Importing them runs nothing of
#: the project's and has no side effect; they are imported only when the flow file does.
TYPE_MODULES = frozenset({
    "typing", "typing_extensions", "collections", "datetime", "decimal", "uuid", "pathlib",
    "enum", "ipaddress", "pydantic", "annotated_types",
})
#: What an annotation may call (``Field(gt=0)``, ``conint(ge=1)``, ``Gt(0)``): helpers
#: that build types and do nothing else. Named one by one: those packages also hold
#: functions that read files (``pydantic.v1.parse_file_as``).
_TYPE_HELPERS = {
    "pydantic": ("Field", "conint", "confloat", "constr", "conlist", "conset", "confrozenset", "condecimal",
                 "condate", "conbytes", "StringConstraints"),
    "annotated_types": ("Gt", "Ge", "Lt", "Le", "MultipleOf", "MinLen", "MaxLen", "Len", "Interval"),
    "typing": ("NewType",),
    "typing_extensions": ("NewType",),
}


def _type_helpers() -> list[Any]:
    found = []
    for module_name, names in _TYPE_HELPERS.items():
        module = _import(module_name)
        found.extend(getattr(module, name) for name in names if module is not None and hasattr(module, name))
    return found
#: Built-in names an annotation may use.
_BUILTIN_TYPES = {
    name: getattr(__import__("builtins"), name)
    for name in ("int", "float", "complex", "str", "bool", "bytes", "bytearray", "list", "dict",
                 "tuple", "set", "frozenset", "type", "object")
}
#: Syntax an annotation may consist of: names, dotted names, subscripts, ``X | Y``,
#: literals and calls (the callee must come from :data:`TYPE_MODULES`, e.g. ``Field``).
_ANNOTATION_NODES = (
    ast.Expression, ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Constant,
    ast.BinOp, ast.BitOr, ast.Load, ast.Call, ast.keyword, ast.UnaryOp, ast.USub, ast.Slice,
)
#: ``@flow(...)`` keywords read from the source (literals only).
_FLOW_TEXT_ARGUMENTS = ("name", "description", "version")


@dataclass(frozen=True)
class FlowFacts:
    """The facts a deployment needs about a flow.

    Parameters
    ----------
    name
        The flow's Prefect name: ``@flow(name=...)``, else the function's name with
        ``_`` turned into ``-`` (Prefect's rule).
    entrypoint
        ``path:function`` relative to the project's root (``flowrig.toml``'s ``flow``).
    description
        ``@flow(description=...)``, else the function's docstring (Prefect's rule).
    version
        ``@flow(version=...)`` when given as a literal, else (Prefect's rule) the hash of
        the flow file's bytes, so that it changes with the file.
    parameter_schema
        The OpenAPI schema of the flow's parameters (Prefect's ``ParameterSchema``).
    """

    name: str
    entrypoint: str
    description: str | None = None
    version: str | None = None
    parameter_schema: Mapping[str, Any] = field(default_factory=dict)

    def for_manifest(self) -> dict[str, Any]:
        """What an image's manifest records: what a deployment must agree with (name,
        entry point, parameters). Not the description or version, which change with
        any edit of the file: editing only the flow's body then leaves the manifest, and
        the image build's cache above the project, as they were."""
        return {"name": self.name, "entrypoint": self.entrypoint, "parameter_schema": dict(self.parameter_schema)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FlowFacts":
        """Facts from :meth:`for_manifest`'s data.

        Raises
        ------
        ValueError
            When ``data`` lacks the name or entry point or holds other types.
        """
        name, entrypoint = data.get("name"), data.get("entrypoint")
        schema = data.get("parameter_schema") or {}
        if not (isinstance(name, str) and isinstance(entrypoint, str) and isinstance(schema, dict)):
            raise ValueError("flow facts need a name and an entry point")
        description, version = data.get("description"), data.get("version")
        return cls(
            name=name,
            entrypoint=entrypoint,
            description=description if isinstance(description, str) else None,
            version=version if isinstance(version, str) else None,
            parameter_schema=schema,
        )

    @property
    def parameter_names(self) -> list[str]:
        """The flow's parameters, in signature order."""
        properties = self.parameter_schema.get("properties") or {}
        return sorted(properties, key=lambda name: properties[name].get("position", 0))


def read_flow_facts(project: "Project") -> FlowFacts:
    """Read the facts of ``project``'s flow from its source file.

    Raises
    ------
    BadInput
        When the file does not parse, has no top-level function of that name, the
        function is not a ``@flow``, or the flow's name is not a literal.
    """
    return flow_facts_from_source(
        project.flow_path.read_bytes(), project.flow_function, project.flow, filename=project.flow_path.name,
    )


def flow_facts_from_source(
    source: str | bytes, function: str, entrypoint: str, *, filename: str = "flow.py"
) -> FlowFacts:
    """:func:`read_flow_facts` for the content of a flow file."""
    from prefect.utilities.hashing import stable_hash

    data = source if isinstance(source, bytes) else source.encode("utf-8")
    try:
        tree = ast.parse(data, filename=filename)
    except SyntaxError as exc:
        raise BadInput(f"{filename} does not parse (line {exc.lineno}: {exc.msg}): fix the flow file") from None
    module = _Module(tree)
    func = module.functions.get(function)
    if func is None:
        raise BadInput(
            f"{filename} has no top-level function {function!r}: fix 'flow' in flowrig.toml "
            "(the flow must be a function decorated with @flow)"
        )
    decorator = module.flow_decorator(func)
    if decorator is None:
        raise BadInput(
            f"{function} in {filename} is not decorated with @flow: decorate it, or name the flow in flowrig.toml"
        )
    arguments = module.flow_arguments(decorator, filename)
    name = arguments.get("name") or func.name.replace("_", "-")
    docstring = ast.get_docstring(func, clean=True)
    return FlowFacts(
        name=name,
        entrypoint=entrypoint,
        description=arguments.get("description") or docstring,
        version=arguments.get("version") or stable_hash(data),
        parameter_schema=module.parameter_schema(func, docstring),
    )


class _UnknownDefault:
    """A default the source gives as an expression flowrig does not evaluate."""


_UNKNOWN = _UnknownDefault()


class _Module:
    """One parsed flow file: its functions, literal constants and type imports."""

    def __init__(self, tree: ast.Module) -> None:
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.constants: dict[str, Any] = {}
        #: Local names of ``prefect.flow`` and of the ``prefect`` module.
        self.flow_names = {"flow"}
        self.prefect_names = {"prefect"}
        self.namespace: dict[str, Any] = dict(_BUILTIN_TYPES)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                self._take_import(node)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    self.constants[node.targets[0].id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    self.constants.pop(node.targets[0].id, None)

    # --- imports -----------------------------------------------------------------------
    def _take_import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "prefect":
                    self.prefect_names.add(alias.asname or "prefect")
                if alias.name.split(".")[0] in TYPE_MODULES:
                    module = _import(alias.name)
                    if module is not None:
                        # ``import a.b`` binds ``a``; ``import a.b as c`` binds ``c`` to ``a.b``.
                        bound = module if alias.asname else _import(alias.name.split(".")[0])
                        self.namespace[alias.asname or alias.name.split(".")[0]] = bound
            return
        if node.level or not node.module:
            return  # relative imports name the project's own modules
        if node.module == "prefect":
            for alias in node.names:
                if alias.name == "flow":
                    self.flow_names.add(alias.asname or "flow")
        if node.module.split(".")[0] not in TYPE_MODULES:
            return
        module = _import(node.module)
        if module is None:
            return
        for alias in node.names:
            if alias.name == "*":
                continue
            value = getattr(module, alias.name, None)
            if value is None:
                value = _import(f"{node.module}.{alias.name}")
            if value is not None:
                self.namespace[alias.asname or alias.name] = value

    # --- @flow --------------------------------------------------------------------------
    def flow_decorator(self, func: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.expr | None:
        for decorator in func.decorator_list:
            callee = decorator.func if isinstance(decorator, ast.Call) else decorator
            if isinstance(callee, ast.Name) and callee.id in self.flow_names:
                return decorator
            if (
                isinstance(callee, ast.Attribute)
                and callee.attr == "flow"
                and isinstance(callee.value, ast.Name)
                and callee.value.id in self.prefect_names
            ):
                return decorator
        return None

    def flow_arguments(self, decorator: ast.expr, filename: str) -> dict[str, str]:
        found: dict[str, str] = {}
        if not isinstance(decorator, ast.Call):
            return found
        for keyword in decorator.keywords:
            if keyword.arg not in _FLOW_TEXT_ARGUMENTS:
                continue
            value = self._literal(keyword.value)
            if value is None:
                continue  # @flow(version=None) and the like: Prefect's default
            if isinstance(value, _UnknownDefault) or not isinstance(value, (str, int, float)):
                if keyword.arg == "name":
                    raise BadInput(
                        f"the flow's name in {filename} (line {keyword.value.lineno}) is not a literal, and flowrig "
                        'reads it without importing the flow: write @flow(name="...") with the name itself'
                    )
                continue
            found[keyword.arg] = str(value)
        return found

    def _literal(self, node: ast.expr) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        if isinstance(node, ast.Name) and node.id in self.constants:
            return self.constants[node.id]
        return _UNKNOWN

    # --- parameters ----------------------------------------------------------------------
    def annotation(self, node: ast.expr | None) -> Any:
        """The annotation's value, or ``inspect.Parameter.empty`` (any value)."""
        if node is None:
            return inspect.Parameter.empty
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return inspect.Parameter.empty
        if not self._safe(node):
            return inspect.Parameter.empty
        try:
            code = compile(ast.Expression(body=node), "<annotation>", "eval")
            return eval(code, {"__builtins__": {}}, dict(self.namespace))  # noqa: S307 - checked by _safe
        except Exception:
            return inspect.Parameter.empty

    def _safe(self, node: ast.expr) -> bool:
        """Whether evaluating ``node`` can only look names up and call type helpers."""
        for child in ast.walk(node):
            if not isinstance(child, _ANNOTATION_NODES):
                return False
            if isinstance(child, ast.Attribute) and child.attr.startswith("_"):
                return False
            if isinstance(child, ast.Name) and (child.id.startswith("_") or child.id not in self.namespace):
                return False
            if isinstance(child, ast.Call) and not self._type_helper(child.func):
                return False
            if isinstance(child, ast.BinOp) and not isinstance(child.op, ast.BitOr):
                return False
        return True

    def _type_helper(self, func: ast.expr) -> bool:
        """A callee of :data:`_TYPE_HELPERS` (``Field``, ``conint``), reached by plain
        names: nothing else may be called while an annotation is evaluated."""
        path: list[str] = []
        while isinstance(func, ast.Attribute):
            path.insert(0, func.attr)
            func = func.value
        if not isinstance(func, ast.Name) or func.id not in self.namespace:
            return False
        value = self.namespace[func.id]
        for name in path:
            value = getattr(value, name, None)
        return any(value is helper for helper in _type_helpers())

    def parameter_schema(self, func: ast.FunctionDef | ast.AsyncFunctionDef, docstring: str | None) -> dict[str, Any]:
        from prefect.utilities.callables import generate_parameter_schema, parameter_docstrings

        args = func.args
        positional = [*args.posonlyargs, *args.args]
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        kinds = [inspect.Parameter.POSITIONAL_ONLY] * len(args.posonlyargs) + [
            inspect.Parameter.POSITIONAL_OR_KEYWORD
        ] * len(args.args)
        entries: list[tuple[ast.arg, Any, ast.expr | None]] = list(zip(positional, kinds, defaults))
        if args.vararg is not None:
            entries.append((args.vararg, inspect.Parameter.VAR_POSITIONAL, None))
        entries.extend(zip(args.kwonlyargs, [inspect.Parameter.KEYWORD_ONLY] * len(args.kwonlyargs), args.kw_defaults))
        if args.kwarg is not None:
            entries.append((args.kwarg, inspect.Parameter.VAR_KEYWORD, None))
        unknown: list[str] = []
        parameters = []
        for arg, kind, default_node in entries:
            default: Any = inspect.Parameter.empty
            if default_node is not None:
                default = self._literal(default_node)
                if isinstance(default, _UnknownDefault):
                    # Optional, with a default only the running flow knows.
                    unknown.append(arg.arg)
                    default = None
            annotation = self.annotation(arg.annotation)
            parameters.append(inspect.Parameter(arg.arg, kind, default=default, annotation=annotation))
        schema = generate_parameter_schema(inspect.Signature(parameters), parameter_docstrings(docstring))
        document = schema.model_dump_for_openapi()
        for name in unknown:
            document.get("properties", {}).get(name, {}).pop("default", None)
        return document


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def manifest_flow_facts(manifest: Mapping[str, Any] | None) -> FlowFacts | None:
    """The ``flow`` facts an image's manifest records, when it records them."""
    data = (manifest or {}).get("flow")
    if not isinstance(data, Mapping):
        return None
    try:
        return FlowFacts.from_dict(data)
    except ValueError:
        return None


def project_entrypoint_of(manifest: Mapping[str, Any] | None) -> str | None:
    """``flow`` of the ``flowrig.toml`` an image's manifest records (every image has it)."""
    config = ((manifest or {}).get("project") or {}).get("config") or {}
    flow = config.get("flow") if isinstance(config, Mapping) else None
    return flow if isinstance(flow, str) else None


def same_entrypoint(recorded: str | None, own: str) -> bool:
    """Whether a deployment's ``entrypoint`` names the flow ``own`` (``path:function``).

    ``prefect deploy`` records paths relative to where it ran (``flows/etl.py:main``
    from a repository's root), a worker may see an absolute path in the image, and
    flowrig's own are relative to the project: the function must be the same, and one
    path must end with the other's parts.
    """
    if not recorded:
        return True
    path, _, function = recorded.rpartition(":")
    own_path, _, own_function = own.rpartition(":")
    if function != own_function:
        return False
    parts = [p for p in Path(path).parts if p not in (".", "/")]
    own_parts = [p for p in Path(own_path).parts if p not in (".", "/")]
    shorter, longer = sorted((parts, own_parts), key=len)
    return bool(shorter) and longer[len(longer) - len(shorter):] == shorter
