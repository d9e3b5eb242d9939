"""The run's image's architectures read from its registry for the ``gcp`` and ``azure``
backends: a real registry on loopback (the ``registry`` fixture: Debian's
``docker-registry``) holds a single-platform arm64 image and an image index of amd64 and
arm64, pushed by the real engine, with no copy left on the engine, so the registry is
all there is to read; another asks for a login, which is the user's own ``docker login``
(``DOCKER_CONFIG``). The clouds are tests/vm_fakes' (only the registry read is real).

The images are ``FROM scratch`` with one file, built by the engine for each platform (as
tests/e2e/docker/test_image_push.py does): what is read is their manifests and configs,
not their contents.
"""

from __future__ import annotations

import subprocess

import pytest

from flowrig.backends.base import ClusterSpec
from flowrig.backends.preflight import PreflightPlan
from flowrig.backends.vm.azure import AzureBackend
from flowrig.backends.vm.gcp import GCPBackend
from flowrig.containers.engine import images
from flowrig.errors import BadInput
from flowrig.project.sizing import ClusterSize
from tests.vm_fakes import AZURE_OPTIONS, GCP_OPTIONS

pytestmark = pytest.mark.docker
#: The calls that make something in the fake clouds: none may come before a refusal.
CREATING = ("insert", "create", "setIamPolicy", "addVersion", "arm.PUT", "set_secret")
#: The registry read as it is, not as the fake clouds' fixtures set it.
READ_REGISTRY = images.registry_platforms


def _docker(*args: str, config: str | None = None) -> None:
    subprocess.run(["docker", *args], check=True, capture_output=True, timeout=300,
                   env={"DOCKER_BUILDKIT": "1", "DOCKER_CLI_EXPERIMENTAL": "enabled", "PATH": "/usr/bin:/bin",
                        **({"DOCKER_CONFIG": config} if config else {})})


def build_scratch(context, arch: str, tag: str, config: str | None = None) -> None:
    """A ``FROM scratch`` image of one file, built by the engine for ``linux/ARCH``."""
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY arch /arch\n")
    (context / "arch").write_text(arch)
    _docker("build", "--platform", f"linux/{arch}", "--tag", tag, str(context), config=config)


@pytest.fixture
def pushed(registry, tmp_path):
    """``{"arm64": single-platform image, "both": an index of amd64 and arm64, "missing": a
    name the registry lacks}``, none of them on the engine."""
    from flowrig.builder.publish import push, push_index

    repo = f"{registry}/flowrig/arch"
    members = []
    try:
        for arch in ("amd64", "arm64"):
            build_scratch(tmp_path / arch, arch, f"{repo}:both-{arch}")
            push("docker", f"{repo}:both-{arch}")
            members.append(f"{repo}:both-{arch}")
        push_index("docker", f"{repo}:both", members)
        _docker("tag", f"{repo}:both-arm64", f"{repo}:arm64")
        push("docker", f"{repo}:arm64")
    finally:
        for tag in [*members, f"{repo}:arm64"]:
            subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False)
        subprocess.run(["docker", "manifest", "rm", f"{repo}:both"], capture_output=True, check=False,
                       env={"DOCKER_CLI_EXPERIMENTAL": "enabled", "PATH": "/usr/bin:/bin"})
    return {"arm64": f"{repo}:arm64", "both": f"{repo}:both", "missing": f"{repo}:never-pushed"}


def test_the_registry_tells_a_single_manifests_and_an_indexs_architectures(pushed):
    from flowrig.backends.vm.image_arch import image_architectures

    for image in pushed.values():
        assert images.local_architecture(image) is None  # the registry is all there is
    single = images.registry_platforms(pushed["arm64"])
    assert (single.archs, single.missing) == (("arm64",), False)  # from the manifest's config
    index = images.registry_platforms(pushed["both"])
    assert (index.archs, index.missing) == (("amd64", "arm64"), False)  # from the index
    assert image_architectures(pushed["both"]) == ("amd64", "arm64")
    missing = images.registry_platforms(pushed["missing"])
    assert missing.missing and missing.archs == () and "manifest unknown" in missing.why


def spec(tls, run_id: str, image: str, **options) -> ClusterSpec:
    return ClusterSpec(run_id=run_id, size=ClusterSize(1), tls=tls, image=image, worker_threads=1,
                       options={"tls": "baked", "registry_login": False, "preflight": False, **options})


def refused(backend, world, tls, run_id: str, image: str, **options) -> str:
    with pytest.raises(BadInput) as info:
        backend().start(spec(tls, run_id, image, **options))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert [call[0] for call in world.calls if call[0].endswith(CREATING)] == []
    return str(info.value)


