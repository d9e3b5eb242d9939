"""Whether the runner can reach a scheduler VM at its address, told apart early.

A VM with a private address is reachable only from inside the run's network (or
through a VPN or bastion). A VM that boots answers a connection attempt with a refusal
(its kernel is up, nothing listens yet) long before its scheduler listens; a runner
outside the network sees nothing at all. :func:`wait_reachable` waits for either
answer and fails, with the supported layouts, when nothing answers in time.
"""

from __future__ import annotations

import errno
import socket
import time

from flowrig.errors import InfrastructureError

#: Seconds from a scheduler VM's start until it must at least refuse a connection.
REACH_TIMEOUT = 240.0
#: What a runner needs in order to reach private addresses (README: "VM backends").
LAYOUTS = (
    "run the runner inside the cloud network (as an ECS task, a VM or a CI runner there), "
    "or reach it through a VPN or bastion, or set use_private_ip = false with your own "
    "firewall rule for this runner"
)

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


def probe(host: str, port: int, timeout: float = 3.0) -> str:
    """One connection attempt: ``open``, ``refused`` (the host answered), ``unreachable``
    (no route to it) or ``silent`` (no answer within ``timeout``)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "silent"
    except OSError as exc:
        return "unreachable" if exc.errno in _UNREACHABLE else "silent"


def wait_reachable(host: str, port: int, deadline: float, what: str, network: str) -> str:
    """Return once ``host:port`` answers (``open`` or ``refused``), else raise.

    Raises
    ------
    InfrastructureError
        At once when there is no route to ``host``; when nothing answered by ``deadline``
        (``time.monotonic()``). The message names the address and the layouts that work.
    """
    while True:
        state = probe(host, port, timeout=max(min(3.0, deadline - time.monotonic()), 0.2))
        if state in ("open", "refused"):
            return state
        if state == "unreachable" or time.monotonic() >= deadline:
            why = "there is no route to it" if state == "unreachable" else "nothing answered from there"
            raise InfrastructureError(
                f"this runner cannot reach {what} at {host}:{port} ({why}): it is in {network}; {LAYOUTS}"
            )
        time.sleep(1.0)
