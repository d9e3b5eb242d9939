"""Render a Docker build context for a flow project: pure data, no Docker.

A context is a mapping of relative path -> (bytes, mode) plus build arguments::

    Dockerfile                      the image's Dockerfile (flowrig/builder/dockerfile.py)
    constraints.txt                 flowrig's lock, exported for pip: pins every install
    pyproject.toml  README.md       flowrig's source, installed into the image
    flowrig/...
    project/...                     the flow project (its .dockerignore honoured)
                                    (flowrig's files and the project's: context_files.py)
    tls/ca.crt tls/tls.crt tls/tls.key   only with ``--certs DIR`` (``--tls baked``)
    manifest.json                   project config, the flow's facts, versions; no build time

Rendering is deterministic (sorted entries, fixed modes, and a fixed mtime when
written), so the same inputs give the same bytes and Docker's cache stays warm, and the
content hash labels the image. A context never holds a private key other than the
leaf's: :func:`render_context` and :func:`write_context` refuse one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from flowrig import layout
from flowrig.builder import defaults
from flowrig.builder.context_files import ContextFile, flowrig_source, project_files
from flowrig.builder.dockerfile import CONSTRAINTS, DOCKERFILE, constraints_path, dockerfile_text
from flowrig.errors import BadInput
from flowrig.project.defaults import PROJECT_FILE

# hashlib and importlib.metadata are imported where they are used: `flowrig --help`
# imports this package and should not pay for them.

#: Name of the manifest in a context (copied into the image as layout.IMAGE_MANIFEST).
MANIFEST = "manifest.json"
#: Distributions whose versions on the rendering host the manifest records.
_BUILDER_DISTRIBUTIONS = ("flowrig", "prefect", "prefect-dask", "distributed")


@dataclass(frozen=True)
class BuildContext:
    """A rendered build context.

    Attributes
    ----------
    files
        Relative POSIX path -> :class:`ContextFile`, sorted by path.
    build_args
        ``--build-arg`` values for the Dockerfile, sorted by name.
    skipped
        Credential files the project holds that were left out.
    """

    files: Mapping[str, ContextFile]
    build_args: Mapping[str, str] = field(default_factory=dict)
    #: Credential files and directories of the project left out (context paths; a
    #: directory ends with "/"): the CLI warns about each. Not part of :attr:`digest`.
    skipped: tuple[str, ...] = ()
    #: Project files too large to be searched for credentials by value
    #: (:data:`flowrig.project.secret_scan.SCAN_MAX_BYTES`; the key scan read them):
    #: the CLI names each. Not part of :attr:`digest`.
    unscanned: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(sorted(self.files.items()))))
        object.__setattr__(
            self, "build_args", MappingProxyType(dict(sorted(self.build_args.items())))
        )

    @property
    def digest(self) -> str:
        """SHA-256 over every path, mode, content and build argument (hex)."""
        import hashlib

        hasher = hashlib.sha256()
        for name, value in self.build_args.items():
            hasher.update(f"arg\0{name}\0{value}\0".encode())
        for path, item in self.files.items():
            hasher.update(f"file\0{path}\0{item.mode:o}\0{len(item.data)}\0".encode())
            hasher.update(item.data)
        return hasher.hexdigest()

    @property
    def makes_its_own_ca(self) -> bool:
        """Whether the build makes the image's CA (baked, no ``tls/``): every build must
        then pass a fresh ``TLS_NONCE``, or Docker's cache would reuse a CA."""
        return self.build_args.get("TLS_MODE", layout.TLS_BAKED) == layout.TLS_BAKED and not any(
            path.startswith(f"{defaults.CONTEXT_TLS_DIR}/") for path in self.files
        )

    @property
    def dockerfile(self) -> str:
        """The context's Dockerfile text."""
        return self.files[DOCKERFILE].data.decode("utf-8")

    @property
    def manifest(self) -> dict[str, Any]:
        """The context's ``manifest.json``, parsed."""
        return json.loads(self.files[MANIFEST].data)


