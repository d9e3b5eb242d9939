"""Network stand-ins on loopback only: tests never send packets to made-up addresses."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from flowrig.backends.vm import scheduler_reach as reach


@contextmanager
def silent_loopback_port() -> Iterator[int]:
    """A loopback port where nothing answers, as for a runner outside a VM's network.

    A listening socket whose backlog is full drops further connection attempts (no
    refusal, no answer); it never accepts.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            while reach.probe("127.0.0.1", port, timeout=0.5) != "silent":
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
                assert len(fillers) < 64, "the backlog never filled"
            yield port
        finally:
            for filler in fillers:
                filler.close()
