"""Steps the Dockerfile runs inside the build, with the base image's ``python3``.

This file runs as a plain script (``python3 buildsteps.py STEP ...``) before flowrig or
any dependency is installed, so it uses the standard library only and never imports
flowrig. It needs Python 3.11 or newer (``tomllib``), which is what the image requires
of its base anyway.

Steps
-----
``requirements``  collect flowrig's and the project's requirements into fixed files
``install``       build a wheelhouse with the target interpreter, then install from it,
                  pinned by flowrig's lock (``constraints.txt``, exported from ``uv.lock``)
``install-self``  install flowrig itself, offline, into its own directory
``prune``         drop what a runtime never needs from the venv
``add-path``      put flowrig's own directory on the venv's path
``compile``       write bytecode for the modules the image's commands import
``manifest``      write the image manifest (project config and installed versions)

A step that fails because of its input prints ``flowrig-build: error: ...`` (one line)
and exits 2; the host-side builder turns that line into a ``BadInput``. A step that fails
for another reason (the package index unreachable, the image's own modules broken) prints
``flowrig-build: failed: ...`` and exits 3: an ``InfrastructureError`` on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

#: Installed next to flowrig's own dependencies: the image's PID 1 (see the ENTRYPOINT).
RUNTIME_REQUIREMENTS = ("dumb-init>=1.2.5",)
#: What a runtime never needs. pip/setuptools/wheel only arrive as some dependency's
#: dependency (the venv is made without pip), and leave with the rest.
PRUNE_DISTRIBUTIONS = ("pip", "setuptools", "wheel", "_distutils_hack", "pkg_resources")
PRUNE_DIR_NAMES = ("tests", "test", "__pycache__")
#: Stale bytecode (the compile step writes what is wanted), type stubs and C sources.
PRUNE_SUFFIXES = (".pyc", ".pyo", ".pyi", ".c", ".h", ".cpp", ".pyx", ".pxd")
#: Prefect's web UI bundles (17 MB): the run's embedded API starts with the UI off,
#: and the image sets PREFECT_UI_ENABLED=false for anything else that starts a server.
PRUNE_SITE_PATHS = ("prefect/server/ui", "prefect/server/ui-v2")
#: Distributions reported in the manifest, when installed.
MANIFEST_DISTRIBUTIONS = (
    "flowrig",
    "prefect",
    "prefect-dask",
    "distributed",
    "dask",
    "dask-cloudprovider",
    "cryptography",
)
#: Marks the one line the host-side builder reports when this script fails because of
#: the project (exit 2), and when it fails for another reason (exit 3).
ERROR_PREFIX = "flowrig-build: error: "
FAILURE_PREFIX = "flowrig-build: failed: "
#: Directories of libraries that auditwheel (and delvewheel) vendor into a wheel:
#: ``numpy.libs/``, ``scipy.libs/``... Never stripped: they are rewritten by patchelf,
#: and binutils' strip mangles such files (numpy's OpenBLAS then fails to load with
#: "ELF load command address/offset not page-aligned").
VENDORED_LIBRARY_DIRS = (".libs",)


# --- requirements ---------------------------------------------------------------------
# The rules for a project's files are the host's too (flowrig.project.build_rules): the
# Dockerfile copies that module next to this script, and a checkout keeps it in the
# package. It is loaded by path, since flowrig itself is not installed yet.


def _load_rules(name: str):
    """``flowrig/project/<name>.py``, next to this file (the build) or in the package."""
    import importlib.util

    here = Path(__file__).resolve().parent
    for candidate in (here / f"{name}.py", here.parent / "project" / f"{name}.py"):
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location(f"flowrig_{name}", candidate)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
            return module
    raise SystemExit(f"{ERROR_PREFIX}{name}.py is missing next to {here / 'buildsteps.py'}")


_rules = _load_rules("build_rules")
PROJECT_FILE = _rules.PROJECT_FILE
DEFAULT_REQUIREMENTS = _rules.DEFAULT_REQUIREMENTS
StepError = _rules.RuleError
read_project_config = _rules.read_project_config
flatten_requirements = _rules.flatten_requirements


def requirements_path(project_dir: Path, config: dict) -> Path | None:
    """The project's requirements file (see ``build_rules.requirements_path``)."""
    return _rules.requirements_path(project_dir, config.get("requirements"))


