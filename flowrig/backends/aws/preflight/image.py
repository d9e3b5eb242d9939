"""Whether the run's image is in ECR, and whether its platforms hold the run's
architecture.

``DescribeImages`` tells whether the tag (or digest) exists. ``BatchGetImage`` gives the
manifest: an image index (OCI, or Docker's manifest list) names each platform it holds.
A single-platform manifest names its architecture only in its config blob, which is not
downloaded here: that is "not checked", never a refusal.
"""

from __future__ import annotations

import json
import re
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


def image_checks(session: Session, target: AwsTarget) -> list[Check]:
    """The image exists in its ECR repository, and its platforms hold ``target.arch``."""
    image = target.image or ""
    match = ECR_IMAGE.match(image)
    if not match:
        return [Check("image", image, None, "not an ECR image: a registry outside AWS is not checked")]
    if match["region"] != session.region_name:
        return [Check("image", image, None, f"in ECR of {match['region']}, the run is in {session.region_name}: "
                      "not checked")]
    ident = {"imageDigest": match["digest"]} if match["digest"] else {"imageTag": match["tag"] or "latest"}
    where = {"registryId": match["account"], "repositoryName": match["repository"], "imageIds": [ident]}
    ecr = session.client("ecr")
    found = ask(lambda: ecr.describe_images(**where), f"looking up image {image} in ECR")
    if isinstance(found, Refused):
        if found.code in _MISSING:
            what = "repository" if found.code.startswith("Repository") else "image"
            return [Check("image", image, False, f"{what} not in ECR ({found.code})",
                          f"push it (docker push {image}) or fix --image")]
        return [Check("image", image, None, f"ECR did not say ({found}): not checked")]
    checks = [Check("image", image, True, "in ECR")]
    got = ask(lambda: ecr.batch_get_image(**where, acceptedMediaTypes=MEDIA_TYPES),
              f"reading the manifest of {image}")
    manifest = None
    if not isinstance(got, Refused) and got.get("images"):
        manifest = got["images"][0].get("imageManifest")
    if manifest is None:
        reason = str(got) if isinstance(got, Refused) else "no manifest returned"
        return checks + [Check("image-arch", image, None, f"its manifest could not be read ({reason}): not checked")]
    held = platforms(manifest)
    if held is None:
        return checks + [Check("image-arch", image, None, "a single-platform manifest, whose architecture is in its "
                               "config blob (not downloaded): not checked")]
    if any(p.split("/")[1] == target.arch for p in held):
        return checks + [Check("image-arch", image, True, f"holds linux/{target.arch} ({', '.join(held)})")]
    return checks + [Check(
        "image-arch", image, False,
        f"the image holds {', '.join(held) or 'no platform'}, the run needs linux/{target.arch} ({target.arch_source})",
        target.arch_fix or f"build and push it for linux/{target.arch}",
    )]
