"""The image's Dockerfile: where to find it, and its variant for legacy builders.

The Dockerfile at the repository root is the only one. A wheel ships it as package data
(``flowrig/builder/Dockerfile``, force-included by ``pyproject.toml``); a source
checkout reads it from the repository root.

BuildKit is needed for ``RUN --mount`` (pip's CA bundle as a secret, a wheel cache).
Legacy builders get the same file with the mounts removed and, when a CA bundle is
given, the ``#LEGACY`` line turned into a COPY of the bundle into the ``build`` stage,
which the final stage never copies from.
"""

from __future__ import annotations

import re
from pathlib import Path

from flowrig.errors import InfrastructureError

#: Name of the Dockerfile in a context, and of the CA bundle a legacy build copies.
DOCKERFILE = "Dockerfile"
LEGACY_DOCKERFILE = "Dockerfile.legacy"
LEGACY_PIP_CA = "pip-ca.crt"

_PACKAGE_DIR = Path(__file__).resolve().parent
# One `--mount=...` flag and the line continuation that may follow it.
_MOUNT = re.compile(r"--mount=\S+[ \t]*(?:\\\n[ \t]*)?")
_LEGACY_LINE = re.compile(r"^#LEGACY (.*)$", re.MULTILINE)


#: flowrig's lock (uv.lock) exported for pip; every install of an image build is pinned by it.
CONSTRAINTS = "constraints.txt"


def _shipped(name: str, what: str) -> Path:
    """A file a wheel ships as package data and a checkout keeps at its root."""
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parents[1] / name):
        if candidate.is_file():
            return candidate
    raise InfrastructureError(f"flowrig's {what} is missing from this installation: reinstall flowrig")


def dockerfile_path() -> Path:
    """Path of the image's Dockerfile: the packaged copy, else the checkout's root one.

    Raises
    ------
    InfrastructureError
        Neither exists (a broken installation).
    """
    return _shipped(DOCKERFILE, "Dockerfile")


def constraints_path() -> Path:
    """Path of ``constraints.txt``: the packaged copy, else the checkout's root one.

    Raises
    ------
    InfrastructureError
        Neither exists (a broken installation).
    """
    return _shipped(CONSTRAINTS, "constraints.txt (its lock)")


def dockerfile_text() -> str:
    """Text of the image's Dockerfile."""
    return dockerfile_path().read_text(encoding="utf-8")


def needs_buildkit(text: str) -> bool:
    """Whether a Dockerfile uses ``RUN --mount``, which legacy builders reject."""
    return _MOUNT.search(text) is not None


def for_legacy_builder(text: str, *, pip_ca: bool) -> str:
    """The Dockerfile for a builder without BuildKit.

    Parameters
    ----------
    text
        The Dockerfile (BuildKit form).
    pip_ca
        Whether the context carries :data:`LEGACY_PIP_CA`: its ``#LEGACY`` lines become
        instructions; otherwise they are dropped.

    Returns
    -------
    str
        The same Dockerfile without ``--mount`` flags.
    """
    text = _MOUNT.sub("", text)
    replacement = r"\1" if pip_ca else ""
    return _LEGACY_LINE.sub(replacement, text)
