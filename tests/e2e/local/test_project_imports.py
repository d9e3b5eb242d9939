"""The import check an image build ends with (``flowrig-entrypoint check-imports``):
what a project's code imports, and one line naming what cannot be imported.

Cases that need none of these are in tests/unit/test_project_imports.py.
"""

from __future__ import annotations

from pathlib import Path

from flowrig.builder.buildsteps import ERROR_PREFIX
from tests.unit.test_project_imports import check, project

REPO = Path(__file__).resolve().parents[3]


def test_a_module_a_task_imports_that_is_missing_fails_with_one_line_naming_it(tmp_path: Path):
    root = project(tmp_path, """\
        @task
        def fit(x):
            import flowrig_no_such_module.linear
            return x

        @flow
        def main():
            return fit(1)
    """)
    done = check(root)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(ERROR_PREFIX), done.stderr
    line = done.stderr.removeprefix(ERROR_PREFIX)
    assert line.startswith("flow.py line 4 imports flowrig_no_such_module.linear, which the image cannot import")
    assert "No module named 'flowrig_no_such_module'" in line and "add the package that provides it to requirements.txt" in line


def test_the_projects_own_modules_are_followed(tmp_path: Path):
    root = project(
        tmp_path,
        """\
        from helpers import scale

        @flow
        def main():
            return scale(2)
        """,
        **{"helpers/__init__.py": "from .maths import scale\n",
           "helpers/maths.py": "def scale(x):\n    from flowrig_missing_lib import fast\n    return fast(x)\n"},
    )
    done = check(root)
    assert done.returncode == 2
    assert "helpers/maths.py line 2 imports flowrig_missing_lib" in done.stderr, done.stderr


def test_a_name_the_module_does_not_have_is_named(tmp_path: Path):
    root = project(tmp_path, """\
        @task
        def t():
            from json import no_such_function
        @flow
        def main():
            return t()
    """)
    done = check(root)
    assert done.returncode == 2
    assert "imports json, which the image cannot import (ImportError: cannot import name 'no_such_function' from 'json')" \
        in done.stderr, done.stderr


def test_a_flow_module_that_raises_when_imported_fails_with_one_line(tmp_path: Path):
    root = project(tmp_path, """\
        raise ImportError("libopenblas.so: cannot open\\n\\nOriginal error was: ELF load command address/offset not page-aligned")

        @flow
        def main():
            return 1
    """)
    done = check(root)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "flow.py failed at line 2" in done.stderr and "not page-aligned" in done.stderr


def test_a_flow_that_is_not_there_is_named(tmp_path: Path):
    root = project(tmp_path, "@flow\ndef other():\n    return 1\n")
    done = check(root)
    assert done.returncode == 2 and "flow.py has no flow named 'main'" in done.stderr, done.stderr


def test_a_project_that_imports_fine_passes_and_leaves_nothing_behind(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    root = project(
        tmp_path,
        """\
        import json
        try:
            import flowrig_optional_speedup
        except ImportError:
            flowrig_optional_speedup = None

        @task
        def t(x):
            from collections import OrderedDict
            return OrderedDict(x=x)

        @flow
        def main():
            return t(1)
        """,
    )
    done = check(root, home)
    assert done.returncode == 0, done.stderr
    assert "imports checked as uid" in done.stdout and "flow.py:main" in done.stdout
    assert list(home.iterdir()) == []
    assert sorted(p.name for p in root.iterdir()) == ["flow.py", "flowrig.toml", "requirements.txt"]


def test_the_seed_example_passes():
    done = check(REPO / "examples" / "seed")
    assert done.returncode == 0, done.stderr
