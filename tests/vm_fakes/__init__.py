"""Fake Azure and Google Cloud SDK clients for the ``azure`` and ``gcp`` backends' tests:
each records every call and keeps what it was asked to make, so flowrig's real code builds
every request, and a test injects the faults the clouds answer with.

The fakes stand in for the SDK's own clients (``ComputeManagementClient``,
``NetworkManagementClient``, ``SecretClient``, ``DefaultAzureCredential``; googleapiclient's
``build`` and ``google.auth.default``): :mod:`.fake_azure`, :mod:`.fake_google`. The
``azure`` and ``google`` fixtures install them (a pytest plugin of tests/conftest.py),
with the ledger's retries made quick and the run's image's registry not read (its names
are of registries these tests have none of; ``registry`` of tests/docker_support.py is a
real one, for the tests that read it).
"""

from __future__ import annotations

import pytest

from flowrig.backends import ledger
from tests.vm_fakes.fake_azure import (
    AZURE_OPTIONS,
    GROUP_PATH,
    REGISTRIES,
    REGISTRY_ID,
    SUB,
    VAULT_ID,
    AzureWorld,
    Done,
    Failing,
    FakeKind,
    assert_azure_empty,
    azure_error,
)
from tests.vm_fakes.fake_google import (
    GCP_OPTIONS,
    GREPO,
    REPOSITORY_POLICY,
    GoogleWorld,
    assert_google_empty,
    discovery_errors,
    http_error,
)

__all__ = [
    "AZURE_OPTIONS", "GCP_OPTIONS", "GREPO", "GROUP_PATH", "REGISTRIES", "REGISTRY_ID", "REPOSITORY_POLICY", "SUB",
    "VAULT_ID", "AzureWorld", "Done", "Failing", "FakeKind", "GoogleWorld", "assert_azure_empty",
    "assert_google_empty", "azure_error", "discovery_errors", "http_error",
]


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(ledger, "RETRY_SECONDS", 0.05)


@pytest.fixture
def no_registry(monkeypatch):
    """The run's image's registry is not read (``RegistryRead`` says why)."""
    from flowrig.containers.engine import images

    monkeypatch.setattr(images, "registry_platforms", lambda image: images.RegistryRead(why="no registry in a fake cloud"))


@pytest.fixture
def azure(monkeypatch, quick_retries, no_registry):
    return AzureWorld().install(monkeypatch)


@pytest.fixture
def google(monkeypatch, quick_retries, no_registry):
    return GoogleWorld().install(monkeypatch)
