"""Address helpers shared by the backends and the run's API."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback_url(url: str | None) -> bool:
    """Whether ``url`` names this machine's loopback, which containers cannot reach."""
    host = urlparse(url).hostname if url else None
    return host in LOOPBACK_HOSTS


def own_address() -> str:
    """This machine's (or container's) address as its own host name resolves it."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()
