"""Reaching the engine, and the one-line errors every part of it words the same way."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flowrig.errors import BadInput, InfrastructureError, one_line

if TYPE_CHECKING:
    from docker import DockerClient

logger = logging.getLogger("flowrig.docker")

#: Last log lines of a failed container folded into its one-line error message.
LOG_TAIL = 5


def log_tail(text: str, lines: int = LOG_TAIL, width: int = 400) -> str:
    """The last non-empty log lines folded into one line for an error message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    folded = " | ".join(kept) or "no output"
    return folded if len(folded) <= width else "..." + folded[-(width - 3):]


def connect(timeout: int = 60) -> "DockerClient":
    """A client of the Docker engine named by the environment (``DOCKER_HOST``).

    Raises
    ------
    InfrastructureError
        When the engine does not answer.
    """
    try:
        import docker
    except ImportError:
        raise BadInput("the docker backend needs the Docker SDK for Python: pip install docker") from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise InfrastructureError(
            f"Docker is not reachable ({one_line(exc)}): start the Docker daemon or set DOCKER_HOST"
        ) from None
    return client


def image_not_found(image: str) -> BadInput:
    # Nothing is ever pulled: images come from flowrig build on this machine.
    return BadInput(f"image {image!r} not found: build it with flowrig build PROJECT --tag {image}")