def render_context(
    project_dir: str | Path,
    *,
    tls_dir: str | Path | None = None,
    base_image: str | None = None,
    tls_mode: str = layout.TLS_BAKED,
    platform: str | None = None,
    gpu: str | None = None,
) -> BuildContext:
    # long: the public API's numpy-style docstring is 42 lines; the code is 43.
    """Render the build context of a flow project's image.

    Parameters
    ----------
    project_dir
        The flow project: a directory holding ``flowrig.toml``.
    tls_dir
        A certificate directory (``flowrig certs generate --out DIR``). Only ``ca.crt``,
        ``tls.crt`` and ``tls.key`` are taken, after :func:`flowrig.certs.check`. When
        omitted, the image makes its own CA and leaf at build time and keeps no CA key.
    base_image
        The ``BASE_IMAGE`` build argument; :data:`flowrig.builder.defaults.BASE_IMAGE` when
        omitted.
    tls_mode
        The ``TLS_MODE`` build argument: ``baked`` (certificates in the image: those of
        ``tls_dir``, else a CA made by and for this build) or ``per-run`` (none; each
        run delivers its own to its roles).
    platform, gpu
        The ``PLATFORM`` (``linux/arm64``, also ``--platform``) and ``GPU`` (``cuda12``)
        build arguments; none when not given, so a plain build's hash stays as it was.

    Returns
    -------
    BuildContext

    Raises
    ------
    BadInput
        The project or its ``flowrig.toml`` is missing or invalid, the requirements file
        it names does not exist, the certificates do not check out, or the context
        would contain a private key that is not the leaf's.
    """
    if tls_mode not in layout.TLS_MODES:
        raise BadInput(f"--tls {tls_mode!r} is not a TLS mode: use one of {', '.join(layout.TLS_MODES)}")
    if tls_mode == layout.TLS_PER_RUN and tls_dir is not None:
        raise BadInput(
            "--certs bakes certificates into the image, and a per-run image carries none: "
            "drop --certs, or build with --tls baked"
        )
    project = Path(project_dir)
    if not project.is_dir():
        raise BadInput(
            f"flow project {project} does not exist: pass the directory that holds "
            f"{PROJECT_FILE}"
        )
    config = _project_config(project)
    files: dict[str, ContextFile] = {
        DOCKERFILE: ContextFile(dockerfile_text().encode("utf-8")),
        CONSTRAINTS: ContextFile(constraints_path().read_bytes()),
    }
    files.update(flowrig_source())
    skipped: list[str] = []
    for relative, item in project_files(project, skipped):
        files[f"{defaults.CONTEXT_PROJECT_DIR}/{relative}"] = item
    if tls_dir is not None:
        files.update(_tls_files(Path(tls_dir)))
    files[MANIFEST] = ContextFile(
        _manifest_bytes(project, config, tls="provided" if tls_dir is not None else
                        "per-run" if tls_mode == layout.TLS_PER_RUN else "image-local")
    )
    context = BuildContext(
        files=files,
        build_args={
            "BASE_IMAGE": base_image or defaults.BASE_IMAGE,
            "PROJECT": defaults.CONTEXT_PROJECT_DIR,
            "IMAGE_VERSION": _version("flowrig") or "",
            "TLS_MODE": tls_mode,
            **({"PLATFORM": platform} if platform else {}),
            **({"GPU": gpu} if gpu else {}),
        },
        skipped=tuple(f"{defaults.CONTEXT_PROJECT_DIR}/{name}" for name in skipped),
    )
    refuse_private_keys(context)
    unscanned = refuse_credentials(context, _requirement_files(project, config))
    return BuildContext(
        files=context.files, build_args=context.build_args, skipped=context.skipped, unscanned=unscanned
    )


