"""Docker fixtures shared by every test that needs an engine (registered in conftest.py).

``docker_client`` fails the test instead of skipping it when ``FLOWRIG_REQUIRE_DOCKER=1``
(CI sets it), so a broken engine can never pass as "skipped".

``seed_image`` builds the seed project's image once per session with flowrig's own
builder, or reuses an image labelled with the same context hash, so repeated runs
start in seconds. Settings (environment):

- ``FLOWRIG_TEST_BASE_IMAGE``: base image (default ``flowrig-base:bookworm``, made by
  ``.ci/make-base-image.sh``).
- ``FLOWRIG_PIP_CA``: CA bundle pip trusts during the build (default
  ``/etc/ssl/certs/ca-certificates.crt`` when it exists).
- ``FLOWRIG_TEST_IMAGE``: tag to build (default ``flowrig-seed:test``).

``registry`` is a real registry on loopback (Debian's ``docker-registry``) for one test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED_PROJECT = REPO / "examples" / "seed"
DEFAULT_BASE_IMAGE = "flowrig-base:bookworm"
DEFAULT_PIP_CA = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_TAG = "flowrig-seed:test"


def docker_missing(reason: str) -> None:
    """Fail when Docker is required, skip otherwise."""
    if os.environ.get("FLOWRIG_REQUIRE_DOCKER") == "1":
        pytest.fail(f"Docker is required (FLOWRIG_REQUIRE_DOCKER=1) but {reason}", pytrace=False)
    pytest.skip(f"no Docker: {reason}")


def listed(client, filters: dict, *, all: bool = True) -> dict[str, dict[str, str]]:
    """Name -> labels of each container ``filters`` selects, from one listing.

    docker-py's ``containers.list`` inspects every container it lists, so one removed in
    between (a worker retired, a runner that just ended) fails it with a 404; a test that
    watches a live run lists without inspecting."""
    return {c["Names"][0].lstrip("/"): c.get("Labels") or {} for c in client.api.containers(all=all, filters=filters)}


def inspected(client, filters: dict, *, all: bool = True) -> list:
    """The containers ``filters`` selects, each inspected; one removed between the listing
    and its inspection is left out, as it would have been a moment later."""
    import docker

    found = []
    for name in listed(client, filters, all=all):
        try:
            found.append(client.containers.get(name))
        except docker.errors.NotFound:
            continue
    return found


@pytest.fixture(scope="session")
def docker_client():
    """A docker-py client of an engine that answers."""
    try:
        import docker
    except ImportError:
        docker_missing("the docker package is not installed")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # any failure to reach the engine means "no Docker"
        docker_missing(f"the engine does not answer ({type(exc).__name__}: {exc})")
    yield client
    client.close()


def test_base_image() -> str:
    return os.environ.get("FLOWRIG_TEST_BASE_IMAGE", DEFAULT_BASE_IMAGE)


test_base_image.__test__ = False  # a helper, not a test


def test_pip_ca() -> str | None:
    """The pip CA bundle tests build with, if any."""
    configured = os.environ.get("FLOWRIG_PIP_CA")
    if configured:
        return configured
    return str(DEFAULT_PIP_CA) if DEFAULT_PIP_CA.is_file() else None


test_pip_ca.__test__ = False


def test_image_tag(suffix: str = "") -> str:
    """``FLOWRIG_TEST_IMAGE`` (the seed image's tag), with ``-suffix`` for another image
    of the same session: sessions that share an engine keep apart by that setting."""
    tag = os.environ.get("FLOWRIG_TEST_IMAGE", DEFAULT_TAG)
    return f"{tag}-{suffix}" if suffix else tag


test_image_tag.__test__ = False


@pytest.fixture(scope="session")
def seed_image(docker_client) -> str:
    """Tag of the seed project's image, built with ``flowrig.builder`` at most once."""
    import docker.errors

    from flowrig.builder import build, find_image, render_context

    tag = test_image_tag()
    try:
        docker_client.images.get(test_base_image())
    except docker.errors.ImageNotFound:
        docker_missing(
            f"base image {test_base_image()} is missing: run .ci/make-base-image.sh "
            "or set FLOWRIG_TEST_BASE_IMAGE"
        )
    context = render_context(SEED_PROJECT, base_image=test_base_image())
    # Each pytest-xdist worker is a session of its own: the first builds, the others
    # wait on the lock and then find the image it tagged.
    with image_lock(tag):
        if find_image(context, tag):
            return tag
        existing = find_image(context)
        if existing:
            # Same context, other tag: tagging is instant and the image is identical.
            repository, _, version = tag.rpartition(":")
            docker_client.images.get(existing).tag(repository, version)
            return tag
        build(context, tag, test_pip_ca(), quiet=True)
    return tag


@contextlib.contextmanager
def image_lock(tag: str) -> Iterator[None]:
    """Hold an exclusive lock named by an image tag, across the processes of this
    machine (the workers of a parallel test session, or sessions sharing a tag), while
    one of them builds the image the others would build too."""
    import fcntl
    import hashlib
    import tempfile

    name = hashlib.sha256(tag.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"flowrig-test-image-{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def one_legacy_build_file_at_a_time() -> Iterator[None]:
    """Held for a whole file by the files whose tests build with Docker's legacy builder
    and check that a build leaves no dangling image or unlabelled container: such
    leftovers carry no trace of the build that made them, so under a parallel session
    those files run one at a time instead of reading each other's. (A module fixture of
    each such file, not a fixture here: this module is a plugin, whose autouse fixtures
    would hold it around every file of the session.)"""
    with image_lock("legacy-builds"):
        yield


def docker_run_env(run_id: str, **extra: str) -> dict[str, str]:
    """The environment of a ``flowrig run --backend docker`` the tests start: this
    process's, with the run id fixed and no Prefect API of the caller's."""
    env = {**os.environ, "FLOWRIG_RUN_ID": run_id, **extra}
    env.pop("PREFECT_API_URL", None)
    return env


@contextlib.contextmanager
def derived_image(
    docker_client, base: str, project: Path, repository: str, *, steps: str = "", files: dict[str, bytes] | None = None
) -> Iterator[str]:
    """``base`` (a flowrig image) with ``project`` in place of its baked project: one
    small layer, built in seconds, tagged ``repository:<random>`` and removed on exit.

    ``steps`` are Dockerfile lines run before the project is copied in, and ``files``
    what they may copy (paths in the build context)."""
    import io
    import tarfile
    import uuid

    from flowrig import layout
    from flowrig.builder import defaults as builder_defaults

    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))

        # A label of its own: with the base's context hash, the seed fixture could take
        # this image for the seed's.
        tag = f"{repository}:{uuid.uuid4().hex[:8]}"
        add("Dockerfile", (
            f"FROM {base}\n{steps}COPY project/ {layout.IMAGE_PROJECT_DIR}/\n"
            f'LABEL {builder_defaults.IMAGE_CONTEXT_LABEL}="derived-{tag}"\n'
        ).encode())
        for name, data in (files or {}).items():
            add(name, data)
        for path in project.iterdir():
            add(f"project/{path.name}", path.read_bytes())
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True)
    try:
        yield tag
    finally:
        docker_client.images.remove(tag, force=True)



