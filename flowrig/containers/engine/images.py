"""Local images and the files in them, and what a registry says of an image's platforms:
nothing is ever pulled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowrig.containers.engine.cleanup import remove_container
from flowrig.containers.engine.client import image_not_found
from flowrig.errors import BadInput, InfrastructureError, one_line

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container


def require_image(client: "DockerClient", image: str) -> None:
    """Raise :class:`BadInput` unless ``image`` exists locally (nothing is pulled)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise image_not_found(image) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot inspect image {image!r}: {one_line(exc)}") from None


def image_user(client: "DockerClient", image: str) -> str:
    """The user ``image`` runs as when none is given (its ``USER``; ``""`` is root).

    Raises
    ------
    BadInput
        When the image does not exist locally (nothing is pulled).
    """
    import docker

    try:
        return str(client.images.get(image).attrs.get("Config", {}).get("User") or "")
    except docker.errors.ImageNotFound:
        raise image_not_found(image) from None
    except docker.errors.APIError as exc:
        if exc.status_code == 400:  # the engine's word for a malformed reference
            raise BadInput(f"{image!r} is not an image name Docker accepts ({one_line(exc)})") from None
        raise InfrastructureError(f"cannot inspect image {image!r}: {one_line(exc)}") from None


#: The most a file read from a container may hold (``/etc/passwd`` is a few KB).
CONTAINER_FILE_MAX_BYTES = 1024 * 1024


def container_file(container: "Container", path: str) -> bytes | None:
    """A regular file of a (created, maybe not started) container, or ``None`` when it
    has none there (or only something else: a directory, a link)."""
    import io
    import tarfile

    import docker

    try:
        stream, stat = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot read {path} of container {container.name}: {one_line(exc)}") from None
    if int(stat.get("size", 0)) > CONTAINER_FILE_MAX_BYTES:
        return None
    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.next()
        if member is None or not member.isfile():
            return None
        handle = archive.extractfile(member)
        return handle.read(CONTAINER_FILE_MAX_BYTES) if handle is not None else None


def image_attributes(client: "DockerClient", image: str) -> dict[str, Any]:
    """``docker image inspect`` of a local image (nothing is pulled).

    Raises
    ------
    BadInput
        When the image does not exist locally or its name is malformed.
    """
    import docker

    try:
        return dict(client.images.get(image).attrs)
    except docker.errors.ImageNotFound:
        raise image_not_found(image) from None
    except docker.errors.APIError as exc:
        if exc.status_code == 400:
            raise BadInput(f"{image!r} is not an image name Docker accepts ({one_line(exc)})") from None
        raise InfrastructureError(f"cannot inspect image {image!r}: {one_line(exc)}") from None


def image_file(client: "DockerClient", image: str, path: str) -> bytes | None:
    """A regular file of a local image, read from a container that is created and
    removed but never started: nothing of the image runs."""
    import docker

    try:
        container = client.containers.create(image, command=["true"], network_disabled=True)
    except docker.errors.ImageNotFound:
        raise image_not_found(image) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot read {path} of image {image!r}: {one_line(exc)}") from None
    try:
        return container_file(container, path)
    finally:
        remove_container(container)


def local_architecture(image: str) -> str | None:
    """The architecture ``image`` was built for (``amd64``, ``arm64``), as this machine's
    engine records it; ``None`` when there is no engine, no such image, or no record.

    A cloud run's image is often the one just built and pushed from here: its local
    copy tells its architecture when its registry does not.
    """
    from flowrig.containers.engine.client import connect
    from flowrig.errors import FlowrigError

    try:
        client = connect(timeout=10)
    except FlowrigError:
        return None
    try:
        return str(image_attributes(client, image).get("Architecture") or "") or None
    except FlowrigError:
        return None
    finally:
        client.close()


@dataclass(frozen=True)
class RegistryRead:
    """What an image's registry says of its platforms, read by this machine's engine.

    Attributes
    ----------
    archs
        The architectures it holds (``amd64``, ``arm64``); empty: not known.
    missing
        The registry answered that it has no such image (or repository).
    why
        Why ``archs`` is empty, or what the registry answered, for a line.
    """

    archs: tuple[str, ...] = ()
    missing: bool = False
    why: str = ""


def registry_platforms(image: str, timeout: int = 30) -> RegistryRead:
    """The platforms of ``image`` in its registry: an index's (attestations left out), or
    a single manifest's (from its config), as ``docker manifest inspect`` would show them.

    The engine reads the registry (the Engine API's distribution inspect: the Docker SDK
    sends the user's own ``docker login`` or credential helper for that host, as a pull
    would); nothing is pulled. Not known (``archs`` empty) when there is no engine, the
    registry refuses the login, or cannot be reached in ``timeout`` seconds.
    """
    import docker
    import requests

    from flowrig.containers.engine.client import connect
    from flowrig.errors import FlowrigError

    try:
        client = connect(timeout=timeout)
    except FlowrigError as exc:
        return RegistryRead(why=f"no Docker engine here: {exc}")
    try:
        answer = client.api.inspect_distribution(image)
    except docker.errors.NotFound as exc:
        return RegistryRead(missing=True, why=_explanation(exc))
    except docker.errors.APIError as exc:
        if exc.status_code == 400:
            raise BadInput(f"{image!r} is not an image name Docker accepts ({_explanation(exc)})") from None
        return RegistryRead(why=f"the engine could not read it: {_explanation(exc)}")
    except (requests.RequestException, docker.errors.DockerException) as exc:
        return RegistryRead(why=f"the engine did not answer: {one_line(exc, 200)}")
    finally:
        client.close()
    archs = [str(p.get("architecture") or "") for p in answer.get("Platforms") or [] if isinstance(p, dict)]
    held = tuple(dict.fromkeys(arch for arch in archs if arch and arch != "unknown"))
    return RegistryRead(archs=held, why="" if held else "its manifest names no platform")


def _explanation(exc: Any) -> str:
    """The engine's own words of an API error (``manifest unknown``, ``unauthorized``)."""
    return one_line(getattr(exc, "explanation", None) or exc, 200)
