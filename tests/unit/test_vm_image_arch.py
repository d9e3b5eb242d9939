"""What the ``gcp`` and ``azure`` backends make of their image's registry
(:mod:`flowrig.backends.vm.image_arch`): a missing image is one line, exit 2, naming it and
the fix; a registry that cannot be read leaves the local copy to tell, else nothing is
refused. The registry reads themselves, against a real registry, are in
tests/e2e/docker/test_registry_architectures.py.
"""

from __future__ import annotations

import logging

import pytest

from flowrig.backends.vm.image_arch import image_architectures
from flowrig.containers.engine import images
from flowrig.errors import BadInput

IMAGE = "europe-west1-docker.pkg.dev/proj/runs/seed:1"


@pytest.fixture
def engine(monkeypatch):
    """Set what the registry and the local copy say of :data:`IMAGE`."""

    def set_reads(registry: images.RegistryRead, local: str | None = None) -> None:
        monkeypatch.setattr(images, "registry_platforms", lambda image: registry)
        monkeypatch.setattr(images, "local_architecture", lambda image: local)

    return set_reads


def test_the_registrys_platforms_are_the_images(engine):
    engine(images.RegistryRead(archs=("amd64", "arm64")), local="amd64")
    assert image_architectures(IMAGE) == ("amd64", "arm64")


def test_an_image_its_registry_lacks_is_one_line_exit_2_naming_it_and_the_fix(engine):
    engine(images.RegistryRead(missing=True, why="manifest unknown: manifest unknown"), local="amd64")
    with pytest.raises(BadInput) as info:
        image_architectures(IMAGE)
    assert info.value.exit_code == 2
    assert str(info.value) == (f"the image {IMAGE} is not in its registry (manifest unknown: manifest unknown): push "
                               f"it (flowrig build PROJECT --tag {IMAGE} --push, or docker push), or fix [cluster] "
                               "image")


def test_a_registry_that_cannot_be_read_leaves_the_local_copy_to_tell_else_nothing(engine, caplog):
    engine(images.RegistryRead(why="no basic auth credentials"), local="arm64")
    assert image_architectures(IMAGE) == ("arm64",)
    engine(images.RegistryRead(why="no basic auth credentials"), local=None)
    with caplog.at_level(logging.WARNING, logger="flowrig.vm"):
        assert image_architectures(IMAGE) == ()
    assert f"its registry was not read (no basic auth credentials) and this engine has no copy of {IMAGE}" in caplog.text
    assert image_architectures("") == ()


def test_without_an_engine_the_registry_is_not_known_and_nothing_is_refused(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    read = images.registry_platforms(IMAGE)
    assert (read.archs, read.missing) == ((), False) and read.why.startswith("no Docker engine here")