def test_a_missing_image_or_one_of_another_architecture_is_exit_2_before_anything_is_made(
        pushed, google, azure, tls, monkeypatch):
    from flowrig.backends.vm.azure_cloud import AzureCloud
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    monkeypatch.setattr(images, "registry_platforms", READ_REGISTRY)
    line = refused(GCPBackend, google, tls, "ra1", pushed["missing"], **GCP_OPTIONS)
    assert line == (f"the image {pushed['missing']} is not in its registry (manifest unknown: manifest unknown): push "
                    f"it (flowrig build PROJECT --tag {pushed['missing']} --push, or docker push), or fix [cluster] image")
    line = refused(AzureBackend, azure, tls, "ra2", pushed["missing"], **AZURE_OPTIONS)
    assert line.startswith(f"the image {pushed['missing']} is not in its registry")
    # flowrig preflight names it as the image's check, and reads the registry of a good one.
    checks = GCPBackend().preflight(PreflightPlan(image=pushed["missing"], options=GCP_OPTIONS))
    assert [(c.name, c.ok) for c in checks] == [("image", False), ("machine-type", None), ("network", None)]
    assert checks[0].fix.startswith(f"push it (flowrig build PROJECT --tag {pushed['missing']} --push")
    checks = GCPBackend().preflight(PreflightPlan(image=pushed["both"], options=GCP_OPTIONS))
    assert [(c.name, c.ok, c.line) for c in checks][:2] == [("image", True, "linux/amd64, linux/arm64"),
                                                             ("machine-type", True, checks[1].line)]
    assert [call[0] for call in google.calls if call[0].endswith(CREATING)] == []
    # An arm64-only image on amd64 types; the index runs on either.
    line = refused(GCPBackend, google, tls, "ra3", pushed["arm64"], **GCP_OPTIONS)
    assert line.startswith(f"[cluster.options] machine_type = 'n1-standard-1' runs linux/amd64 but the image "
                           f"{pushed['arm64']} is linux/arm64: use a machine type for arm64"), line
    line = refused(AzureBackend, azure, tls, "ra4", pushed["arm64"], **AZURE_OPTIONS)
    assert line.startswith(f"[cluster.options] vm_size = 'Standard_DS1_v2' runs linux/amd64 but the image "
                           f"{pushed['arm64']} is linux/arm64: use a VM size for arm64"), line
    gcp = GCPCloud("ra5", GCPBackend().options({**GCP_OPTIONS, "worker_machine_type": "t2a-standard-2"}))
    gcp.check(pushed["both"])
    assert (gcp.archs["scheduler"], gcp.archs["worker"]) == ("amd64", "arm64")
    azure_cloud = AzureCloud("ra6", AzureBackend().options(AZURE_OPTIONS))
    azure_cloud.check(pushed["arm64"].replace(":arm64", ":both"))
    assert azure_cloud.archs["worker"] == "amd64"


def test_a_registry_that_asks_for_a_login_is_read_with_the_users_docker_login_else_nothing_is_refused(
        login_registry, google, tls, tmp_path, monkeypatch, caplog):
    from flowrig.backends.vm.gcp_cloud import GCPCloud

    monkeypatch.setattr(images, "registry_platforms", READ_REGISTRY)
    image, logged_in, nobody = f"{login_registry}/flowrig/arch:arm64", tmp_path / "in", tmp_path / "out"
    subprocess.run(["docker", "login", "--username", "flowrig", "--password-stdin", login_registry], input="pw",
                   text=True, check=True, capture_output=True, env={"DOCKER_CONFIG": str(logged_in), "PATH": "/usr/bin:/bin"})
    try:
        build_scratch(tmp_path / "arm64", "arm64", image)
        _docker("push", image, config=str(logged_in))
    finally:
        subprocess.run(["docker", "image", "rm", "-f", image], capture_output=True, check=False)
    # With the user's login (the SDK reads DOCKER_CONFIG's config.json), the registry answers.
    monkeypatch.setenv("DOCKER_CONFIG", str(logged_in))
    assert images.registry_platforms(image).archs == ("arm64",)
    # Without one it cannot be read: not known, and an amd64 run is not refused for it.
    nobody.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(nobody))
    read = images.registry_platforms(image)
    assert (read.archs, read.missing) == ((), False) and "no basic auth credentials" in read.why
    cloud = GCPCloud("ra7", GCPBackend().options(GCP_OPTIONS))
    with caplog.at_level("WARNING", logger="flowrig.vm"):
        cloud.check(image)
    assert cloud.archs["worker"] == "amd64"
    assert "the image's architecture is not checked: its registry was not read" in caplog.text