def private_keys_in_image(docker_client, tag: str, scratch: Path, *, above: str | None = None):
    """(layer, file, :class:`flowrig.certs.scan.FoundKey`) for every private key in the
    layers of an image as ``docker save`` writes them (a layer keeps what a later one
    deletes). ``above``: a base image whose layers are left out. Base images carry
    keys of their own (libgnutls holds its self-test keys), which flowrig neither adds
    nor could remove."""
    import json
    import tarfile

    from flowrig.certs.scan import private_keys_in

    image_layers = docker_client.images.get(tag).attrs["RootFS"]["Layers"]
    skip = 0
    if above is not None:
        base_layers = docker_client.images.get(above).attrs["RootFS"]["Layers"]
        assert image_layers[: len(base_layers)] == base_layers, f"{tag} is not built on {above}"
        skip = len(base_layers)
    archive = scratch / f"{tag.replace('/', '_').replace(':', '_')}.tar"
    with archive.open("wb") as handle:
        for chunk in docker_client.images.get(tag).save(named=True):
            handle.write(chunk)
    found = []
    try:
        with tarfile.open(archive) as image:
            (manifest,) = json.load(image.extractfile("manifest.json"))
            layers = manifest["Layers"]
            assert len(layers) == len(image_layers)
            for name in layers[skip:]:
                with tarfile.open(fileobj=image.extractfile(name)) as layer:
                    for member in layer:
                        if member.isfile():
                            stream = layer.extractfile(member)
                            found.extend((name, member.name, key) for key in private_keys_in(stream, member.size))
    finally:
        archive.unlink()
    return found


def copy_repository(destination: Path) -> Path:
    """What a CI checkout of this repository holds: its files under version control and
    the new ones git does not ignore (everything but caches and environments when this
    is not a git checkout), with this machine's pip CA bundle as ``pip-ca.crt`` when
    there is one, as a CI job behind such a proxy would put it."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = REPO / name
            if source.is_file():
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination / name)
    else:
        shutil.copytree(REPO, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"))
    if test_pip_ca():
        shutil.copyfile(test_pip_ca(), destination / "pip-ca.crt")
    return destination



def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def registry(tmp_path, docker_client):
    """A registry on loopback for this test alone; its ``host:port`` (the engine treats a
    loopback registry as insecure by default: plain HTTP)."""
    yield from _serve_registry(tmp_path, {})


@pytest.fixture
def login_registry(tmp_path, docker_client):
    """A registry on loopback that asks for a login (user ``flowrig``, password ``pw``);
    its ``host:port``."""
    import crypt  # bcrypt, which the registry's htpasswd asks for (through libxcrypt)

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("flowrig:" + crypt.crypt("pw", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)) + "\n")
    yield from _serve_registry(tmp_path, {"auth": {"htpasswd": {"realm": "flowrig", "path": str(htpasswd)}}})


def _serve_registry(tmp_path: Path, extra: dict) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("no docker-registry (apt-get install docker-registry)", pytrace=False)
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(json.dumps({"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(tmp_path / "r")}},
                                  "http": {"addr": f"127.0.0.1:{port}"}, "log": {"level": "error"}, **extra}))
    process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers: asking for a login
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
