"""The in-build steps that decide what a build keeps and says: stripping, pip's failures,
bytecode (flowrig/builder/buildsteps.py, run as a script inside the build).

Cases that need none of these are in tests/unit/test_buildsteps.py.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from flowrig.builder import buildsteps, buildsteps_prune
from tests.unit.test_buildsteps import MISSPELT, UNREACHABLE, plain_extension

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "flowrig" / "builder" / "buildsteps.py"
SITE = Path(numpy.__file__).resolve().parents[1]
STRIP = shutil.which("strip")
needs_strip = pytest.mark.skipif(STRIP is None, reason="binutils' strip is not installed")


def vendored_openblas() -> Path:
    """numpy's OpenBLAS, vendored and patched by auditwheel: the library strip breaks."""
    (library,) = (SITE / "numpy.libs").glob("libscipy_openblas*.so")
    return library


def stripped(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"stripped-{path.name}"
    subprocess.run([STRIP, "--strip-unneeded", "-o", str(out), str(path)], check=True)
    return out


# --- strip, proven harmless ---------------------------------------------------------------------


@needs_strip
def test_strip_breaks_numpys_openblas_and_the_check_sees_it(tmp_path: Path):
    original = vendored_openblas()
    broken = stripped(original, tmp_path)
    # What the issue saw in the image: the loader refuses the stripped copy.
    with pytest.raises(OSError, match="not page-aligned"):
        ctypes.CDLL(str(broken))
    assert not buildsteps_prune.loads_like(original.read_bytes(), broken.read_bytes())
    assert buildsteps_prune.loads_like(original.read_bytes(), original.read_bytes())


@needs_strip
def test_a_strip_that_leaves_the_loaded_segments_alone_is_accepted(tmp_path: Path):
    original = plain_extension()
    smaller = stripped(original, tmp_path)
    assert smaller.stat().st_size < original.stat().st_size
    assert buildsteps_prune.loads_like(original.read_bytes(), smaller.read_bytes())
    ctypes.CDLL(str(smaller))  # and it does load


@needs_strip
def test_strip_step_skips_vendored_libraries_and_keeps_what_it_cannot_prove(tmp_path: Path, capsys):
    site = tmp_path / "site-packages"
    (site / "numpy.libs").mkdir(parents=True)
    (site / "pkg").mkdir()
    (site / "other").mkdir()
    vendored = site / "numpy.libs" / vendored_openblas().name
    shutil.copy2(vendored_openblas(), vendored)
    plain = site / "pkg" / plain_extension().name
    shutil.copy2(plain_extension(), plain)
    # The same patched library outside a *.libs folder: only the proof keeps it whole.
    patched = site / "other" / "libpatched.so"
    shutil.copy2(vendored_openblas(), patched)
    (site / "pkg" / "libc.so").write_text("/* GNU ld script */\n")
    before = {p: p.read_bytes() for p in (vendored, plain, patched)}

    counts = buildsteps_prune.strip_shared_objects(site, STRIP)

    assert counts["vendored"] == 1 and counts["changed"] == 1 and counts["stripped"] == 1
    assert vendored.read_bytes() == before[vendored]
    assert patched.read_bytes() == before[patched]
    assert len(plain.read_bytes()) < len(before[plain])
    assert counts["saved"] == len(before[plain]) - len(plain.read_bytes())
    assert os.stat(plain).st_mode == os.stat(plain_extension()).st_mode
    assert not list(site.rglob(".*flowrig-strip"))
    ctypes.CDLL(str(patched))
    ctypes.CDLL(str(plain))
    assert "other/libpatched.so" in capsys.readouterr().out


def test_strip_off_strips_nothing(tmp_path: Path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    shutil.copy2(plain_extension(), site / "x.so")
    done = subprocess.run([sys.executable, str(SCRIPT), "prune", str(tmp_path / "venv"), "--strip", "off"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "STRIP=off" in done.stdout
    assert (site / "x.so").read_bytes() == plain_extension().read_bytes()


# --- pip's failures, told in one line ---------------------------------------------------------------

# pip 23's own words (the base's pip), as it printed them against the index here.


def fake_pip(tmp_path: Path, output: list[str], code: int) -> Path:
    pip = tmp_path / "pip"
    pip.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(output) + f"\nEOF\nexit {code}\n")
    pip.chmod(0o755)
    return pip


@pytest.mark.parametrize(
    ("source", "output", "code", "prefix"),
    [
        ("requirements.txt", MISSPELT, 2, buildsteps.ERROR_PREFIX),
        ("requirements.txt", UNREACHABLE, 3, buildsteps.FAILURE_PREFIX),
        (None, MISSPELT, 3, buildsteps.FAILURE_PREFIX),  # flowrig's own requirements: not the project's fault
    ],
    ids=["project", "index", "flowrig"],
)
def test_install_step_exits_with_one_line_the_builder_reads(tmp_path: Path, source, output, code, prefix):
    requirements = tmp_path / "project.txt"
    requirements.write_text((f"{buildsteps.SOURCE_MARK}{source}\n" if source else "") + "numpyy\n")
    pip = fake_pip(tmp_path, output, 1)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "install", "--pip", str(pip), "--wheels", str(tmp_path / "w"),
         str(requirements)],
        capture_output=True, text=True,
    )
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(prefix), done.stderr
    assert output[-1] in done.stdout  # pip's own output still reaches the log


# --- bytecode: absent packages are no error; a broken one fails the build ------------------------


def compile_step(tmp_path: Path, *modules: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "lib")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "compile", "--python", sys.executable, "--root", str(tmp_path / "lib"),
         *modules],
        capture_output=True, text=True, env=env,
    )


