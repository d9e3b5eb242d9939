"""Whether the run's image is in ECR, and whether its platforms hold the run's
architecture.

``DescribeImages`` tells whether the tag (or digest) exists. ``BatchGetImage`` gives the
manifest: an image index (OCI, or Docker's manifest list) names each platform it holds.
A single-platform manifest names its architecture only in its config blob, read from the
address ``GetDownloadUrlForLayer`` gives when the caller may (the printed runner policies
do not grant it: it would let the runner download every layer of the account's
repositories); else the image's copy on this machine's engine tells it, else it is "not
checked", never a refusal. :func:`ecr_architectures` is also what an ECS run follows when
``cpu_architecture`` is not set.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from flowrig.backends.aws.preflight.answers import Refused, ask
from flowrig.backends.aws.preflight.target import AwsTarget
from flowrig.backends.aws.session import Session
from flowrig.backends.preflight import Check

#: ``ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]/REPOSITORY[:TAG][@DIGEST]``.
ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
#: Manifests BatchGetImage is asked for: the indexes first, so that one is returned when there is one.
MEDIA_TYPES = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
]
_MISSING = ("ImageNotFoundException", "RepositoryNotFoundException")
#: Seconds and bytes a config blob is read with (a few KB).
CONFIG_TIMEOUT = 10.0
CONFIG_MAX_BYTES = 1024 * 1024


def platforms(manifest: Any) -> list[str] | None:
    """``os/arch`` of each image of an index (attestations left out); ``None`` for a
    single-platform manifest."""
    document = json.loads(manifest) if isinstance(manifest, str) else manifest
    if not isinstance(document, dict) or "manifests" not in document:
        return None
    found = []
    for entry in document.get("manifests") or []:
        platform = entry.get("platform") or {}
        arch = str(platform.get("architecture", ""))
        if arch and arch != "unknown":
            variant = f"/{platform['variant']}" if platform.get("variant") else ""
            found.append(f"{platform.get('os', 'linux')}/{arch}{variant}")
    return found


def _where(match: "re.Match[str]") -> dict[str, Any]:
    ident = {"imageDigest": match["digest"]} if match["digest"] else {"imageTag": match["tag"] or "latest"}
    return {"registryId": match["account"], "repositoryName": match["repository"], "imageIds": [ident]}


def _manifest(session: Session, match: "re.Match[str]", image: str) -> "Any | Refused | None":
    """The image's manifest text (an index when there is one), a refusal, or ``None``."""
    ecr = session.client("ecr")
    got = ask(lambda: ecr.batch_get_image(**_where(match), acceptedMediaTypes=MEDIA_TYPES),
              f"reading the manifest of {image}")
    if isinstance(got, Refused):
        return got
    return got["images"][0].get("imageManifest") if got.get("images") else None


def _config_architecture(session: Session, match: "re.Match[str]", manifest: Any) -> str | None:
    """A single-platform manifest's architecture, from its config blob (a small JSON
    document ECR hands out at a pre-signed address); ``None`` when it cannot be read."""
    import urllib.request

    document = json.loads(manifest) if isinstance(manifest, str) else manifest
    digest = ((document or {}).get("config") or {}).get("digest") if isinstance(document, dict) else None
    if not digest:
        return None
    ecr = session.client("ecr")
    got = ask(lambda: ecr.get_download_url_for_layer(
        registryId=match["account"], repositoryName=match["repository"], layerDigest=digest,
    ), "reading the image's config")
    url = None if isinstance(got, Refused) else got.get("downloadUrl")
    if not url or not str(url).startswith("https://"):
        return None
    try:
        with urllib.request.urlopen(url, timeout=CONFIG_TIMEOUT) as answer:  # noqa: S310 - https only, checked above
            config = json.loads(answer.read(CONFIG_MAX_BYTES))
    except (OSError, ValueError):
        return None
    arch = config.get("architecture") if isinstance(config, dict) else None
    return str(arch) if arch else None


@dataclass(frozen=True)
class ImageArchitectures:
    """The architectures an image holds (``amd64``, ``arm64``; empty: not known), and
    where they were read, or why not, for a line."""

    held: tuple[str, ...]
    source: str


def ecr_architectures(session: Session, image: str) -> ImageArchitectures:
    """The architectures of an ECR image: an index's platforms, else the config blob of
    its single manifest. Not known (``held`` empty) outside ECR of the run's region,
    or when ECR does not say; a missing image is left to the preflight's own check."""
    match = ECR_IMAGE.match(image)
    if not match or match["region"] != session.region_name:
        return ImageArchitectures((), "not an ECR image of the run's region")
    manifest = _manifest(session, match, image)
    if manifest is None or isinstance(manifest, Refused):
        return ImageArchitectures((), f"its manifest could not be read ({manifest or 'none returned'})")
    held = platforms(manifest)
    if held is not None:
        return ImageArchitectures(tuple(dict.fromkeys(p.split("/")[1] for p in held)), "its image index in ECR")
    arch = _config_architecture(session, match, manifest)
    if arch:
        return ImageArchitectures((arch,), "its config in ECR")
    return ImageArchitectures((), "a single-platform manifest whose config could not be read")


def image_architectures(session: Session, image: str) -> tuple[tuple[str, ...], str]:
    """The image's architectures and where they were read: its manifest in ECR, else the
    engine on this machine (the image just built and pushed from here); empty when
    neither says."""
    from flowrig.containers.engine.images import local_architecture

    found = ecr_architectures(session, image)
    if found.held:
        return found.held, found.source
    local = local_architecture(image)
    if local:
        return (local,), "the local engine's copy"
    return (), found.source


def image_checks(session: Session, target: AwsTarget) -> list[Check]:
    """The image exists in its ECR repository, and its platforms hold ``target.arch``."""
    image = target.image or ""
    match = ECR_IMAGE.match(image)
    if not match:
        return [Check("image", image, None, "not an ECR image: a registry outside AWS is not checked")]
    if match["region"] != session.region_name:
        return [Check("image", image, None, f"in ECR of {match['region']}, the run is in {session.region_name}: "
                      "not checked")]
    ecr = session.client("ecr")
    found = ask(lambda: ecr.describe_images(**_where(match)), f"looking up image {image} in ECR")
    if isinstance(found, Refused):
        if found.code in _MISSING:
            what = "repository" if found.code.startswith("Repository") else "image"
            return [Check("image", image, False, f"{what} not in ECR ({found.code})",
                          f"push it (docker push {image}) or fix --image")]
        return [Check("image", image, None, f"ECR did not say ({found}): not checked")]
    checks = [Check("image", image, True, "in ECR")]
    held = ecr_architectures(session, image)
    if not held.held:
        return checks + [Check("image-arch", image, None, f"{held.source}: not checked")]
    if not target.arch:
        return checks + [Check("image-arch", image, True, f"linux/{', linux/'.join(held.held)}; the run follows it")]
    if target.arch in held.held:
        return checks + [Check("image-arch", image, True, f"holds linux/{target.arch} ({held.source})")]
    return checks + [Check(
        "image-arch", image, False,
        f"the image holds linux/{', linux/'.join(held.held)}, the run needs linux/{target.arch} ({target.arch_source})",
        target.arch_fix or f"build and push it for linux/{target.arch}",
    )]
