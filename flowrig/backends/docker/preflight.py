"""The ``docker`` backend's preflight checks: the image is on this machine's engine
(nothing is ever pulled), and built for the engine's architecture."""

from __future__ import annotations

from typing import Any

from flowrig.backends.preflight import Check, PreflightPlan
from flowrig.errors import BadInput

#: The engine's ``Architecture`` (the kernel's name) -> the name image platforms use.
ENGINE_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def docker_checks(plan: PreflightPlan) -> list[Check]:
    """The image present locally, and of the engine's architecture.

    Raises
    ------
    InfrastructureError
        The engine does not answer.
    """
    from flowrig.containers.engine.client import connect
    from flowrig.containers.engine.images import image_attributes

    image = plan.image or ""
    if not image:
        return [Check("image", "(none)", False, "the docker backend needs an image",
                      "pass --image TAG, or build one with flowrig build")]
    client = connect()
    try:
        attributes = image_attributes(client, image)
    except BadInput as exc:
        return [Check("image", image, False, f"not on this machine's Docker engine ({exc})",
                      f"build it with flowrig build PROJECT --tag {image}")]
    engine = str(client.info().get("Architecture", ""))
    wanted = ENGINE_ARCHITECTURES.get(engine, engine)
    held = str(attributes.get("Architecture", ""))
    checks = [Check("image", image, True, "on this machine's Docker engine"), *_gpu_checks(client, plan)]
    if not held or not wanted:
        return checks + [Check("image-arch", image, None, "the image or the engine names no architecture: "
                               "not checked")]
    if held != wanted:
        return checks + [Check("image-arch", image, False, f"built for linux/{held}, the engine runs {engine} "
                               "(emulated, if at all: slow)", f"build it here for linux/{wanted} (flowrig build)")]
    return checks + [Check("image-arch", image, True, f"linux/{held}, as the engine")]


def _gpu_checks(client: Any, plan: PreflightPlan) -> list[Check]:
    """The engine's GPU runtime, when a worker group asks for GPUs."""
    from flowrig.backends.docker.group_workers import GPU_RUNTIME_FIX, missing_gpu_runtime

    wanting = [group for group in plan.groups if group.gpu]
    if not wanting:
        return []
    problem = missing_gpu_runtime(client, wanting)
    if problem is not None:
        return [Check("gpu-runtime", wanting[0].name, False, problem, GPU_RUNTIME_FIX)]
    return [Check("gpu-runtime", wanting[0].name, True, "the engine has NVIDIA's runtime")]
