"""``flowrig build --platform linux/amd64,linux/arm64 --push`` on an engine that keeps one
platform per tag (no containerd image store, as Debian's Docker 20.10 here): each platform
built and pushed as ``TAG-ARCH``, then an image index ``TAG`` naming both, made in a real
registry on loopback (Debian's ``docker-registry``: the ``registry`` fixture of
tests/docker_support.py), read back over the registry API.

Building the whole seed image for arm64 takes many minutes emulated
(tests/e2e/docker/test_image_platforms.py does it when asked): here each platform's
build is a small image ``FROM scratch`` built by the real engine for that platform, in
place of flowrig's own build step, so what is tested is the command's rendering per
platform, the pushes and the index. A single platform's push is the same ``docker push``.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.run_support import SEED, invoke

pytestmark = pytest.mark.docker
INDEX_TYPES = "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json"


def manifest(host: str, path: str, ref: str, accept: str) -> dict:
    request = urllib.request.Request(f"http://{host}/v2/{path}/manifests/{ref}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_both_platforms_are_pushed_and_named_by_one_index(registry, docker_client, monkeypatch, tmp_path):
    import importlib

    # The module, not the package's function of the same name.
    builder = importlib.import_module("flowrig.builder.build")

    built: list[tuple[str, str]] = []

    def build_scratch(context, tag, pip_ca=None, **kwargs):
        platform = context.build_args["PLATFORM"]
        built.append((platform, tag))
        directory = tmp_path / platform.replace("/", "-")
        directory.mkdir()
        (directory / "Dockerfile").write_text("FROM scratch\nCOPY arch /arch\n")
        (directory / "arch").write_text(platform)
        subprocess.run(["docker", "build", "--platform", platform, "--tag", tag, str(directory)], check=True,
                       capture_output=True, env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"})
        return builder.BuildResult(tag, builder._image_id("docker", tag) or "", 0.1, True, context.digest)

    monkeypatch.setattr(builder, "build", build_scratch)
    tag = f"{registry}/flowrig/seed:1"
    try:
        done = invoke("build", str(SEED), "--tag", tag, "--platform", "linux/amd64,linux/arm64", "--push")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == tag
        assert built == [("linux/amd64", f"{tag}-amd64"), ("linux/arm64", f"{tag}-arm64")]
        index = manifest(registry, "flowrig/seed", "1", INDEX_TYPES)
        assert {(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]} == {
            ("linux", "amd64"), ("linux", "arm64")}
        # Each entry is the member pushed for that platform.
        for entry in index["manifests"]:
            member = manifest(registry, "flowrig/seed", f"1-{entry['platform']['architecture']}", entry["mediaType"])
            assert member["config"]["mediaType"].endswith("json")
        assert f"pushed {tag}: an image index of {tag}-amd64, {tag}-arm64" in done.stderr
    finally:
        for platform in ("amd64", "arm64"):
            subprocess.run(["docker", "image", "rm", "-f", f"{tag}-{platform}"], capture_output=True, check=False)


def test_several_platforms_without_push_or_a_registry_are_exit_2_before_anything_is_built():
    done = invoke("build", str(SEED), "--tag", "seed:1", "--platform", "linux/amd64,linux/arm64")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "keeps one platform per tag (it has no containerd image store): add --push with a tag that names a " \
           "registry" in line
    done = invoke("build", str(SEED), "--tag", "seed:1", "--platform", "linux/amd64,linux/arm64", "--push")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line == ("flowrig: error: --push needs a tag that names its registry, e.g. 127.0.0.1:5000/seed:1 or "
                    "ACCOUNT.dkr.ecr.REGION.amazonaws.com/seed:1 (not 'seed:1')")
    done = invoke("build", str(SEED), "--tag", "127.0.0.1:5000/seed:1", "--push", "--context-only", "/tmp/never")
    assert done.returncode == 2 and "use one" in done.stderr
