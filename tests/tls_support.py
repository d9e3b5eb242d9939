"""Certificates for tests (registered in conftest.py): the run's kind, and a foreign kind;
and a real scheduler on loopback that uses them, standing in for a cloud run's tasks.

``tls`` is material as flowrig makes it for a run. ``foreign_tls`` comes from an
independent source (trustme), so a refusal test does not depend on the code under test
to make the stranger it refuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from flowrig.certs import TLSMaterial

#: The Dask flags naming the TLS files baked into an image.
TLS_FLAGS = ["--tls-ca-file", "/etc/flowrig/tls/ca.crt", "--tls-cert", "/etc/flowrig/tls/tls.crt",
             "--tls-key", "/etc/flowrig/tls/tls.key"]


@pytest.fixture(scope="session")
def tls():
    """Per-run certificates, as a run without ``--certs`` gets them."""
    from flowrig.certs import TLSMaterial

    return TLSMaterial.ephemeral()


def foreign_material():
    """A CA and a leaf that serves and connects, made by trustme, not by flowrig."""
    import trustme

    from flowrig.certs import TLSMaterial

    ca = trustme.CA(organization_name="someone else")
    leaf = ca.issue_cert("stranger.example", "127.0.0.1")
    return TLSMaterial(
        ca_pem=ca.cert_pem.bytes(),
        cert_pem=leaf.cert_chain_pems[0].bytes(),
        key_pem=leaf.private_key_pem.bytes(),
    )


@pytest.fixture(scope="session")
def foreign_tls():
    """Certificates of another CA: every role of a run must refuse them."""
    return foreign_material()


def local_scheduler(tls: TLSMaterial, workers: int):
    """A real mutual-TLS scheduler on loopback, with ``workers`` in-process workers.

    Worker names must differ from the ECS workers' (0, 1, ...), which the ECS cluster
    retires by name when it closes.
    """
    from distributed import Scheduler, SpecCluster, Worker

    security = tls.to_security()
    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"protocol": "tls", "host": "127.0.0.1",
                                                 "security": security, "dashboard_address": None}},
        workers={f"local-{i}": {"cls": Worker, "options": {"nthreads": 1, "host": "127.0.0.1",
                                                            "security": security}} for i in range(workers)},
        security=security,
    )
