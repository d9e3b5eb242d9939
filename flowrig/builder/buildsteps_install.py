"""The ``install``, ``install-self`` and ``compile`` steps: pip runs, and what a failed one means.

Run inside the image build by ``buildsteps.py`` (which loads this file by path), before
flowrig or any dependency is installed, so it uses the standard library only and never
imports flowrig. A step that fails raises :class:`StepFailed`, which ``buildsteps.py``
turns into its one line and exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Name of the lock's export in a build context and in the requirements stage's output.
CONSTRAINTS_FILE = "constraints.txt"
#: First line of the flattened project requirements: the file they came from.
SOURCE_MARK = "# flowrig-source: "
#: The build log's line when pip gets a .netrc (followed by its path in the build step).
NETRC_SEEN = "pip reads an index's credentials from the build secret "


class StepFailed(Exception):
    """A step failed: ``code`` is the exit status (2: the project's input, 3: anything
    else, or pip's own), ``line`` the one line saying why (empty when pip's output above
    says it)."""

    def __init__(self, code: int, line: str = "") -> None:
        super().__init__(line)
        self.code, self.line = code, line


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


def _pip_or_fail(cmd: list[str], env: dict[str, str], files: list[Path]) -> None:
    returncode, output = _run_pip(cmd, env)
    if returncode == 0:
        return
    source = _source_of(files)
    kind, line = diagnose_pip_failure(output, source)
    if kind == "project" and source != "flowrig's own requirements":
        raise StepFailed(2, line)
    raise StepFailed(3 if line else returncode, line)


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
    _pip_or_fail([*pip, "wheel", "--wheel-dir", str(wheels), "--find-links", str(wheels), *wheel_args],
                 env, files)
    if _has_requirements(extra):
        # Build requirements go next to pip itself (see install-self).
        extra_args = [*pins, *(arg for f in extra for arg in ("-r", str(f)))]
        _run([*pip, "install", "--no-index", "--find-links", str(wheels), *extra_args], env)
    if not _has_requirements(files):
        return
    target = [*pip, "--python", args.python] if args.python else pip
    # --no-compile: the compile step writes bytecode for what the image imports only.
    _pip_or_fail(
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


# --- compile --------------------------------------------------------------------------

#: Run by the target interpreter: import the modules, then compile every module file
#: now loaded from under the given roots. Unchecked hash-based pycs are never
#: re-validated against their source, which suits an image whose files do not change
#: and does not depend on file times surviving COPY.
_COMPILE_CODE = r"""
import importlib, importlib.util, json, os, py_compile, sys
# Only py_compile writes bytecode: a module that has some already (an earlier step's) is
# left as it is, so a later layer never carries a second copy of a lower layer's file.
sys.dont_write_bytecode = True
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
    except ModuleNotFoundError as exc:
        if exc.name == name and "." in name:
            continue  # a name ``from package import name`` took from the package, not a module
        failed.append(f"{name}: ModuleNotFoundError: {exc}")
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        failed.append(f"{name}: {type(exc).__name__}: {lines[-1] if lines else ''}")
done = 0
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or not path.startswith(tuple(roots)):
        continue
    if os.path.exists(importlib.util.cache_from_source(path)):
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
    modules = list(args.modules)
    if args.modules_from:
        modules += Path(args.modules_from).read_text(encoding="utf-8").split()
    try:
        if modules:
            done = subprocess.run(
                [args.python, "-c", _COMPILE_CODE, json.dumps([roots, modules])],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                sys.exit(done.returncode)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            imported = [m for m in modules if m not in result["absent"]]
            print(f"compiled {result['compiled']} modules imported by {' '.join(imported)}")
            if result["absent"] and not args.soft:
                print(f"not in this image, so not compiled: {' '.join(result['absent'])}")
            if result["failed"] and args.soft:
                # What the project's code imports: the image's import check, as the runtime
                # user and with the project in place, is the judge of those.
                print(f"not compiled, since they do not import here: {'; '.join(result['failed'])}")
            elif result["failed"]:
                # The image's own commands import these: an image without them is broken.
                raise StepFailed(3, f"the image's own modules do not import: {'; '.join(result['failed'])}")
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