#: Backends whose runner and roles need a cloud's SDK -> flowrig's extra that brings it;
#: other projects' images stay without boto3, the Azure SDK and the Google client.
BACKEND_EXTRAS = {"ecs": "aws", "fargate": "aws", "ec2": "aws", "azure": "azure", "gcp": "gcp"}


def flowrig_extras(config: dict) -> list[str]:
    """Optional dependency groups of flowrig the project's backend needs in the image."""
    backend = config.get("cluster", {}).get("backend", "local")
    return [BACKEND_EXTRAS[backend]] if backend in BACKEND_EXTRAS else []


def pyproject_requirements(pyproject: Path, extras: list[str] = ()) -> tuple[list[str], list[str]]:
    """flowrig's runtime dependencies (with ``extras``) and its build backend's requirements."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project", {})
    runtime = list(project.get("dependencies", []))
    for extra in extras:
        runtime += project.get("optional-dependencies", {}).get(extra, [])
    build = list(data.get("build-system", {}).get("requires", []))
    return runtime, build


#: Name of the lock's export in a build context and in the requirements stage's output.
CONSTRAINTS_FILE = "constraints.txt"
#: First line of the flattened project requirements: the file they came from.
SOURCE_MARK = "# flowrig-source: "


def step_requirements(args: argparse.Namespace) -> None:
    project = Path(args.project)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Every install of the build is pinned by flowrig's lock, so an image gets the
    # versions CI tested; without one (an old context) pip resolves freely.
    constraints = Path(args.constraints) if args.constraints else None
    if constraints is not None and constraints.is_file():
        shutil.copyfile(constraints, out / CONSTRAINTS_FILE)
    else:
        (out / CONSTRAINTS_FILE).write_text("")
    config = read_project_config(project)
    # Also here for a plain `docker build`, which no host check precedes.
    secrets = _load_rules("secretrules")
    try:
        secrets.check_no_credentials(config)
    except secrets.CredentialError as exc:
        raise StepError(str(exc)) from None
    runtime, build = pyproject_requirements(Path(args.pyproject), flowrig_extras(config))
    (out / "flowrig.txt").write_text("\n".join([*runtime, *RUNTIME_REQUIREMENTS]) + "\n")
    (out / "build.txt").write_text("\n".join(build) + "\n")
    path = requirements_path(project, config)
    read: list[Path] = []
    lines = flatten_requirements(path, project, out, files=read) if path else []
    refuse_credentials_in_files(secrets, project, config, read)
    if lines:
        # Named in the one line that reports a requirement pip cannot satisfy.
        lines.insert(0, f"{SOURCE_MARK}{path.resolve().relative_to(project.resolve()).as_posix()}")
    (out / "project.txt").write_text("\n".join(lines) + "\n" if lines else "")


#: The build log's line when pip gets a .netrc (followed by its path in the build step).
NETRC_SEEN = "pip reads an index's credentials from the build secret "
#: How a build gives pip an index's credentials. The repository's Dockerfile has no RUN
#: --mount (the legacy builder reads it too), so a plain build of it cannot take the
#: secret: ``flowrig build`` adds the mount, and its ``--context-only`` prints the command.
PIP_NETRC_HINT = (
    "flowrig build --pip-netrc FILE (BuildKit), or the `docker build --secret id=pip-netrc,src=FILE` "
    "command that `flowrig build --context-only DIR --pip-netrc FILE` prints"
)


def refuse_credentials_in_files(secrets, project: Path, config: dict, requirements: list[Path]) -> None:
    """Refuse every project file holding a credential by value: the project is copied
    into the image as it is (``flowrig build`` checks the same before the build)."""
    root = project.resolve()
    paths = sorted(
        str(Path(directory, name).relative_to(root).as_posix())
        for directory, _dirs, names in os.walk(root)
        for name in names
        if Path(directory, name).is_file() and not Path(directory, name).is_symlink()
    )
    build = config.get("build") if isinstance(config.get("build"), dict) else {}
    allow = [entry for entry in build.get("allow_credentials", []) if isinstance(entry, str)]
    index = [p.relative_to(root).as_posix() for p in requirements if root in p.parents]
    found, unscanned = secrets.project_findings(root, paths, allow, index)
    if found:
        raise StepError(secrets.describe(found, netrc_hint=PIP_NETRC_HINT))
    for path in unscanned:
        print(f"not searched for credentials by value (larger than {secrets.SCAN_MAX_BYTES >> 20} MiB): {path}")


# --- install --------------------------------------------------------------------------


def _has_requirements(files: list[Path]) -> bool:
    for file in files:
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                return True
    return False


def _pip_env(pip_ca: list[str], pip_netrc: list[str] = ()) -> dict[str, str]:
    """pip's environment: the first CA bundle and .netrc (a build secret) that exist.

    pip reads an index's credentials from the .netrc that ``NETRC`` names (through
    requests) when the index URL has none, so no credential is in a requirements file,
    an argument or a layer.
    """
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.pop("PIP_FIND_LINKS", None)
    env.pop("NETRC", None)
    for name, candidates in (("PIP_CERT", pip_ca), ("NETRC", pip_netrc)):
        for candidate in candidates:
            if os.path.isfile(candidate) and os.path.getsize(candidate) > 0:
                env[name] = candidate
                break
    return env


def _run(cmd: list[str], env: dict[str, str], *, check: bool = True) -> bool:
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, env=env)
    if check and done.returncode != 0:
        sys.exit(done.returncode)
    return done.returncode == 0


def _run_pip(cmd: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run pip with its output passed through, and keep that output for a diagnosis."""
    print("+", " ".join(cmd), flush=True)
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line.rstrip("\n"))
    return process.wait(), lines


