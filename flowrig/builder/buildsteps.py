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
and exits 2; the host-side builder turns that line into a ``BadInput``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
#: Marks the one line the host-side builder reports when this script fails.
ERROR_PREFIX = "flowrig-build: error: "


# --- requirements ---------------------------------------------------------------------
# The rules for a project's files are the host's too (flowrig.project.filerules): the
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


_rules = _load_rules("filerules")
PROJECT_FILE = _rules.PROJECT_FILE
DEFAULT_REQUIREMENTS = _rules.DEFAULT_REQUIREMENTS
StepError = _rules.RuleError
read_project_config = _rules.read_project_config
flatten_requirements = _rules.flatten_requirements


def requirements_path(project_dir: Path, config: dict) -> Path | None:
    """The project's requirements file (see ``filerules.requirements_path``)."""
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
    (out / "project.txt").write_text("\n".join(lines) + "\n" if lines else "")


#: How a plain ``docker build`` gives pip an index's credentials (see the Dockerfile).
PIP_NETRC_HINT = "docker build --secret id=pip-netrc,src=FILE"


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


def step_install(args: argparse.Namespace) -> None:
    files = [Path(f) for f in args.requirements]
    extra = [Path(f) for f in args.build_requirements]
    if not _has_requirements([*files, *extra]):
        print("nothing to install")
        return
    env = _pip_env(args.pip_ca, args.pip_netrc)
    wheels = Path(args.wheels)
    wheels.mkdir(parents=True, exist_ok=True)
    pins = ["-c", args.constraints] if args.constraints and _has_requirements([Path(args.constraints)]) else []
    req_args = [*pins, *(arg for f in files for arg in ("-r", str(f)))]
    wheel_args = [*req_args, *(arg for f in extra for arg in ("-r", str(f)))]
    pip = [args.pip]
    # The wheelhouse is built by the interpreter that will run the code, so environment
    # markers (python_full_version and friends) are evaluated for the target.
    wheel = [*pip, "wheel", "--wheel-dir", str(wheels), "--find-links", str(wheels)]
    cache = Path(args.cache) if args.cache and args.cache_enabled == "1" else None
    from_cache = False
    if cache is not None and cache.is_dir() and any(cache.glob("*.whl")):
        # An optimisation only: an offline attempt against wheels kept from earlier
        # builds (BuildKit cache mount). Anything missing sends us online below.
        from_cache = _run(
            [*wheel, "--no-index", "--find-links", str(cache), "--quiet", *wheel_args], env, check=False
        )
        print("wheelhouse from cache" if from_cache else "cache incomplete: going online", flush=True)
    if not from_cache:
        _run([*wheel, *wheel_args], env)
        if cache is not None and cache.is_dir():
            for whl in wheels.glob("*.whl"):
                if not (cache / whl.name).exists():
                    shutil.copy2(whl, cache / whl.name)
    if _has_requirements(extra):
        # Build requirements go next to pip itself (see install-self).
        extra_args = [*pins, *(arg for f in extra for arg in ("-r", str(f)))]
        _run([*pip, "install", "--no-index", "--find-links", str(wheels), *extra_args], env)
    if not _has_requirements(files):
        return
    target = [*pip, "--python", args.python] if args.python else pip
    # --no-compile: the compile step writes bytecode for what the image imports only.
    _run(
        [*target, "install", "--no-compile", "--no-index", "--find-links", str(wheels), *req_args],
        env,
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
    strip = shutil.which("strip")
    if strip is None:
        # Bases such as python:*-slim and Debian minbase have no binutils; wheels on
        # PyPI are mostly stripped already, so this is a small loss.
        print("no strip on this base: shared objects left as they are")
        return
    objects = sorted(str(p) for p in site.rglob("*.so*") if p.is_file() and not p.is_symlink())
    for chunk in range(0, len(objects), 200):
        subprocess.run([strip, "--strip-unneeded", *objects[chunk : chunk + 200]], check=False)
    print(f"stripped {len(objects)} shared objects")


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
import importlib, json, py_compile, sys
roots, modules = json.loads(sys.argv[1])
failed = []
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
done = 0
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or not path.startswith(tuple(roots)):
        continue
    py_compile.compile(path, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    done += 1
print(json.dumps({"compiled": done, "failed": failed}))
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
            print(f"compiled {result['compiled']} modules imported by {' '.join(args.modules)}")
            for line in result["failed"]:
                # A module the project does not install (dask_cloudprovider, say) is no error.
                print(f"not compiled (import failed): {line}")
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
    p.add_argument("--cache", help="directory of wheels kept between builds (optional)")
    p.add_argument("--cache-enabled", default="1")
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
