"""Containers' output copied to this process's streams as it comes."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from docker.models.containers import Container


def _emit(target: TextIO, data: bytes) -> None:
    """Write ``data`` to ``target`` as bytes when it has a buffer (so no decoding splits a
    character across chunks), else as text; then flush."""
    if not data:
        return
    sink = getattr(target, "buffer", None)
    if sink is not None:
        sink.write(data)
    else:
        target.write(data.decode(errors="replace"))
    target.flush()


class StreamFilter(Protocol):
    """What :class:`LogPump` runs a stream through (a control channel sharing it)."""

    def feed(self, chunk: bytes) -> bytes:
        """The output ready to copy after ``chunk``."""

    def end(self) -> bytes:
        """What is left to copy once the stream ended."""


class LogPump:
    """Copies containers' output to this process's streams as it comes, in threads.

    Parameters
    ----------
    prefix
        Put ``"<prefix> | "`` in front of each line (``None``: copy bytes as they are).
    """

    def __init__(self, prefix: bool = False) -> None:
        self._threads: list[tuple[str, threading.Thread]] = []
        self._lock = threading.Lock()
        self._prefix = prefix

    def follow(self, container: "Container", label: str = "", *, stdout: TextIO | None = None,
               stderr: TextIO | None = None, both_to: TextIO | None = None,
               stdout_filter: StreamFilter | None = None) -> None:
        """Stream ``container``'s output: its stdout and stderr to ours, or both to one stream.

        ``stdout_filter`` gets its stdout first (a control channel sharing the stream)
        and says what of it to copy.
        """
        if both_to is not None:
            self._start(container, label, both_to, stdout=True, stderr=True)
            return
        self._start(container, label, stdout or sys.stdout, stdout=True, stderr=False, stream_filter=stdout_filter)
        self._start(container, label, stderr or sys.stderr, stdout=False, stderr=True)

    def _start(self, container: "Container", label: str, target: TextIO, *, stdout: bool, stderr: bool,
               stream_filter: StreamFilter | None = None) -> None:
        thread = threading.Thread(
            target=self._copy, args=(container, label, target, stdout, stderr, stream_filter), daemon=True
        )
        thread.start()
        self._threads.append((label, thread))

    def _copy(self, container: "Container", label: str, target: TextIO, stdout: bool, stderr: bool,
              stream_filter: StreamFilter | None = None) -> None:
        pending = b""
        with contextlib.suppress(Exception):  # the container may vanish mid-stream
            for chunk in container.logs(stream=True, follow=True, stdout=stdout, stderr=stderr):
                if stream_filter is not None:
                    _emit(target, stream_filter.feed(chunk))
                    continue
                if not self._prefix:
                    _emit(target, chunk)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                with self._lock:
                    for line in lines:
                        target.write(f"{label} | {line.decode(errors='replace')}\n")
                    target.flush()
        if stream_filter is not None:
            # The last line, unfinished: a control message in it is taken all the same.
            _emit(target, stream_filter.end())
        elif pending and self._prefix:
            with self._lock:
                target.write(f"{label} | {pending.decode(errors='replace')}\n")
                target.flush()

    def join(self, timeout: float, label: str | None = None) -> None:
        """Wait up to ``timeout`` seconds for every stream (or those of ``label``) to end."""
        deadline = time.monotonic() + timeout
        for name, thread in self._threads:
            if label is None or name == label:
                thread.join(max(deadline - time.monotonic(), 0))
