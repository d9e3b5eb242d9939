"""``flowrig preflight --backend docker``: the image is on this machine's engine and of
the engine's architecture, checked against images the test imports into the real engine
(empty file systems, each marked with a platform: nothing of them ever runs)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid

import pytest

from tests.run_support import invoke, write_project

pytestmark = pytest.mark.docker

ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def _import(tag: str, arch: str) -> None:
    """An image of one empty file, marked ``linux/ARCH``, imported into the engine."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        info = tarfile.TarInfo("empty")
        archive.addfile(info, io.BytesIO(b""))
    subprocess.run(["/usr/bin/docker", "import", "--platform", f"linux/{arch}", "-", tag],
                   input=data.getvalue(), check=True, capture_output=True, timeout=120)


@pytest.fixture
def images(docker_client):
    """``(same, other)``: an image of the engine's architecture and one of another."""
    engine = ARCHITECTURES.get(docker_client.info()["Architecture"], docker_client.info()["Architecture"])
    other = "arm64" if engine == "amd64" else "amd64"
    suffix = uuid.uuid4().hex[:8]
    tags = (f"flowrig-preflight-same:{suffix}", f"flowrig-preflight-other:{suffix}")
    try:
        _import(tags[0], engine)
        _import(tags[1], other)
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