def write_context(context: BuildContext, directory: str | Path) -> Path:
    """Write a context to a directory, normalised for a warm cache.

    Files get their context mode and, like directories, the fixed mtime
    :data:`flowrig.builder.defaults.CONTEXT_MTIME`.

    Parameters
    ----------
    context
        What :func:`render_context` returned.
    directory
        Created when missing; must be empty otherwise.

    Returns
    -------
    Path
        The directory.

    Raises
    ------
    BadInput
        The directory is not empty, or the context holds a private key that is not
        the leaf's (checked before anything is written).
    """
    refuse_private_keys(context)
    refuse_credentials(context)
    root = Path(directory)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise BadInput(f"{root} is not an empty directory: pass a new or empty one")
    root.mkdir(parents=True, exist_ok=True)
    directories = {root}
    for relative, item in context.files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        directories.update(p for p in path.parents if root in p.parents or p == root)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, item.mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(item.data)
        os.chmod(path, item.mode)
        os.utime(path, (defaults.CONTEXT_MTIME, defaults.CONTEXT_MTIME))
    for path in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        os.chmod(path, 0o755)
        os.utime(path, (defaults.CONTEXT_MTIME, defaults.CONTEXT_MTIME))
    return root


def refuse_private_keys(context: BuildContext) -> None:
    """Raise when a context holds a private key other than the image's own leaf key.

    Every file is scanned (:func:`flowrig.certs.scan.private_keys_in_bytes`: PEM, DER,
    PKCS#8, PKCS#12, OpenSSH, base64 blocks; any size). Exempt are ``tls/tls.key``
    when it is the key of ``tls/tls.crt`` (``--certs``), and the project files that
    ``build.allow_private_keys`` in ``flowrig.toml`` names. A file named ``ca.key``
    is refused whatever it holds.

    Raises
    ------
    BadInput
        Naming every offending path of the context and the opt-in.
    """
    from flowrig.certs.scan import private_keys_in_bytes

    allowed = {f"{defaults.CONTEXT_PROJECT_DIR}/{name}" for name in _allowed_private_keys(context)}
    leaf_key = f"{defaults.CONTEXT_TLS_DIR}/{layout.LEAF_KEY}"
    found: list[str] = []
    for path, item in context.files.items():
        if path in allowed:
            continue
        if Path(path).name == layout.CA_KEY:
            found.append(path)
            continue
        keys = list(private_keys_in_bytes(item.data))
        if keys and not (path == leaf_key and _is_leaf_key(context, keys)):
            found.append(path)
    if found:
        raise BadInput(
            f"the build context would contain a private key that is not the image's leaf key "
            f"({', '.join(found)}): remove it (pass certificates with --certs DIR), or, if the image "
            f"must carry it, list it under [build] allow_private_keys in {PROJECT_FILE}"
        )


#: How ``flowrig build`` gives pip an index's credentials instead.
PIP_NETRC_HINT = "flowrig build --pip-netrc FILE"


def refuse_credentials(context: BuildContext, requirements: Iterable[str] = ()) -> tuple[str, ...]:
    """Raise when a project file of the context holds a credential by value.

    Every project file up to :data:`flowrig.project.secret_scan.SCAN_MAX_BYTES` is
    searched (:mod:`flowrig.project.secret_scan`: URLs with credentials, tokens of
    known shapes, credential file formats, secret values in configuration files);
    the entries of ``[build] allow_credentials`` are exempt. ``requirements`` are the
    project's requirements files (relative to the project), whose credentials are an
    index's.

    Returns
    -------
    tuple of str
        The context paths of the files too large to be searched.

    Raises
    ------
    BadInput
        Naming each file and line (never the value), the way to pass it instead, and
        the opt-out.
    """
    from flowrig.project import secret_scan

    prefix = f"{defaults.CONTEXT_PROJECT_DIR}/"
    allow = _build_list(context, "allow_credentials")
    index = frozenset(requirements) or frozenset({_build_value(context, "requirements") or "requirements.txt"})
    found: list[secret_scan.Finding] = []
    unscanned: list[str] = []
    for path, item in context.files.items():
        if not path.startswith(prefix) or path == f"{prefix}{PROJECT_FILE}":
            continue
        if len(item.data) > secret_scan.SCAN_MAX_BYTES:
            unscanned.append(path)
            continue
        relative = path[len(prefix):]
        found.extend(
            f for f in secret_scan.findings_in_bytes(item.data, relative, index)
            if not secret_scan.allowed(f, allow)
        )
    if found:
        raise BadInput(secret_scan.describe(found, prefix=prefix, netrc_hint=PIP_NETRC_HINT))
    return tuple(unscanned)


