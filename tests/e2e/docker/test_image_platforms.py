"""``flowrig build --platform linux/arm64``: a real arm64 image of the seed project, built
on this machine under qemu-user-static (binfmt), whose engine record, label and manifest
all say arm64, and whose flow runner imports under emulation.

It needs the binfmt handler and an arm64 base image (``ARCH=arm64
IMAGE=flowrig-base:bookworm-arm64 .ci/make-base-image.sh``), and takes many minutes
emulated: it is skipped, saying which is missing, unless ``FLOWRIG_REQUIRE_ARM64=1``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.docker_support import test_image_tag, test_pip_ca
from tests.run_support import SEED, invoke

pytestmark = pytest.mark.docker

BASE = os.environ.get("FLOWRIG_ARM64_BASE_IMAGE", "flowrig-base:bookworm-arm64")


def _missing(reason: str) -> None:
    if os.environ.get("FLOWRIG_REQUIRE_ARM64") == "1":
        pytest.fail(f"an arm64 build is required (FLOWRIG_REQUIRE_ARM64=1) but {reason}", pytrace=False)
    pytest.skip(reason)


def test_an_arm64_build_records_arm64_and_runs_emulated(docker_client):
    import docker.errors

    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        _missing("no qemu-aarch64 binfmt handler (apt-get install qemu-user-static binfmt-support)")
    try:
        docker_client.images.get(BASE)
    except docker.errors.ImageNotFound:
        _missing(f"no arm64 base image {BASE} (ARCH=arm64 IMAGE={BASE} .ci/make-base-image.sh)")
    tag = test_image_tag("arm64")
    args = ["build", str(SEED), "--tag", tag, "--platform", "linux/arm64", "--base-image", BASE, "--quiet"]
    if test_pip_ca():
        args += ["--pip-ca", test_pip_ca()]
    done = invoke(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        attrs = docker_client.images.get(tag).attrs
        assert attrs["Architecture"] == "arm64"
        assert attrs["Config"]["Labels"]["org.flowrig.architecture"] == "arm64"
        out = docker_client.containers.run(tag, entrypoint=["cat"], command=["/opt/flowrig/manifest.json"],
                                           remove=True, network_disabled=True, platform="linux/arm64")
        assert json.loads(out)["architecture"] == "arm64"
        # The image's own code runs (emulated): the runner's interpreter is arm64's.
        machine = docker_client.containers.run(
            tag, entrypoint=["python", "-c", "import platform, flowrig; print(platform.machine())"],
            remove=True, network_disabled=True, platform="linux/arm64")
        assert machine.decode().strip() == "aarch64"
    finally:
        docker_client.images.remove(tag, force=True)
