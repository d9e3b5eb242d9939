"""Import a project's flow file and pick functions out of it.

The module is registered with cloudpickle *by value*: Dask workers that are not in
the image (a LocalCluster on the host) then receive the task functions themselves,
instead of a reference to a module they cannot import.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from flowrig.errors import BadInput

_loaded: dict[Path, ModuleType] = {}


def _module_name(path: Path) -> str:
    # A stable, importable, collision-free name: two projects may both have flow.py.
    stem = re.sub(r"\W", "_", path.stem)
    return f"flowrig_project_{stem}_{abs(hash(str(path))) & 0xFFFFFF:06x}"


def load_module(path: Path) -> ModuleType:
    """Import the Python file at ``path`` once per process.

    Raises
    ------
    BadInput
        When the file is missing or raises while being imported; the message holds the
        exception and the line of the flow file where it happened.
    """
    path = path.resolve()
    if path in _loaded:
        return _loaded[path]
    if not path.is_file():
        raise BadInput(f"flow file {str(path)!r} does not exist")
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Sibling modules of the flow file import as they would when run as a script.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        where = _last_frame_in(exc, path)
        raise BadInput(
            f"importing {path.name} failed{where}: {type(exc).__name__}: {exc}"
        ) from None
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    _loaded[path] = module
    return module


def _last_frame_in(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f" at line {frames[-1].lineno}" if frames else ""


def load_function(path: Path, name: str, what: str) -> Callable[..., Any]:
    """Return the callable ``name`` from the file at ``path``.

    Parameters
    ----------
    what
        How the error message calls it ("flow", "sizing hook").
    """
    module = load_module(path)
    obj = getattr(module, name, None)
    if obj is None:
        raise BadInput(f"{path.name} has no {what} named {name!r}: check the name in flowrig.toml")
    if not callable(obj):
        raise BadInput(f"{path.name}:{name} is not a function, so it cannot be the {what}")
    return obj


def load_flow(path: Path, name: str) -> Any:
    """Return the Prefect flow ``name`` from the file at ``path``.

    Raises
    ------
    BadInput
        When the function is missing or is not decorated with ``@flow``.
    """
    from prefect import Flow

    obj = load_function(path, name, "flow")
    if not isinstance(obj, Flow):
        raise BadInput(
            f"{path.name}:{name} is not a Prefect flow: decorate it with @prefect.flow"
        )
    return obj