# What pip prints when it cannot reach the index: a network or TLS failure, not the
# project's fault, whatever "no matching distribution" follows.
_UNREACHABLE = re.compile(
    r"Retrying \(Retry\(|Could not fetch URL|SSLError|CERTIFICATE_VERIFY_FAILED|NewConnectionError|"
    r"ConnectTimeoutError|ReadTimeoutError|ProxyError|Temporary failure in name resolution|"
    r"Network is unreachable|Name or service not known"
)
_NO_VERSION = re.compile(r"Could not find a version that satisfies the requirement (\S+) \(from versions: ?(.*)\)")
_CONFLICT_CAUSE = re.compile(r"^\s*The user requested (\(constraint\) )?(\S+)")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[@(]", requirement, maxsplit=1)[0]


def diagnose_pip_failure(output: list[str], source: str) -> tuple[str, str]:
    """Why a pip run failed, as (kind, one line): kind is ``project`` (the project's
    requirements cannot be satisfied: exit 2) or ``index`` (exit 3) or ``other``.

    Parameters
    ----------
    output
        pip's output lines.
    source
        What the requirements were, as a user knows it ("requirements.txt").
    """
    text = "\n".join(output)
    network = [line for line in output if _UNREACHABLE.search(line)]
    missing = _NO_VERSION.search(text)
    if network:
        said = re.sub(r"^(WARNING|ERROR): ", "", network[0].strip())
        said = said if len(said) <= 160 else said[:157] + "..."
        fix = ("give pip the CA bundle it should trust (flowrig build --pip-ca FILE; pip-ca.crt at the "
               "context's root for a plain docker build)" if re.search(r"SSLError|CERTIFICATE_VERIFY_FAILED", text)
               else "check the build's network access and the index settings")
        return "index", f"pip could not reach the package index ({said}): {fix}"
    if missing:
        requirement, versions = missing.group(1), missing.group(2).strip()
        name = _requirement_name(requirement)
        if versions in ("", "none"):
            return "project", (
                f"{source}: the package index has no package named {name!r}: check its spelling "
                f"(https://pypi.org/project/{name}/), then fix it in {source}"
            )
        shown = ", ".join(v.strip() for v in versions.split(",")[-5:])
        return "project", (
            f"{source}: no version of {name!r} on the package index satisfies {requirement!r} "
            f"(latest: {shown}): change the version in {source}"
        )
    if "ResolutionImpossible" in text or "conflicting dependencies" in text:
        asked = [m.group(2) + (" (flowrig's lock, constraints.txt)" if m.group(1) else "")
                 for m in map(_CONFLICT_CAUSE.match, output) if m]
        detail = "; ".join(dict.fromkeys(asked)) or "see pip's output above"
        return "project", (
            f"{source}: the requirements conflict with each other or with the versions flowrig's lock pins "
            f"({detail}): change them so that one version of each package fits all"
        )
    return "other", ""


def _source_of(files: list[Path]) -> str:
    for file in files:
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.startswith(SOURCE_MARK):
                return line[len(SOURCE_MARK):].strip()
    return "flowrig's own requirements"


def _pip_or_exit(cmd: list[str], env: dict[str, str], files: list[Path]) -> None:
    returncode, output = _run_pip(cmd, env)
    if returncode == 0:
        return
    source = _source_of(files)
    kind, line = diagnose_pip_failure(output, source)
    if kind == "project" and source != "flowrig's own requirements":
        print(f"{ERROR_PREFIX}{line}", file=sys.stderr, flush=True)
        sys.exit(2)
    if line:
        print(f"{FAILURE_PREFIX}{line}", file=sys.stderr, flush=True)
        sys.exit(3)
    sys.exit(returncode)


def step_install(args: argparse.Namespace) -> None:
    files = [Path(f) for f in args.requirements]
    extra = [Path(f) for f in args.build_requirements]
    if not _has_requirements([*files, *extra]):
        print("nothing to install")
        return
    env = _pip_env(args.pip_ca, args.pip_netrc)
    if "NETRC" in env:
        # Says that the build secret arrived (never what it holds): without the mount a
        # private index answers 401, and this line is then missing from the log.
        print(f"{NETRC_SEEN}{env['NETRC']}", flush=True)
    wheels = Path(args.wheels)
    wheels.mkdir(parents=True, exist_ok=True)
    pins = ["-c", args.constraints] if args.constraints and _has_requirements([Path(args.constraints)]) else []
    req_args = [*pins, *(arg for f in files for arg in ("-r", str(f)))]
    wheel_args = [*req_args, *(arg for f in extra for arg in ("-r", str(f)))]
    pip = [args.pip]
    # The wheelhouse is built by the interpreter that will run the code, so environment
    # markers (python_full_version and friends) are evaluated for the target. Wheels an
    # earlier step put there are taken from it (pip prefers a local file to the index's
    # copy of the same version), so the project's layer downloads only what is new.
    _pip_or_exit([*pip, "wheel", "--wheel-dir", str(wheels), "--find-links", str(wheels), *wheel_args],
                 env, files)
    if _has_requirements(extra):
        # Build requirements go next to pip itself (see install-self).
        extra_args = [*pins, *(arg for f in extra for arg in ("-r", str(f)))]
        _run([*pip, "install", "--no-index", "--find-links", str(wheels), *extra_args], env)
    if not _has_requirements(files):
        return
    target = [*pip, "--python", args.python] if args.python else pip
    # --no-compile: the compile step writes bytecode for what the image imports only.
    _pip_or_exit(
        [*target, "install", "--no-compile", "--no-index", "--find-links", str(wheels), *req_args],
        env, files,
    )


def step_install_self(args: argparse.Namespace) -> None:
    source = Path(args.source)
    # hatchling's force-includes and readme must exist; the image needs none of them.
    for placeholder in ("README.md", "Dockerfile", CONSTRAINTS_FILE):
        if not (source / placeholder).exists():
            (source / placeholder).write_text("")
    env = _pip_env([])
    with tempfile.TemporaryDirectory(prefix="flowrig-wheel-") as scratch:
        # The build backend sits next to pip (installed from the wheelhouse), so the
        # wheel builds offline and without a fresh isolated environment each time.
        _run(
            [args.pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation",
             "--wheel-dir", scratch, str(source)],
            env,
        )
        wheels = sorted(Path(scratch).glob("flowrig-*.whl"))
        _run(
            [args.pip, "--python", args.python, "install", "--no-deps", "--no-index",
             "--no-compile", "--target", args.target, *map(str, wheels)],
            env,
        )


# --- prune ----------------------------------------------------------------------------


def site_packages(venv: Path) -> Path:
    """The ``site-packages`` directory of a venv (its Python version is not known here)."""
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise StepError(f"{venv} has no lib/python3*/site-packages")
    return found[0]


def prune_paths(site: Path) -> list[Path]:
    """Files and directories under ``site`` that a runtime does not need."""
    doomed: list[Path] = []
    for name in PRUNE_DISTRIBUTIONS:
        doomed.extend(site.glob(name))
        doomed.extend(site.glob(f"{name}-*.dist-info"))
        doomed.extend(site.glob(f"{name}.pth"))
    doomed.extend(site.glob("distutils-precedence.pth"))
    doomed.extend(site / p for p in PRUNE_SITE_PATHS if (site / p).exists())
    skip = {str(p) for p in doomed}
    for directory, dirs, files in os.walk(site):
        here = Path(directory)
        dirs[:] = [d for d in dirs if str(here / d) not in skip]
        for name in list(dirs):
            if name in PRUNE_DIR_NAMES and (name == "__pycache__" or _is_test_dir(here / name)):
                doomed.append(here / name)
                dirs.remove(name)
        doomed.extend(here / f for f in files if f.endswith(PRUNE_SUFFIXES))
    return sorted(set(doomed))


def _is_test_dir(path: Path) -> bool:
    """A ``tests``/``test`` directory holding Python code (not, say, a data folder)."""
    return any(p.suffix == ".py" for p in path.rglob("*.py"))


def step_prune(args: argparse.Namespace) -> None:
    venv = Path(args.venv)
    site = site_packages(venv)
    doomed = prune_paths(site)
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for script in ("pip", "pip3", f"pip{sys.version_info[0]}.{sys.version_info[1]}", "wheel"):
        (venv / "bin" / script).unlink(missing_ok=True)
    print(f"pruned {len(doomed)} paths")
    if args.strip == "off":
        print("STRIP=off: shared objects left as they are")
        return
    strip = shutil.which("strip")
    if strip is None:
        # Bases such as python:*-slim and Debian minbase have no binutils; wheels on
        # PyPI are mostly stripped already, so this is a small loss.
        print("no strip on this base: shared objects left as they are")
        return
    result = strip_shared_objects(site, strip)
    print(
        f"stripped {result['stripped']} shared objects ({result['saved'] / 1e6:.1f} MB less); left as they were: "
        f"{result['vendored']} vendored by auditwheel (*.libs), {result['changed']} whose loaded segments "
        f"stripping would change, {result['unstrippable']} strip could not handle"
    )


# --- strip, proven harmless -------------------------------------------------------------
# strip(1) removes symbol tables and debug sections, which the dynamic loader never maps.
# On files that patchelf rewrote (auditwheel does so to every library it vendors), it has
# been seen to move or empty loadable segments instead, and the library no longer loads.
# So every object is stripped into a copy, and the copy replaces it only when its
# loadable segments hold the same bytes at the same addresses, at file offsets the loader
# accepts: then the process image is the one the original makes.

_PT_LOAD = 1


def _elf_layout(data: bytes) -> tuple[str, bool, int, int, int] | None:
    """(byte order, 64-bit, phoff, phentsize, phnum) of an ELF file, or None."""
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    order, wide = ("<" if data[5] == 1 else ">"), data[4] == 2
    try:
        if wide:
            (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
            entsize, count = struct.unpack_from(order + "HH", data, 0x36)
        else:
            (phoff,) = struct.unpack_from(order + "I", data, 0x1C)
            entsize, count = struct.unpack_from(order + "HH", data, 0x2A)
    except struct.error:
        return None
    if entsize < (56 if wide else 32) or phoff + entsize * count > len(data):
        return None
    return order, wide, phoff, entsize, count


def program_headers(data: bytes) -> list[tuple[int, int, int, int, int, int, int]] | None:
    """(type, flags, offset, vaddr, filesz, memsz, align) of each ELF program header,
    or None when ``data`` is not an ELF file this can read."""
    layout = _elf_layout(data)
    if layout is None:
        return None
    order, wide, phoff, entsize, count = layout
    headers = []
    for i in range(count):
        if wide:
            p_type, flags, offset, vaddr, _, filesz, memsz, align = struct.unpack_from(
                order + "IIQQQQQQ", data, phoff + i * entsize
            )
        else:
            p_type, offset, vaddr, _, filesz, memsz, flags, align = struct.unpack_from(
                order + "IIIIIIII", data, phoff + i * entsize
            )
        headers.append((p_type, flags, offset, vaddr, filesz, memsz, align))
    return headers


def _unmapped_fields(data: bytes) -> list[tuple[int, int]]:
    """File ranges a loadable segment may hold that the loader never reads and strip
    rewrites: the ELF header's section-table fields, and each program header's file
    offset (compared on their own, in :func:`loads_like`)."""
    layout = _elf_layout(data)
    assert layout is not None
    _, wide, phoff, entsize, count = layout
    # e_shoff, then e_shentsize, e_shnum and e_shstrndx.
    ranges = [(0x28, 0x30), (0x3A, 0x40)] if wide else [(0x20, 0x24), (0x2E, 0x34)]
    width, at = (8, 8) if wide else (4, 4)
    ranges += [(phoff + i * entsize + at, phoff + i * entsize + at + width) for i in range(count)]
    return ranges


def _segment(data: bytes, offset: int, size: int, masked: list[tuple[int, int]]) -> bytes:
    chunk = data[offset : offset + size]
    overlapping = [(a, b) for a, b in masked if a < offset + size and b > offset]
    if not overlapping:
        return chunk
    editable = bytearray(chunk)
    for a, b in overlapping:
        start, stop = max(a, offset) - offset, min(b, offset + size) - offset
        editable[start:stop] = bytes(stop - start)
    return bytes(editable)


def loads_like(original: bytes, stripped: bytes) -> bool:
    """Whether ``stripped`` gives the dynamic loader what ``original`` gives it.

    Every program header must be the same but for its file offset; each loadable
    segment must hold the same bytes (but for the ELF header's section-table fields
    and the program headers' offsets, which the loader does not use), at an offset
    congruent to its address modulo its alignment and the page size (glibc refuses
    others: "ELF load command address/offset not page-aligned").
    """
    before, after = program_headers(original), program_headers(stripped)
    if before is None or after is None or len(before) != len(after):
        return False
    masked_before, masked_after = _unmapped_fields(original), _unmapped_fields(stripped)
    for old, new in zip(before, after):
        if old[:2] + old[3:] != new[:2] + new[3:]:
            return False
        p_type, _, offset, vaddr, filesz, _, align = new
        if p_type != _PT_LOAD:
            continue
        if (vaddr - offset) % max(align, 4096) or offset + filesz > len(stripped):
            return False
        if _segment(original, old[2], filesz, masked_before) != _segment(stripped, offset, filesz, masked_after):
            return False
    return True


def _vendored(path: Path, site: Path) -> bool:
    return any(part.endswith(VENDORED_LIBRARY_DIRS) for part in path.relative_to(site).parts[:-1])


def strip_shared_objects(site: Path, strip: str) -> dict[str, int]:
    """Strip the shared objects under ``site`` where that provably changes nothing the
    loader maps (see :func:`loads_like`); returns counts and the bytes saved."""
    counts = {"stripped": 0, "vendored": 0, "changed": 0, "unstrippable": 0, "saved": 0}
    kept: list[str] = []
    objects = sorted(p for p in site.rglob("*.so*") if p.is_file() and not p.is_symlink())
    for path in objects:
        original = path.read_bytes()
        if program_headers(original) is None:
            continue  # not an ELF object (a linker script, say)
        if _vendored(path, site):
            counts["vendored"] += 1
            continue
        copy = path.with_name(f".{path.name}.flowrig-strip")
        done = subprocess.run([strip, "--strip-unneeded", "-o", str(copy), str(path)], capture_output=True)
        stripped = copy.read_bytes() if done.returncode == 0 and copy.is_file() else None
        if stripped is None:
            counts["unstrippable"] += 1
        elif len(stripped) >= len(original):
            pass  # already stripped
        elif not loads_like(original, stripped):
            counts["changed"] += 1
            kept.append(path.relative_to(site).as_posix())
        else:
            os.chmod(copy, path.stat().st_mode & 0o7777)
            os.replace(copy, path)
            counts["stripped"] += 1
            counts["saved"] += len(original) - len(stripped)
        copy.unlink(missing_ok=True)
    if kept:
        more = f" and {len(kept) - 5} more" if len(kept) > 5 else ""
        print(f"left unstripped, since stripping would change what the loader maps: {', '.join(kept[:5])}{more}")
    return counts


def step_add_path(args: argparse.Namespace) -> None:
    """Put a directory on a venv's ``sys.path`` with a ``.pth`` file."""
    site = site_packages(Path(args.venv))
    (site / "flowrig-app.pth").write_text(f"{args.directory}\n")


# --- compile --------------------------------------------------------------------------

#: Run by the target interpreter: import the modules, then compile every module file
#: now loaded from under the given roots. Unchecked hash-based pycs are never
#: re-validated against their source, which suits an image whose files do not change
#: and does not depend on file times surviving COPY.
_COMPILE_CODE = r"""
import importlib, importlib.util, json, py_compile, sys
roots, modules = json.loads(sys.argv[1])
failed, absent = [], []
for name in modules:
    # A module of a package this image does not install (dask_cloudprovider without a
    # cloud backend) is left out; one that is installed must import.
    if importlib.util.find_spec(name.partition(".")[0]) is None:
        absent.append(name)
        continue
    try:
        importlib.import_module(name)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        failed.append(f"{name}: {type(exc).__name__}: {lines[-1] if lines else ''}")
done = 0
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or not path.startswith(tuple(roots)):
        continue
    py_compile.compile(path, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    done += 1
print(json.dumps({"compiled": done, "failed": failed, "absent": absent}))
"""


def step_compile(args: argparse.Namespace) -> None:
    roots = [str(Path(r).resolve()) + os.sep for r in args.root]
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # Nothing the modules do at import time may reach a server or leave state behind.
    home = tempfile.mkdtemp(prefix="flowrig-compile-")
    env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    try:
        if args.modules:
            done = subprocess.run(
                [args.python, "-c", _COMPILE_CODE, json.dumps([roots, args.modules])],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                sys.exit(done.returncode)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            imported = [m for m in args.modules if m not in result["absent"]]
            print(f"compiled {result['compiled']} modules imported by {' '.join(imported)}")
            if result["absent"]:
                print(f"not in this image, so not compiled: {' '.join(result['absent'])}")
            if result["failed"]:
                # The image's own commands import these: an image without them is broken.
                print(f"{FAILURE_PREFIX}the image's own modules do not import: {'; '.join(result['failed'])}",
                      file=sys.stderr, flush=True)
                sys.exit(3)
        for directory in args.all or []:
            subprocess.run(
                [args.python, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
                 directory],
                env=env,
                check=True,
            )
            print(f"compiled everything under {directory}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- manifest -------------------------------------------------------------------------

_VERSIONS_CODE = r"""
import json, platform, sys
from importlib import metadata
names = json.loads(sys.argv[1])
versions = {"python": platform.python_version()}
for name in names:
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(versions))
"""


def build_manifest(
    config: dict,
    project_name: str,
    versions: dict,
    base_image: str,
    context: dict | None,
    tls_mode: str = "baked",
) -> dict:
    """The image manifest: what the image runs and with which versions.

    Parameters
    ----------
    config
        The project's parsed ``flowrig.toml``; only the keys of ``[cluster.options]``
        are kept, since the manifest is printed in the build log.
    project_name
        Name of the project (its directory name on the host).
    versions
        Versions installed in the image (python and :data:`MANIFEST_DISTRIBUTIONS`).
    base_image
        The ``BASE_IMAGE`` build argument.
    context
        The ``manifest.json`` a flowrig build context carries, when there is one; its
        project name, builder facts and flow facts (name, entry point, parameter
        schema: what ``flowrig deploy`` reads) take precedence.
    tls_mode
        The ``TLS_MODE`` build argument (``baked`` or ``per-run``): what the run side
        reads to know whether the image carries certificates.
    """
    manifest = {
        "schema": 1,
        "project": {"name": project_name, "config": _rules.without_option_values(config)},
        "base_image": base_image,
        "versions": versions,
        "tls_mode": tls_mode,
        "tls": "per-run" if tls_mode == "per-run" else "image-local",
    }
    if context:
        manifest["project"]["name"] = context.get("project", {}).get("name", project_name)
        for key in ("builder", "tls", "flow"):
            if key in context:
                manifest[key] = context[key]
    return manifest


def step_manifest(args: argparse.Namespace) -> None:
    project = Path(args.project)
    config = read_project_config(project)
    context = None
    if args.context_manifest and Path(args.context_manifest).is_file():
        context = json.loads(Path(args.context_manifest).read_text(encoding="utf-8"))
    done = subprocess.run(
        [args.python, "-c", _VERSIONS_CODE, json.dumps(list(MANIFEST_DISTRIBUTIONS))],
        capture_output=True,
        text=True,
        check=True,
    )
    versions = json.loads(done.stdout)
    name = args.project_name or project.resolve().name
    manifest = build_manifest(config, name, versions, args.base_image, context, args.tls_mode)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    print(out.read_text())


# --- command line ---------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="buildsteps.py", description=__doc__.splitlines()[0])
    steps = root.add_subparsers(dest="step", required=True)

    p = steps.add_parser("requirements", help="collect requirements into fixed files")
    p.add_argument("--pyproject", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--constraints", help="flowrig's lock exported as a constraints file")
    p.set_defaults(func=step_requirements)

    p = steps.add_parser("install", help="wheelhouse with the target interpreter, then install")
    p.add_argument("--pip", required=True, help="pip executable that builds the wheelhouse")
    p.add_argument("--python", help="interpreter of the venv to install into (pip --python)")
    p.add_argument("--wheels", required=True)
    p.add_argument("--constraints", help="pins every install to these versions (pip -c)")
    p.add_argument("--pip-ca", action="append", default=[], help="CA bundle candidates for pip")
    p.add_argument("--pip-netrc", action="append", default=[], help=".netrc candidates with an index's credentials")
    p.add_argument(
        "--build-requirements",
        action="append",
        default=[],
        help="requirements installed next to pip, not into the venv (a build backend)",
    )
    p.add_argument("requirements", nargs="+")
    p.set_defaults(func=step_install)

    p = steps.add_parser("install-self", help="install flowrig offline into its own directory")
    p.add_argument("--pip", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("source")
    p.set_defaults(func=step_install_self)

    p = steps.add_parser("prune", help="drop what a runtime never needs from a venv")
    p.add_argument("venv")
    p.add_argument("--strip", choices=("auto", "off"), default="auto",
                   help="strip shared objects where that changes nothing the loader maps (auto)")
    p.set_defaults(func=step_prune)

    p = steps.add_parser("add-path", help="put a directory on a venv's sys.path")
    p.add_argument("venv")
    p.add_argument("directory")
    p.set_defaults(func=step_add_path)

    p = steps.add_parser("compile", help="bytecode for the modules the image imports")
    p.add_argument("--python", required=True)
    p.add_argument("--root", action="append", required=True, help="compile files under here")
    p.add_argument("--all", action="append", help="directory to compile completely")
    p.add_argument("modules", nargs="*")
    p.set_defaults(func=step_compile)

    p = steps.add_parser("manifest", help="write the image manifest")
    p.add_argument("--python", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--project-name")
    p.add_argument("--context-manifest")
    p.add_argument("--base-image", default="")
    p.add_argument("--tls-mode", default="baked")
    p.add_argument("--out", required=True)
    p.set_defaults(func=step_manifest)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except StepError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