def _requirement_files(project: Path, config: dict[str, Any]) -> list[str]:
    """The project's requirements file and every file it includes, relative to it."""
    from flowrig.project import build_rules

    path = build_rules.requirements_path(project, config.get("requirements"))
    if path is None:
        return []
    read: list[Path] = []
    build_rules.flatten_requirements(path, project, files=read)
    root = project.resolve()
    return [p.relative_to(root).as_posix() for p in read if root in p.parents]


def _build_value(context: BuildContext, key: str) -> Any:
    try:
        return context.manifest["project"]["config"].get(key)
    except (KeyError, ValueError, AttributeError):
        return None


def _build_list(context: BuildContext, key: str) -> list[str]:
    """A list of ``[build]`` from the context's manifest (what the project wrote)."""
    build = _build_value(context, "build") or {}
    names = build.get(key, []) if isinstance(build, dict) else []
    return [name for name in names if isinstance(name, str)]


def _allowed_private_keys(context: BuildContext) -> list[str]:
    try:
        config = context.manifest["project"]["config"]
    except (KeyError, ValueError):
        return []
    names = config.get("build", {}).get("allow_private_keys", [])
    return [os.path.normpath(name).lstrip("/") for name in names if isinstance(name, str)]


def _is_leaf_key(context: BuildContext, keys: list[Any]) -> bool:
    """Whether every key found in ``tls/tls.key`` is the key of ``tls/tls.crt``."""
    from cryptography import x509

    from flowrig.certs import validation

    cert = context.files.get(f"{defaults.CONTEXT_TLS_DIR}/{layout.LEAF_CERT}")
    if cert is None:
        return False
    try:
        leaf = x509.load_pem_x509_certificate(cert.data)
    except ValueError:
        return False
    if validation.is_ca(leaf):
        return False
    public = validation.public_der(leaf)
    return all(key.public == public for key in keys)


# --- the flow project ------------------------------------------------------------------


def _project_config(project: Path) -> dict[str, Any]:
    """Parse and check ``flowrig.toml`` the way the build will (and the runner does)."""
    from flowrig.project import load_project

    # The same rules as the image build's (flowrig.project.build_rules), one set of them.
    return dict(load_project(project).raw)


# --- certificates and manifest ---------------------------------------------------------


def _tls_files(directory: Path) -> dict[str, ContextFile]:
    """ca.crt, tls.crt and tls.key of a checked certificate directory (nothing else)."""
    from flowrig.certs import check

    check(directory)
    modes = {layout.CA_CERT: 0o644, layout.LEAF_CERT: 0o644, layout.LEAF_KEY: 0o600}
    return {
        f"{defaults.CONTEXT_TLS_DIR}/{name}": ContextFile((directory / name).read_bytes(), mode)
        for name, mode in modes.items()
    }


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _flow_facts(project: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The flow's name, entry point and parameter schema, read from its
    source (:mod:`flowrig.project.flow_facts`): what ``flowrig deploy`` and a deployment's
    run check the image against. A flow whose facts cannot be read without importing it
    still builds (``flowrig deploy`` then names the problem)."""
    from flowrig.project.flow_facts import flow_facts_from_source

    path, _, function = str(config["flow"]).rpartition(":")
    try:
        source = (project / path).read_bytes()
        facts = flow_facts_from_source(source, function, str(config["flow"]), filename=Path(path).name)
        return facts.for_manifest()
    except (BadInput, OSError, UnicodeDecodeError):
        return None


def _manifest_bytes(project: Path, config: dict[str, Any], *, tls: str) -> bytes:
    """manifest.json: the project and what rendered it. No time: contexts stay
    reproducible; of ``[cluster.options]`` only the keys, never a value."""
    from flowrig.project.build_rules import without_option_values

    manifest = {
        "schema": 1,
        "project": {
            "name": config.get("name") or project.resolve().name,
            "config": without_option_values(config),
        },
        "builder": {name: _version(name) for name in _BUILDER_DISTRIBUTIONS},
        "tls": tls,
    }
    facts = _flow_facts(project, config)
    if facts is not None:
        manifest["flow"] = facts
    return (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