def test_compile_leaves_out_packages_the_image_does_not_install_without_a_word_of_error(tmp_path: Path):
    (tmp_path / "lib" / "used").mkdir(parents=True)
    (tmp_path / "lib" / "used" / "__init__.py").write_text("X = 1\n")
    done = compile_step(tmp_path, "used", "flowrig_absent_package.aws")
    assert done.returncode == 0, done.stderr
    assert "not in this image, so not compiled: flowrig_absent_package.aws" in done.stdout
    assert not [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()
                or "fail" in line.lower()]


def test_compile_fails_the_build_when_an_installed_module_does_not_import(tmp_path: Path):
    (tmp_path / "lib" / "broken").mkdir(parents=True)
    (tmp_path / "lib" / "broken" / "__init__.py").write_text("raise ImportError('libfoo.so: cannot open\\n\\nsecond')\n")
    done = compile_step(tmp_path, "broken")
    assert done.returncode == 3
    assert done.stderr.startswith(buildsteps.FAILURE_PREFIX) and done.stderr.count("\n") == 1
    assert "broken: ImportError: second" in done.stderr


def test_the_projects_imports_are_compiled_softly_and_a_lower_layers_bytecode_is_left_alone(tmp_path: Path):
    """The project layer's compile: what the project's code imports gets bytecode; a name
    `from package import name` took from a package and a module that does not import at
    build time are passed over (the image's import check judges those); a module compiled
    by an earlier step keeps its file, so no second copy reaches the project's layer."""
    lib = tmp_path / "lib"
    for name, text in {"stack/__init__.py": "from stack import core\n", "stack/core.py": "Y = 2\n",
                       "lower/__init__.py": "Z = 3\n", "needs_gpu/__init__.py": "raise RuntimeError('no gpu')\n",
                       "project/flow.py": "import stack.core\nfrom stack import Y, core\nimport needs_gpu\n"
                                          "from lower import Z\nimport local_helpers\n"}.items():
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_text(text)
    lower = importlib.util.cache_from_source(str(lib / "lower" / "__init__.py"))
    py_compile.compile(str(lib / "lower" / "__init__.py"), cfile=lower)
    before = Path(lower).stat().st_mtime_ns
    modules = tmp_path / "imports.txt"
    done = subprocess.run([sys.executable, str(SCRIPT), "imports", "--project", str(lib / "project"),
                           "--out", str(modules)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert modules.read_text().split() == ["local_helpers", "lower", "lower.Z", "needs_gpu", "stack", "stack.Y",
                                           "stack.core"]

    done = subprocess.run(
        [sys.executable, str(SCRIPT), "compile", "--python", sys.executable, "--root", str(lib), "--soft",
         "--modules-from", str(modules)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(lib)},
    )

    assert done.returncode == 0, done.stderr
    (passed_over,) = [line for line in done.stdout.splitlines() if line.startswith("not compiled")]
    assert passed_over == "not compiled, since they do not import here: needs_gpu: RuntimeError: no gpu"
    for module in ("stack/__init__.py", "stack/core.py"):
        assert Path(importlib.util.cache_from_source(str(lib / module))).is_file(), module
    assert Path(lower).stat().st_mtime_ns == before
    assert not Path(importlib.util.cache_from_source(str(lib / "needs_gpu" / "__init__.py"))).exists()
