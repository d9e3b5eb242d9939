"""Defaults of the builder: the base image, context layout, labels, the Docker client."""

from __future__ import annotations

#: Base image when ``--base-image`` is not given (the Dockerfile's default too).
BASE_IMAGE = "python:3.12-slim"
#: Image label holding the content hash of the build context an image was built from;
#: an image whose label matches a freshly rendered context needs no rebuild.
IMAGE_CONTEXT_LABEL = "flowrig.context-hash"
#: Where a rendered build context keeps the flow project and the TLS files (the
#: Dockerfile's PROJECT build argument and its ``tls/`` source).
CONTEXT_PROJECT_DIR = "project"
CONTEXT_TLS_DIR = "tls"
#: Modification time (seconds since the epoch, 2000-01-01) given to every file of a
#: rendered context, so identical inputs give identical contexts and a warm cache.
CONTEXT_MTIME = 946684800
#: Names never copied from a flow project into a context (caches, VCS data, virtual
#: environments), besides credential files (``flowrig.project.build_rules``, skipped with
#: a warning) and what the project's own ``.dockerignore`` excludes.
CONTEXT_SKIP_NAMES = (
    "__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints", ".DS_Store",
)
CONTEXT_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info", "~", ".swp")
#: BuildKit secret id under which a .netrc with a private index's credentials reaches
#: the install of the project's requirements (``--pip-netrc``).
PIP_NETRC_SECRET_ID = "pip-netrc"
#: Docker client the builder prefers; ``FLOWRIG_DOCKER`` names another. When it cannot
#: use BuildKit, other ``docker`` executables on PATH are tried before the legacy builder.
DOCKER_CLIENT = "docker"
#: Output lines of a failed ``docker build`` shown above its one-line error.
BUILD_LOG_TAIL = 25
