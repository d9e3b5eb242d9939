"""The image's Dockerfile and the files a context adds next to it.

The Dockerfile at the repository root is the only one. A wheel ships it as package data
(``flowrig/builder/Dockerfile``, force-included by ``pyproject.toml``); a source
checkout reads it from the repository root. It builds with BuildKit and with the legacy
builder alike (no ``RUN --mount``), so ``flowrig build`` and a plain ``docker build``
from the repository run the same steps and share Docker's layer cache.

The one exception is a private index's ``.netrc``: a secret may reach a build step only
as a BuildKit secret mount, which the legacy builder cannot parse. So the file names the
secret's path, and :func:`with_pip_netrc` adds the mount for a build that is given one.
"""

from __future__ import annotations

import re
from pathlib import Path

from flowrig.builder import defaults
from flowrig.errors import InfrastructureError

#: Name of the Dockerfile in a context.
DOCKERFILE = "Dockerfile"
#: A CA bundle pip trusts during the build, at the context's root (``--pip-ca``): only
#: the Dockerfile's ``build`` stage copies it, and the image takes nothing else from there.
PIP_CA = "pip-ca.crt"

#: Where BuildKit mounts the .netrc secret; the Dockerfile's install of the project's
#: requirements names it (and no other step does).
PIP_NETRC_PATH = f"/run/secrets/{defaults.PIP_NETRC_SECRET_ID}"

_PACKAGE_DIR = Path(__file__).resolve().parent
# One RUN instruction with its continuation lines.
_RUN = re.compile(r"^RUN (?:[^\n]*\\\n)*[^\n]*", re.MULTILINE)


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


def with_pip_netrc(text: str) -> str:
    """The Dockerfile for a BuildKit build given a private index's ``.netrc`` (pure).

    The one RUN that names :data:`PIP_NETRC_PATH` (the install of the project's
    requirements) gets ``--mount=type=secret,id=pip-netrc``: the secret is a file there
    for that step only, and in no layer, cache entry or other step.

    Raises
    ------
    InfrastructureError
        Not exactly one RUN names the path (a Dockerfile that does not match this
        flowrig).
    """
    runs = [m for m in _RUN.finditer(text) if f"--pip-netrc {PIP_NETRC_PATH}" in m.group(0)]
    if len(runs) != 1:
        raise InfrastructureError(
            f"the Dockerfile has {len(runs)} install steps for a .netrc, not 1: reinstall flowrig"
        )
    start = runs[0].start() + len("RUN ")
    mount = f"--mount=type=secret,id={defaults.PIP_NETRC_SECRET_ID} \\\n    "
    return text[:start] + mount + text[start:]
