"""What a deployment's image is, read from the local Docker engine without running it.

``docker image inspect`` tells that the image is a flowrig image (its entry point) and
gives its id; its manifest (``/opt/flowrig/manifest.json``, read from a container that
is created and removed but never started) tells which flow it carries. A deployment
may only point at an image of its own project: an image of another flow, or one built
before the flow's name or parameters changed, is refused with the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from flowrig import layout
from flowrig.errors import BadInput
from flowrig.project.flow_facts import FlowFacts, manifest_flow_facts, project_entrypoint_of

#: The program every flowrig image's ENTRYPOINT runs.
ENTRYPOINT_PROGRAM = "flowrig-entrypoint"


@dataclass(frozen=True)
class ImageFacts:
    """A local flowrig image.

    Parameters
    ----------
    reference
        The name it was asked for (``registry/project:1.0``).
    image_id
        Its content id (``sha256:...``).
    repo_digests
        ``repository@sha256:...`` names it was pushed or pulled as.
    tls_mode
        ``baked`` or ``per-run``.
    entrypoint
        ``flow`` of the ``flowrig.toml`` it carries.
    flow
        The flow facts its manifest records (images built by ``flowrig build``).
    """

    reference: str
    image_id: str
    repo_digests: tuple[str, ...]
    tls_mode: str
    entrypoint: str | None
    flow: FlowFacts | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "id": self.image_id,
            "repo_digests": list(self.repo_digests),
            "tls_mode": self.tls_mode,
            "entrypoint": self.entrypoint,
        }


def facts_from_inspect(reference: str, attributes: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> ImageFacts:
    """:class:`ImageFacts` from ``docker image inspect`` data and the image's manifest.

    Raises
    ------
    BadInput
        When the image is not a flowrig image.
    """
    config = attributes.get("Config") or {}
    entrypoint = [str(word) for word in (config.get("Entrypoint") or [])]
    if not any(word.rsplit("/", 1)[-1] == ENTRYPOINT_PROGRAM for word in entrypoint):
        raise BadInput(
            f"image {reference!r} is not a flowrig image (its entry point is {' '.join(entrypoint) or 'none'}): "
            f"build it with flowrig build PROJECT --tag {reference}"
        )
    if manifest is None:
        raise BadInput(f"image {reference!r} has no readable {layout.IMAGE_MANIFEST}: rebuild it with flowrig build")
    labels = config.get("Labels") or {}
    return ImageFacts(
        reference=reference,
        image_id=str(attributes.get("Id", "")),
        repo_digests=tuple(str(d) for d in attributes.get("RepoDigests") or ()),
        tls_mode=str(manifest.get("tls_mode") or labels.get(layout.IMAGE_TLS_MODE_LABEL) or layout.TLS_BAKED),
        entrypoint=project_entrypoint_of(manifest),
        flow=manifest_flow_facts(manifest),
    )


def inspect_image(reference: str) -> ImageFacts:
    """Read the facts of the local image ``reference`` (nothing is pulled or run).

    Raises
    ------
    BadInput
        The image does not exist locally, is not a flowrig image, or has no manifest.
    flowrig.errors.InfrastructureError
        Docker does not answer.
    """
    from flowrig.containers.engine import connect, image_attributes, image_file

    client = connect()
    try:
        attributes = image_attributes(client, reference)
        facts_from_inspect(reference, attributes, {})  # a flowrig image at all, before reading a file of it
        data = image_file(client, reference, str(layout.IMAGE_MANIFEST))
    finally:
        client.close()
    manifest = None
    if data is not None:
        try:
            loaded = json.loads(data)
        except ValueError:
            loaded = None
        manifest = loaded if isinstance(loaded, dict) else None
    return facts_from_inspect(reference, attributes, manifest)


def check_image_carries(image: ImageFacts, flow: FlowFacts, project_name: str) -> None:
    """Refuse an image that does not carry ``flow`` as the project has it now.

    Raises
    ------
    BadInput
        Naming what differs and the rebuild that fixes it.
    """
    rebuild = f"rebuild it: flowrig build PROJECT --tag {image.reference}"
    if image.entrypoint is not None and image.entrypoint != flow.entrypoint:
        raise BadInput(
            f"image {image.reference!r} carries flow {image.entrypoint}, but project {project_name} has "
            f"{flow.entrypoint}: deploy the image of this project, or {rebuild}"
        )
    if image.flow is None:
        return  # an image built from the repository's Dockerfile: its flowrig.toml matched
    if image.flow.name != flow.name:
        raise BadInput(
            f"image {image.reference!r} carries flow {image.flow.name!r}, but project {project_name}'s flow is "
            f"named {flow.name!r} now: {rebuild}"
        )
    if dict(image.flow.parameter_schema) != dict(flow.parameter_schema):
        raise BadInput(
            f"image {image.reference!r} was built before the parameters of flow {flow.name!r} changed "
            f"(it takes {', '.join(image.flow.parameter_names) or 'none'}; the project's flow "
            f"{', '.join(flow.parameter_names) or 'none'}): {rebuild}"
        )
