"""The venv's two layers, on real files: what the project's install adds or changes goes
into its own tree and nothing else does; the second prune leaves the first layer's files
(their bytecode with them) as they are."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flowrig.builder import buildsteps, buildsteps_layers


def write(path: Path, text: str = "x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def venv_with_flowrigs_dependencies(root: Path) -> Path:
    venv = root / "opt" / "flowrig" / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    write(site / "prefect" / "__init__.py", "# prefect")
    write(site / "prefect" / "__pycache__" / "__init__.cpython-311.pyc", "bytecode")
    write(site / "google" / "__init__.py", "")
    write(venv / "bin" / "prefect", "#!/bin/sh\n", 0o755)
    (site / "prefect" / "alias.py").symlink_to("__init__.py")
    return venv


def test_split_copies_only_what_the_project_install_added_or_changed(tmp_path: Path):
    venv = venv_with_flowrigs_dependencies(tmp_path / "image")
    site = venv / "lib" / "python3.11" / "site-packages"
    before = buildsteps_layers.snapshot(venv)
    write(site / "scipy" / "__init__.py", "# scipy")
    write(site / "scipy" / "linalg" / "_flapack.so", "elf", 0o755)
    write(site / "google" / "protobuf" / "__init__.py", "")  # into a folder of the first layer
    write(venv / "bin" / "f2py", "#!/bin/sh\n", 0o755)
    (site / "scipy" / "alias.py").symlink_to("__init__.py")
    os.utime(site / "google" / "__init__.py", ns=(1, 1))  # touched by the second install
    out = tmp_path / "layers"

    files, size, gone = buildsteps_layers.split(venv, before, out)

    copied = out / venv.resolve().relative_to("/")
    listed = sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*") if not p.is_dir())
    assert listed == ["bin/f2py", "lib/python3.11/site-packages/google/__init__.py",
                      "lib/python3.11/site-packages/google/protobuf/__init__.py",
                      "lib/python3.11/site-packages/scipy/__init__.py",
                      "lib/python3.11/site-packages/scipy/alias.py",
                      "lib/python3.11/site-packages/scipy/linalg/_flapack.so"]
    assert files == 6 and gone == []
    assert os.readlink(copied / "lib/python3.11/site-packages/scipy/alias.py") == "__init__.py"
    assert stat.S_IMODE((copied / "bin" / "f2py").stat().st_mode) == 0o755
    assert (copied / "lib/python3.11/site-packages/scipy/__init__.py").read_text() == "# scipy"
    assert (copied / "lib/python3.11/site-packages/scipy/__init__.py").stat().st_mtime_ns == \
        (site / "scipy" / "__init__.py").stat().st_mtime_ns
    assert size == sum(len(t) for t in ("", "# scipy", "elf", "", "#!/bin/sh\n"))


def test_a_project_without_requirements_gets_an_empty_layer_and_a_gone_path_is_reported(tmp_path: Path):
    venv = venv_with_flowrigs_dependencies(tmp_path / "image")
    before = buildsteps_layers.snapshot(venv)
    out = tmp_path / "layers"
    assert buildsteps_layers.split(venv, before, out) == (0, 0, [])
    assert [p for p in out.rglob("*") if not p.is_dir()] == []
    (venv / "bin" / "prefect").unlink()
    assert buildsteps_layers.split(venv, before, tmp_path / "again")[2] == ["bin/prefect"]


def test_the_second_prune_leaves_the_first_layers_files_and_bytecode_alone(tmp_path: Path):
    venv = venv_with_flowrigs_dependencies(tmp_path / "image")
    site = venv / "lib" / "python3.11" / "site-packages"
    snapshot = tmp_path / "deps.json"
    buildsteps.main(["snapshot", str(venv), "--out", str(snapshot)])
    write(site / "scipy" / "__init__.py")
    write(site / "scipy" / "__pycache__" / "__init__.cpython-311.pyc")
    write(site / "scipy" / "tests" / "test_linalg.py")
    write(site / "scipy" / "linalg.pyi")

    buildsteps.main(["prune", str(venv), "--strip", "off", "--keep", str(snapshot)])

    assert (site / "prefect" / "__pycache__" / "__init__.cpython-311.pyc").read_text() == "bytecode"
    assert (site / "scipy" / "__init__.py").is_file()
    for gone in ("scipy/__pycache__", "scipy/tests", "scipy/linalg.pyi"):
        assert not (site / gone).exists(), gone
