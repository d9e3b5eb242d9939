"""Small helpers the backend modules share: error text, option checks, closing once."""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

from flowrig.errors import BadInput

#: Why ``n_workers`` is refused in ``[cluster.options]``, and where to set it instead.
N_WORKERS_FIX = "set n_workers or adapt in [cluster] (they are validated and clamped there)"


def one_line(exc: BaseException) -> str:
    """``exc`` as one line of at most 300 characters, for a one-line error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def positive_seconds(options: Mapping[str, Any], key: str, default: float) -> float:
    """``options[key]`` (else ``default``) as seconds.

    Raises
    ------
    BadInput
        When the value is not a number greater than 0.
    """
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadInput(f"[cluster.options] {key} = {value!r}: use a number of seconds > 0")
    return float(value)


def is_loopback_url(url: str | None) -> bool:
    """Whether ``url`` names this machine's loopback, which containers cannot reach."""
    from urllib.parse import urlparse

    host = urlparse(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1")


class CloseOnce:
    """Calls ``close`` the first time only; later calls do nothing.

    Makes a cluster's teardown a safe :attr:`StartedCluster.close
    <flowrig.backends.base.StartedCluster.close>`, which may be called more than once.
    """

    def __init__(self, close: Callable[[], Any]) -> None:
        self._close: Callable[[], Any] | None = close
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            close, self._close = self._close, None
        if close is not None:
            close()
