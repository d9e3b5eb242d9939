"""The bridge networks a run's containers meet on."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from flowrig.containers.labels import labels
from flowrig.containers.owner import LABEL_OWNER, current_label
from flowrig.errors import InfrastructureError, one_line

if TYPE_CHECKING:
    from docker import DockerClient


def create_network(client: "DockerClient", name: str, run_id: str) -> str:
    """Create a run's bridge network (user-defined: containers resolve names); its id."""
    import docker

    # The owner label: a leftovers command leaves the network of a live run alone.
    owned = {**labels(run_id, "network"), LABEL_OWNER: current_label()}
    try:
        network = client.networks.create(name, driver="bridge", labels=owned, check_duplicate=True)
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot create Docker network {name}: {one_line(exc)}") from None
    return network.id


def ensure_network(client: "DockerClient", name: str, network_labels: dict[str, str]) -> str:
    """The id of the user-defined bridge network ``name``, created when missing.

    Invocations started together may each create one (Docker checks names only
    loosely): all of them use the oldest, and spare ones are removed.
    """

    def named() -> list[Any]:
        # The name filter matches substrings; only the exact name counts.
        found = [network for network in client.networks.list(names=[name]) if network.name == name]
        return sorted(found, key=lambda network: (network.attrs.get("Created", ""), network.id))

    found = named()
    if not found:
        client.networks.create(name, driver="bridge", labels=network_labels, check_duplicate=True)
        found = named()
    for spare in found[1:]:
        with contextlib.suppress(Exception):  # someone already joined it; it does no harm
            spare.remove()
    return found[0].id
