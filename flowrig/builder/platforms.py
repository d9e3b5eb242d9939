"""Platforms an image is built for, and the GPU runtime it may carry: names and checks
(pure, but for :func:`containerd_store`, which asks the engine).

An architecture has three spellings: the one image platforms use (``amd64``, ``arm64``),
the kernel's (``x86_64``, ``aarch64``: ``platform.machine()`` in the build, and the
engine's ``Architecture``) and ECS's (``X86_64``, ``ARM64``). flowrig records the first,
in the image's label :data:`ARCHITECTURE_LABEL` and its manifest.
"""

from __future__ import annotations

import re
import subprocess

# The build's own step installs them: its table is the one.
from flowrig.builder.buildsteps import GPU_REQUIREMENTS as GPU_REQUIREMENTS
from flowrig.errors import BadInput

#: The label that names the architecture an image was built for (``amd64``, ``arm64``).
ARCHITECTURE_LABEL = "org.flowrig.architecture"
#: The label that names the GPU runtime installed in the image (``cuda12``), when one is.
GPU_LABEL = "org.flowrig.gpu"
#: Kernel and ECS spellings -> the platform's.
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_PLATFORM = re.compile(r"^linux/(amd64|arm64)$")


def architecture(name: str) -> str:
    """``name`` in the platforms' spelling (``aarch64`` -> ``arm64``); unknown names as given."""
    return ARCHITECTURES.get(name.lower(), name.lower())


def parse_platforms(value: str | None) -> tuple[str, ...]:
    """``--platform linux/arm64[,linux/amd64]`` as a tuple (empty: the engine's own).

    Raises
    ------
    BadInput
        A platform flowrig's images are not built for, or one named twice.
    """
    if not value:
        return ()
    platforms = tuple(part.strip() for part in value.split(",") if part.strip())
    for platform in platforms:
        if not _PLATFORM.match(platform):
            raise BadInput(
                f"--platform {platform!r} is not a platform flowrig builds for: use linux/amd64, linux/arm64, "
                "or both (linux/amd64,linux/arm64)"
            )
    if len(set(platforms)) != len(platforms):
        raise BadInput(f"--platform {value!r} names a platform twice: name each once")
    return platforms


def check_builder(platforms: tuple[str, ...], *, buildkit: bool, client: str, multi_platform: bool) -> None:
    """Refuse a ``--platform`` the builder cannot build.

    Raises
    ------
    BadInput
        The legacy builder (it has no ``--platform``), or several platforms without an
        image store that holds an index (``multi_platform``).
    """
    if not platforms:
        return
    if not buildkit:
        raise BadInput(
            f"--platform needs BuildKit, and {client} builds with the legacy builder: install docker buildx "
            "(or use a docker client with BuildKit), or build without --platform on a machine of that architecture"
        )
    if len(platforms) > 1 and not multi_platform:
        raise BadInput(
            "this engine keeps one platform per tag (it has no containerd image store): add --push with a tag "
            "that names a registry (each platform is built and pushed, then an image index names them), enable "
            "the containerd image store (Docker 24+'s \"containerd-snapshotter\" feature), or build one platform "
            "per tag (flowrig build --platform linux/arm64 --tag NAME:TAG-arm64)"
        )


def check_base_image(client: str, image: str, platforms: tuple[str, ...]) -> None:
    """Refuse a local base image of another architecture than the one platform asked for
    (the engine's store holds one architecture per tag, and the build would run it).

    Raises
    ------
    BadInput
        Naming both architectures and how to make a base image of the right one.
    """
    if len(platforms) != 1:
        return
    try:
        done = subprocess.run([client, "image", "inspect", "--format", "{{.Architecture}}", image],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return
    held = architecture(done.stdout.strip()) if done.returncode == 0 else ""
    wanted = platforms[0].split("/")[1]
    if held and held != wanted:
        raise BadInput(
            f"base image {image} is linux/{held}, the build is for {platforms[0]}: pass --base-image with an image "
            f"of that platform (ARCH={wanted} IMAGE=flowrig-base:bookworm-{wanted} .ci/make-base-image.sh makes one)"
        )


def containerd_store(client: str) -> bool:
    """Whether the engine keeps images in the containerd store, which holds an image of
    several platforms under one tag."""
    try:
        done = subprocess.run([client, "info", "--format", "{{json .DriverStatus}}"], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "io.containerd.snapshotter" in done.stdout


def engine_architecture(client: str) -> str:
    """The engine's architecture in the platforms' spelling; empty when it does not say."""
    try:
        done = subprocess.run([client, "info", "--format", "{{.Architecture}}"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return architecture(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else ""


def gpu_requirements(gpu: str | None) -> tuple[str, ...]:
    """The wheels of ``--gpu`` (``cuda12``); none without it.

    Raises
    ------
    BadInput
        A runtime flowrig does not know.
    """
    if not gpu:
        return ()
    if gpu not in GPU_REQUIREMENTS:
        raise BadInput(f"--gpu {gpu!r} is not a GPU runtime flowrig installs: use {', '.join(GPU_REQUIREMENTS)}")
    return GPU_REQUIREMENTS[gpu]
