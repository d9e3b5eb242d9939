"""Certificates where a process or a cluster is needed: a real mutual-TLS handshake with a
Dask scheduler and worker, a leaf forged with openssl, ``bake-tls`` and ``flowrig run``
refusing weak certificates, and what importing the CLI loads. The rest is in
tests/unit/test_certs.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flowrig.certs import (
    CertificateAuthority,
    TLSMaterial,
    check,
    generate,
)
from flowrig.certs import defaults as cert_defaults
from tests.tls_support import foreign_material
from tests.unit.test_certs import forge_leaf, load_cert, pem, refused

REPO = Path(__file__).resolve().parents[3]


# --- helpers ------------------------------------------------------------------


# --- CLI --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def test_cli_module_imports_neither_cryptography_nor_distributed():
    code = (
        "import sys, flowrig.cli.certs; "
        "print(sorted(m for m in ('cryptography', 'distributed') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def _flowrig(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from flowrig.cli import main; sys.argv[0] = 'flowrig'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


# --- mutual TLS, for real -------------------------------------------------------------


def _double(x: int) -> int:
    return 2 * x


@pytest.mark.timeout(90)
def test_mutual_tls_between_scheduler_worker_and_clients(tmp_path):
    from distributed import Client, Scheduler, SchedulerPlugin, Worker

    generate(tmp_path, days=2, ca_days=3)
    material = TLSMaterial.from_dir(tmp_path)
    security = material.to_security()
    assert security.require_encryption
    foreign = foreign_material()
    # Trusts the right CA but presents a leaf from another one: only mutual TLS stops it.
    impostor = TLSMaterial(material.ca_pem, foreign.cert_pem, foreign.key_pem).to_security()

    class ClientLog(SchedulerPlugin):
        def __init__(self) -> None:
            self.clients: list[str] = []

        def add_client(self, scheduler, client: str) -> None:
            self.clients.append(client)

    log = ClientLog()

    async def scenario() -> None:
        async with Scheduler(
            security=security,
            protocol="tls",
            host="127.0.0.1",
            port=0,
            dashboard=False,
            dashboard_address="127.0.0.1:0",
        ) as scheduler:
            scheduler.add_plugin(log)
            assert scheduler.address.startswith("tls://127.0.0.1:")
            async with Worker(scheduler.address, security=security, nthreads=1):
                async with Client(
                    scheduler.address, security=security, asynchronous=True, timeout="10s"
                ) as client:
                    assert await client.submit(_double, 21) == 42
            assert len(log.clients) == 1

            accepted = []
            for name, address, sec in [
                ("foreign CA", scheduler.address, foreign.to_security()),
                ("impostor leaf", scheduler.address, impostor),
                ("plain tcp", scheduler.address.replace("tls://", "tcp://"), None),
            ]:
                try:
                    async with Client(address, security=sec, asynchronous=True, timeout="3s"):
                        pass  # connecting at all is being accepted
                except (OSError, TimeoutError):
                    continue  # refused, as it must be
                accepted.append(name)
            assert accepted == []
            assert len(log.clients) == 1, log.clients

    asyncio.run(scenario())


# --- the certificate policy: every refusal, with certificates forged here ---------------------


def test_a_leaf_signed_with_sha1_is_refused(tmp_path):
    # cryptography no longer signs with SHA-1; openssl (which ca-certificates brings) still does.
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to forge a SHA-1 signature"
    generate(tmp_path / "ca")
    (tmp_path / "ext.cnf").write_text("[v3]\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n")
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "leaf.key").write_bytes(pem(key))
    for command in (
        [openssl, "req", "-new", "-key", "leaf.key", "-subj", "/CN=forged", "-out", "leaf.csr"],
        [openssl, "x509", "-req", "-in", "leaf.csr", "-CA", "ca/ca.crt", "-CAkey", "ca/ca.key", "-sha1",
         "-days", "30", "-extfile", "ext.cnf", "-extensions", "v3", "-out", "leaf.crt"],
    ):
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    leaf = load_cert((tmp_path / "leaf.crt").read_bytes())
    message = refused(tmp_path / "given", (tmp_path / "ca" / "ca.crt").read_bytes(), leaf, key)
    assert "is signed with SHA1, which TLS no longer trusts" in message


def test_flowrig_run_with_weak_given_certificates_is_refused_before_anything_starts(tmp_path, ca):
    leaf, key = forge_leaf(ca, key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    TLSMaterial(ca.cert_pem, pem(leaf), pem(key)).write_to_dir(tmp_path / "certs")
    result = _flowrig("run", str(REPO / "examples" / "seed"), "--certs", str(tmp_path / "certs"),
                      "--param", "x=[1]")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"flowrig: error: {tmp_path / 'certs' / 'tls.crt'} has a RSA 1024-bit key")


def test_baked_certificates_meet_the_policy_and_a_weak_tls_dir_is_not_baked(tmp_path):
    # What an image built with --tls baked and no tls/ gets: inside every bound.
    baked = TLSMaterial.ephemeral()
    leaf = load_cert(baked.cert_pem)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=cert_defaults.MAX_LEAF_DAYS)
    baked.write_to_dir(tmp_path / "ok")
    check(tmp_path / "ok")
    # A context's tls/ with a 10-year leaf: the bake step refuses it.
    long_ca = CertificateAuthority.create(days=4000)
    leaf, key = forge_leaf(long_ca, days=3650)
    TLSMaterial(long_ca.cert_pem, pem(leaf), pem(key)).write_to_dir(tmp_path / "tls")
    done = subprocess.run(
        [sys.executable, "-c", "from flowrig.entrypoint import main; main()", "bake-tls", str(tmp_path / "tls"),
         "--out", str(tmp_path / "out"), "--mode", "baked"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "is valid for 3650 days" in done.stderr and len(done.stderr.strip().splitlines()) == 1
