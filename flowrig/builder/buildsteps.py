"""Steps the Dockerfile runs inside the build, with the base image's ``python3``.

This file runs as a plain script (``python3 buildsteps.py STEP ...``) before flowrig or
any dependency is installed, so it uses the standard library only and never imports
flowrig. It needs Python 3.11 or newer (``tomllib``), which is what the image requires
of its base anyway. The steps are in three files, which the Dockerfile copies side by
side and this one loads by path: this one (the command line, ``requirements``,
``add-path``, ``manifest``), ``buildsteps_install.py`` (pip: ``install``,
``install-self``, ``compile``), ``buildsteps_prune.py`` (``prune``, with its strip) and
``buildsteps_layers.py`` (``snapshot``, ``split``).

Steps
-----
``requirements``  collect flowrig's and the project's requirements into fixed files
``install``       build a wheelhouse with the target interpreter, then install from it,
                  pinned by flowrig's lock (``constraints.txt``, exported from ``uv.lock``)
``install-self``  install flowrig itself, offline, into its own directory
``prune``         drop what a runtime never needs from the venv
``snapshot``      record the venv once flowrig's dependencies are in (their layer)
``split``         copy what the project's requirements added into a layer of its own
``imports``       list the modules the project's code imports (the bytecode it needs)
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
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

#: Installed next to flowrig's own dependencies: the image's PID 1 (see the ENTRYPOINT).
RUNTIME_REQUIREMENTS = ("dumb-init>=1.2.5",)
#: ``flowrig build --gpu RUNTIME`` -> the wheels installed with the project's requirements:
#: the CUDA runtime, and NVML's bindings, which distributed's GPU diagnostics read.
GPU_REQUIREMENTS = {"cuda12": ("nvidia-cuda-runtime-cu12", "nvidia-ml-py")}
#: The kernel's name of an architecture -> the name image platforms use.
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
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


# --- the modules beside this one ---------------------------------------------------------
# The rules for a project's files are the host's too (flowrig.project.build_rules and the
# secret rules): the Dockerfile copies those modules next to this script, and a checkout
# keeps them in the package. They, and the other steps' modules, are loaded by path,
# since flowrig itself is not installed yet.


def _load_build_module(name: str):
    """``<name>.py`` next to this file (the build; ``flowrig/builder`` in a checkout) or
    in ``flowrig/project`` (a checkout); loaded once."""
    import importlib.util

    loaded = sys.modules.get(f"flowrig_{name}")
    if loaded is not None:
        return loaded
    here = Path(__file__).resolve().parent
    for candidate in (here / f"{name}.py", here.parent / "project" / f"{name}.py"):
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location(f"flowrig_{name}", candidate)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
            return module
    raise SystemExit(f"{ERROR_PREFIX}{name}.py is missing next to {here / 'buildsteps.py'}")


_install = _load_build_module("buildsteps_install")
_prune = _load_build_module("buildsteps_prune")
_layers = _load_build_module("buildsteps_layers")
CONSTRAINTS_FILE = _install.CONSTRAINTS_FILE
SOURCE_MARK = _install.SOURCE_MARK
StepFailed = _install.StepFailed

_rules = _load_build_module("build_rules")
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


# --- requirements ---------------------------------------------------------------------


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
    secrets = _load_build_module("secret_rules")
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
    refuse_credentials_in_files(_load_build_module("secret_scan"), project, config, read)
    if lines:
        # Named in the one line that reports a requirement pip cannot satisfy.
        lines.insert(0, f"{SOURCE_MARK}{path.resolve().relative_to(project.resolve()).as_posix()}")
    (out / "project.txt").write_text("\n".join(lines) + "\n" if lines else "")
    gpu = getattr(args, "gpu", "") or ""
    if gpu and gpu not in GPU_REQUIREMENTS:
        raise StepError(f"GPU {gpu!r} is not a runtime flowrig installs: use {', '.join(GPU_REQUIREMENTS)}")
    # Installed in the project's layer, by the same pip step (and so with its diagnosis).
    (out / "gpu.txt").write_text("".join(f"{name}\n" for name in GPU_REQUIREMENTS.get(gpu, ())))


#: How a build gives pip an index's credentials. The repository's Dockerfile has no RUN
#: --mount (the legacy builder reads it too), so a plain build of it cannot take the
#: secret: ``flowrig build`` adds the mount, and its ``--context-only`` prints the command.
PIP_NETRC_HINT = (
    "flowrig build --pip-netrc FILE (BuildKit), or the `docker build --secret id=pip-netrc,src=FILE` "
    "command that `flowrig build --context-only DIR --pip-netrc FILE` prints"
)


def refuse_credentials_in_files(scan, project: Path, config: dict, requirements: list[Path]) -> None:
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
    found, unscanned = scan.project_findings(root, paths, allow, index)
    if found:
        raise StepError(scan.describe(found, netrc_hint=PIP_NETRC_HINT))
    for path in unscanned:
        print(f"not searched for credentials by value (larger than {scan.SCAN_MAX_BYTES >> 20} MiB): {path}")

# --- the venv after its installs ----------------------------------------------------------


def site_packages(venv: Path) -> Path:
    """The ``site-packages`` directory of a venv (its Python version is not known here)."""
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise StepError(f"{venv} has no lib/python3*/site-packages")
    return found[0]


def step_prune(args: argparse.Namespace) -> None:
    venv = Path(args.venv)
    keep = _layers.read_snapshot(Path(args.keep)) if args.keep else {}
    _prune.prune_venv(venv, site_packages(venv), args.strip, keep)


def step_imports(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{name}\n" for name in _layers.project_imports(Path(args.project))))


def step_snapshot(args: argparse.Namespace) -> None:
    _layers.write_snapshot(Path(args.root), Path(args.out))


def step_split(args: argparse.Namespace) -> None:
    files, size, gone = _layers.split(Path(args.root), _layers.read_snapshot(Path(args.since)), Path(args.out))
    print(f"the project's own layer: {files} files, {size / 1e6:.1f} MB")
    if gone:
        # They stay in the image (the lower layer has them): only a project install that
        # replaces one of flowrig's pinned dependencies could do this.
        more = f" and {len(gone) - 5} more" if len(gone) > 5 else ""
        print(f"removed by the project's install but kept in the image: {', '.join(gone[:5])}{more}")


def step_add_path(args: argparse.Namespace) -> None:
    """Put a directory on a venv's ``sys.path`` with a ``.pth`` file."""
    site = site_packages(Path(args.venv))
    (site / "flowrig-app.pth").write_text(f"{args.directory}\n")


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
    architecture: str = "",
    gpu: str = "",
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
    architecture
        What the build ran on (``platform.machine()``, emulated or not), as image
        platforms name it: what the image's code runs on.
    gpu
        The ``GPU`` build argument: the runtime installed (``cuda12``), empty for none.
    """
    manifest = {
        "schema": 1,
        "project": {"name": project_name, "config": _rules.without_option_values(config)},
        "base_image": base_image,
        "versions": versions,
        "tls_mode": tls_mode,
        "tls": "per-run" if tls_mode == "per-run" else "image-local",
        "architecture": ARCHITECTURES.get(architecture, architecture),
    }
    if gpu:
        manifest["gpu"] = {"runtime": gpu, "packages": list(GPU_REQUIREMENTS.get(gpu, ()))}
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
    import platform

    manifest = build_manifest(config, name, versions, args.base_image, context, args.tls_mode,
                              architecture=platform.machine(), gpu=args.gpu)
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
    p.add_argument("--gpu", default="", help="a GPU runtime whose wheels to install (cuda12)")
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
    p.set_defaults(func=_install.step_install)

    p = steps.add_parser("install-self", help="install flowrig offline into its own directory")
    p.add_argument("--pip", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("source")
    p.set_defaults(func=_install.step_install_self)

    p = steps.add_parser("prune", help="drop what a runtime never needs from a venv")
    p.add_argument("venv")
    p.add_argument("--strip", choices=("auto", "off"), default="auto",
                   help="strip shared objects where that changes nothing the loader maps (auto)")
    p.add_argument("--keep", help="a snapshot whose paths stay as they are (a lower layer's)")
    p.set_defaults(func=step_prune)

    p = steps.add_parser("imports", help="list the modules a project's code imports")
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=step_imports)

    p = steps.add_parser("snapshot", help="record every path of a folder, for split")
    p.add_argument("root")
    p.add_argument("--out", required=True)
    p.set_defaults(func=step_snapshot)

    p = steps.add_parser("split", help="copy what changed since a snapshot into a tree for COPY onto /")
    p.add_argument("root")
    p.add_argument("--since", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=step_split)

    p = steps.add_parser("add-path", help="put a directory on a venv's sys.path")
    p.add_argument("venv")
    p.add_argument("directory")
    p.set_defaults(func=step_add_path)

    p = steps.add_parser("compile", help="bytecode for the modules the image imports")
    p.add_argument("--python", required=True)
    p.add_argument("--root", action="append", required=True, help="compile files under here")
    p.add_argument("--all", action="append", help="directory to compile completely")
    p.add_argument("--modules-from", help="a file of more module names (whitespace-separated)")
    p.add_argument("--soft", action="store_true",
                   help="a module that does not import is reported, not an error (the project's)")
    p.add_argument("modules", nargs="*")
    p.set_defaults(func=_install.step_compile)

    p = steps.add_parser("manifest", help="write the image manifest")
    p.add_argument("--python", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--project-name")
    p.add_argument("--context-manifest")
    p.add_argument("--base-image", default="")
    p.add_argument("--tls-mode", default="baked")
    p.add_argument("--gpu", default="")
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
    except StepFailed as exc:
        if exc.line:
            print(f"{ERROR_PREFIX if exc.code == 2 else FAILURE_PREFIX}{exc.line}", file=sys.stderr, flush=True)
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
