"""What a project imports, read from its source: optional imports, relative imports inside its
packages, files that are not Python. Runs that need them: tests/e2e/local/test_project_imports.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowrig.errors import BadInput
from flowrig.project.imports import imports_of


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def check(project: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, in a process of its own (imports stay out of this one)."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if home is not None:
        env["HOME"] = str(home)
    code = "from flowrig.entrypoint import main; main()"
    return subprocess.run([sys.executable, "-c", code, "check-imports", str(project)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=project)


FLOW_HEADER = "from prefect import flow, task\n"


def test_imports_anywhere_count_and_optional_ones_do_not(tmp_path: Path):
    write(tmp_path, {"flow.py": """\
        import os, json as j
        from typing import TYPE_CHECKING
        from collections import abc, OrderedDict
        try:
            import ujson
        except ImportError:
            import simplejson
        try:
            import orjson
        except (ValueError, ModuleNotFoundError):
            pass
        if TYPE_CHECKING:
            import pandas
        if __name__ == "__main__":
            import matplotlib
        import sys
        if sys.platform == "win32":
            import winreg
        else:
            import fcntl

        def task_body():
            import sklearn.linear_model
            from scipy import linalg

        class K:
            def method(self):
                from . import sibling
    """})
    sites = {(s.module, s.names, s.line) for s in imports_of(tmp_path / "flow.py")}
    assert sites == {
        ("os", (), 1), ("json", (), 1), ("typing", ("TYPE_CHECKING",), 2),
        ("collections", ("abc", "OrderedDict"), 3), ("simplejson", (), 7), ("sys", (), 16),
        ("sklearn.linear_model", (), 23), ("scipy", ("linalg",), 24),
    }


def test_what_runs_after_an_optional_import_is_not_optional(tmp_path: Path):
    write(tmp_path, {"flow.py": """\
        try:
            import fast_json
        except ImportError:
            fast_json = None
        else:
            import needed_when_fast
        finally:
            import needed_always
        if not TYPE_CHECKING:
            import needed_at_run_time
        else:
            import only_for_the_type_checker
        if __name__ != "__main__":
            import needed_when_imported
    """})
    assert [s.module for s in imports_of(tmp_path / "flow.py")] == [
        "needed_when_fast", "needed_always", "needed_at_run_time", "needed_when_imported",
    ]


def test_relative_imports_resolve_inside_the_projects_packages(tmp_path: Path):
    write(tmp_path, {"pkg/sub/mod.py": "from . import a\nfrom ..b import c\nfrom .. import d\n"})
    sites = [(s.module, s.names) for s in imports_of(tmp_path / "pkg/sub/mod.py", ("pkg", "sub"))]
    assert sites == [("pkg.sub", ("a",)), ("pkg.b", ("c",)), ("pkg", ("d",))]


def test_a_file_that_is_not_python_is_bad_input(tmp_path: Path):
    write(tmp_path, {"flow.py": "def broken(:\n"})
    with pytest.raises(BadInput, match="flow.py line 1: not valid Python"):
        imports_of(tmp_path / "flow.py")


def project(tmp_path: Path, flow_body: str, **extra: str) -> Path:
    files = {
        "flowrig.toml": 'flow = "flow.py:main"\nrequirements = "requirements.txt"\n',
        "requirements.txt": "\n",
        "flow.py": FLOW_HEADER + textwrap.dedent(flow_body),
        **extra,
    }
    return write(tmp_path / "project", files)
