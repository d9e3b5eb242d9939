"""The run's image against its VMs' architectures, for the clouds whose registries flowrig
has no API of its own for (``gcp``: Artifact Registry and ``gcr.io``; ``azure``: ACR;
any other registry too).

The image's platforms are read from its registry by this machine's Docker engine
(:func:`~flowrig.containers.engine.images.registry_platforms`): with the user's own
``docker login`` or credential helper, as ``docker pull`` would, and nothing pulled. An
image the registry does not have is exit 2 before anything is created. When the
registry cannot be read (no engine here, no login, no route), the image's copy on this
engine tells its architecture, else it is not known and nothing is refused.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from flowrig.errors import BadInput

logger = logging.getLogger("flowrig.vm")


def image_architectures(image: str) -> tuple[str, ...]:
    """The architectures of the run's image (``amd64``, ``arm64``): its registry's
    manifest (an index's platforms, or a single manifest's config), else its copy on this
    machine's engine; empty when neither says.

    Raises
    ------
    BadInput
        The registry answers that it has no such image: naming it and the fix.
    """
    from flowrig.containers.engine import images

    if not image:
        return ()
    read = images.registry_platforms(image)
    if read.missing:
        raise BadInput(
            f"the image {image} is not in its registry ({read.why}): push it (flowrig build PROJECT --tag {image} "
            "--push, or docker push), or fix [cluster] image"
        )
    if read.archs:
        return read.archs
    local = images.local_architecture(image)
    if local:
        logger.info("the image's architecture is its local copy's (%s): its registry was not read (%s)",
                    local, read.why)
        return (local,)
    logger.warning("the image's architecture is not checked: its registry was not read (%s) and this engine "
                   "has no copy of %s", read.why, image)
    return ()


def check_arch(shape: Any, option: str, held: tuple[str, ...], image: str, noun: str,
               examples: Mapping[str, str]) -> None:
    """Refuse a VM type (``shape``: its ``name`` and ``arch``; ``noun``: what the cloud
    calls it) that runs none of the image's architectures ``held`` (empty: not known,
    nothing refused); ``examples``: types of each architecture to name in the fix.

    Raises
    ------
    BadInput
        Naming the type, both architectures, and the fix.
    """
    if not shape.arch or not held or shape.arch in held:
        return
    raise BadInput(
        f"{option} = {shape.name!r} runs linux/{shape.arch} but the image {image} is "
        f"linux/{', linux/'.join(held)}: use a {noun} for {held[0]} (e.g. {examples.get(held[0], '')}), or "
        f"build the image with flowrig build --platform linux/{shape.arch}"
    )
