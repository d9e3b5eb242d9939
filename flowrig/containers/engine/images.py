"""Local images and the files in them: nothing is ever pulled."""

from __future__ import annotations

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
