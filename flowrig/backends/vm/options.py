"""``[cluster.options]`` every VM backend understands, and the checks of names they share.

Keys keep dask-cloudprovider's names where they mean the same (``bootstrap``,
``env_vars``, ``use_private_ip``, ``docker_image`` refused for ``--image``); each
cloud's model adds its own (:mod:`.ec2`, :mod:`.azure`, :mod:`.gcp`).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal, Mapping

from pydantic import Field, StrictBool, StrictStr

from flowrig.backends.base import N_WORKERS_FIX, CloudOptions, Seconds, StringMap
from flowrig.backends.vm.scheduler_reach import REACH_TIMEOUT
from flowrig.errors import BadInput

#: Seconds from the first API call until the first worker joined: a VM boots, installs
#: Docker when it must, and pulls the image.
PROVISION_TIMEOUT = 900.0
#: Seconds teardown keeps retrying while the cloud still holds resources in use.
CLEANUP_TIMEOUT = 300.0


class VMOptions(CloudOptions):
    """What a project may set for the VMs of any cloud."""

    refused: ClassVar[Mapping[str, str]] = {
        "n_workers": N_WORKERS_FIX,
        "docker_image": "pass the image with --image or build one with flowrig build",
        "security": "mutual TLS is always on and comes from the run's certificates",
        "worker_class": "the image's worker role runs distributed's worker",
        "auto_shutdown": "flowrig always tears the run's VMs down",
    }

    provision_timeout: Seconds = Field(PROVISION_TIMEOUT, description="seconds until the first worker joined")
    cleanup_timeout: Seconds = Field(CLEANUP_TIMEOUT, description="seconds teardown keeps retrying")
    reach_timeout: Seconds = Field(
        REACH_TIMEOUT, description="seconds a scheduler VM may take to answer at its address at all"
    )
    scheduler_timeout: Seconds | None = Field(
        None, description="seconds a scheduler lives once no client is connected (its runner was lost)"
    )
    scheduler_address: StrictStr | None = Field(
        None, description="a running scheduler to use: no scheduler VM is made"
    )
    tls: Literal["per-run", "baked"] = Field(
        "per-run",
        description="per-run: the run's certificates through the cloud's secret store; baked: the image's own",
    )
    bootstrap: StrictBool = Field(
        True, description="install Docker at boot when the machine image has none; false: it has Docker"
    )
    use_private_ip: StrictBool = Field(True, description="reach the scheduler at its private address")
    dashboard: StrictBool = Field(False, description="open the scheduler's dashboard port to the run's network")
    registry_login: StrictBool = Field(
        True, description="log in to the cloud's private registry with the VM's identity when the image is there"
    )
    spot: StrictBool | Literal["fallback"] = Field(
        False,
        description="start the workers as the cloud's Spot VMs (EC2 Spot, GCP Spot, Azure Spot: cheaper; one taken "
        'back is replaced, on Spot first); `"fallback"`: on Spot, and on-demand when Spot has no capacity. '
        "The scheduler is never on Spot",
    )
    env_vars: StringMap = Field(default_factory=dict, description="the workers' environment (nothing secret)")
    tags: StringMap = Field(default_factory=dict, description="tags or labels on every resource of the run")
    scheduler_extra_args: list[StrictStr] = Field(
        default_factory=list, description="more command-line arguments of the scheduler (`dask scheduler`)"
    )
    worker_extra_args: list[StrictStr] = Field(
        default_factory=list, description="more command-line arguments of each worker (`dask worker`)"
    )


def check_name(what: str, value: str | None, pattern: str, example: str) -> None:
    """Refuse a region, zone or location that cannot be one.

    Raises
    ------
    BadInput
        One line naming the option, the value and a well-formed example.
    """
    if value is not None and not re.fullmatch(pattern, value):
        kind = what.replace("_", " ")
        raise BadInput(f"[cluster.options] {what} = {value!r} is not a {kind}: use one like {example!r}")
