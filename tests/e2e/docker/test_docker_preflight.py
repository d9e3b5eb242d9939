"""``flowrig preflight --backend docker``: the image is on this machine's engine and of
the engine's architecture, checked against images the test builds on the real engine
(one empty file each, for a platform: nothing of them ever runs)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from tests.run_support import invoke, write_project

pytestmark = pytest.mark.docker

ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def _build(tag: str, arch: str, scratch) -> None:
    """An image of one empty file for ``linux/ARCH``, built ``FROM scratch`` by BuildKit
    (no step runs, so no emulator is needed). ``docker import --platform`` would be
    simpler, but the engine's 20.10 ignores it."""
    context = scratch / arch
    context.mkdir()
    (context / "empty").write_bytes(b"")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY empty /empty\n")
    subprocess.run(["/usr/bin/docker", "build", "-q", "--platform", f"linux/{arch}", "-t", tag, str(context)],
                   check=True, capture_output=True, timeout=300, env={**os.environ, "DOCKER_BUILDKIT": "1"})


@pytest.fixture
def images(docker_client, tmp_path):
    """``(same, other)``: an image of the engine's architecture and one of another."""
    engine = ARCHITECTURES.get(docker_client.info()["Architecture"], docker_client.info()["Architecture"])
    other = "arm64" if engine == "amd64" else "amd64"
    suffix = uuid.uuid4().hex[:8]
    tags = (f"flowrig-preflight-same:{suffix}", f"flowrig-preflight-other:{suffix}")
    try:
        _build(tags[0], engine, tmp_path)
        _build(tags[1], other, tmp_path)
        yield tags
    finally:
        for tag in tags:
            try:
                docker_client.images.remove(tag, force=True)
            except Exception:  # an import that failed left nothing
                pass


def test_an_image_of_the_engines_architecture_passes(tmp_path, images):
    root = write_project(tmp_path / "p", "def main():\n    pass\n", 'flow = "flow.py:main"\n')
    done = invoke("preflight", str(root), "--backend", "docker", "--image", images[0], "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [(c["name"], c["ok"]) for c in report["checks"]] == [("image", True), ("image-arch", True)]


def test_an_image_of_another_architecture_or_none_at_all_fails_in_one_line(tmp_path, images):
    root = write_project(tmp_path / "p", "def main():\n    pass\n", 'flow = "flow.py:main"\n')
    other = invoke("preflight", str(root), "--backend", "docker", "--image", images[1])
    assert other.returncode == 2, other.stdout + other.stderr
    [line] = [x for x in other.stdout.splitlines() if x.startswith("failed: ")]
    assert line.startswith(f"failed: image-arch {images[1]}: built for linux/") and "flowrig build" in line
    absent = invoke("preflight", str(root), "--backend", "docker", "--image", "flowrig-preflight-absent:0")
    assert absent.returncode == 2
    [line] = [x for x in absent.stdout.splitlines() if x.startswith("failed: ")]
    assert "not on this machine's Docker engine" in line and "flowrig build PROJECT --tag" in line

