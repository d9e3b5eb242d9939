"""The image's Dockerfile and the files a context adds next to it.

The Dockerfile at the repository root is the only one. A wheel ships it as package data
(``flowrig/builder/Dockerfile``, force-included by ``pyproject.toml``); a source
checkout reads it from the repository root. It builds with BuildKit and with the legacy
builder alike (no ``RUN --mount``), so ``flowrig build`` and a plain ``docker build``
from the repository run the same steps and share Docker's layer cache.
"""

from __future__ import annotations

from pathlib import Path

from flowrig.errors import InfrastructureError

#: Name of the Dockerfile in a context.
DOCKERFILE = "Dockerfile"
#: A CA bundle pip trusts during the build, at the context's root (``--pip-ca``): only
#: the Dockerfile's ``build`` stage copies it, and the image takes nothing else from there.
PIP_CA = "pip-ca.crt"

_PACKAGE_DIR = Path(__file__).resolve().parent


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
