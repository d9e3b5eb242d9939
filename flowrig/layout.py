"""Fixed places: where an image keeps its TLS files and project, and where a host caches.

These paths are a contract between the builder (which writes them), the entrypoint
(which reads them in the image), task definitions and users' own scripts, so they
never move. Nothing here imports anything but the standard library.
"""

from __future__ import annotations

import os
from pathlib import Path

#: File names inside a certificate directory (``flowrig certs generate --out DIR``) and
#: inside the image's TLS directory. ``ca.key`` never enters an image.
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
LEAF_CERT = "tls.crt"
LEAF_KEY = "tls.key"

#: Where the image keeps its TLS files, its baked project and its manifest.
IMAGE_TLS_DIR = Path("/etc/flowrig/tls")
IMAGE_PROJECT_DIR = Path("/opt/flowrig/project")
IMAGE_MANIFEST = Path("/opt/flowrig/manifest.json")
#: The image's runtime user (non-root); the leaf key belongs to it.
IMAGE_USER = "flowrig"
IMAGE_UID = 10001

#: How an image gets its certificates (``flowrig build --tls``, the Dockerfile's
#: ``TLS_MODE``): ``baked`` into the image, or delivered to each role of a run at its
#: start (``per-run``; the image holds no private key). Recorded in the image's
#: manifest (``tls_mode``) and in its label :data:`IMAGE_TLS_MODE_LABEL`.
TLS_BAKED = "baked"
TLS_PER_RUN = "per-run"
TLS_MODES = (TLS_BAKED, TLS_PER_RUN)
IMAGE_TLS_MODE_LABEL = "flowrig.tls-mode"

#: Where a process finds its TLS files when not at the image's fixed place (a run's
#: delivered certificates, :mod:`flowrig.certs.delivery`).
TLS_DIR_ENV = "FLOWRIG_TLS_DIR"

#: Set in the image (Dockerfile ``ENV``): this process runs inside a flowrig image.
IN_IMAGE_ENV = "FLOWRIG_IN_IMAGE"

#: Set by the docker backend's host in the runner container it starts: the runner's
#: requests go over a control channel (:mod:`flowrig.backends.docker.control`), whose
#: stdout the entrypoint claims before anything else runs.
DOCKER_CONTROL_ENV = "FLOWRIG_DOCKER_CONTROL"


def in_image() -> bool:
    """Whether this process runs inside a flowrig image."""
    return bool(os.environ.get(IN_IMAGE_ENV))


def cache_dir() -> Path:
    """Directory for state reused across runs (the migrated Prefect database).

    ``FLOWRIG_HOME`` wins, then ``XDG_CACHE_HOME/flowrig``, then ``~/.cache/flowrig``.
    """
    if os.environ.get("FLOWRIG_HOME"):
        return Path(os.environ["FLOWRIG_HOME"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "flowrig"
