"""The private-key scan: every form, any size, no false alarm on ordinary files."""

from __future__ import annotations

import os
import time

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from flowrig.certs import defaults as cert_defaults
from flowrig.certs import find_ca_private_keys
from flowrig.certs.scan import private_keys_in_bytes, private_keys_in_file
from tests.key_support import KEY_FORMS


@pytest.mark.parametrize("name", sorted(KEY_FORMS))
def test_each_form_is_found(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(KEY_FORMS[name]())
    assert len(list(private_keys_in_file(path))) == 1
    assert find_ca_private_keys(tmp_path) == [path]


@pytest.mark.parametrize(
    "data",
    [
        b'DOC = "-----BEGIN PRIVATE KEY----- goes here"\n',
        b'begin = "-----BEGIN PRIVATE KEY-----"\nend = "-----END PRIVATE KEY-----"\n',
        b"-----BEGIN PRIVATE KEY----- is a marker\n" * 10,
        bytes(range(256)) * 64 + b"PRIVATE KEY-----",
        b"",
        b"MIIB" + b"x" * 40 + b"\n",  # base64-looking, decodes to no key
    ],
    ids=["mention", "markers-in-code", "prose", "binary", "empty", "base64-noise"],
)
def test_ordinary_content_is_no_key(data):
    assert list(private_keys_in_bytes(data)) == []


def test_certificates_and_public_keys_are_no_key(tmp_path):
    from tests.tls_support import foreign_material

    material = foreign_material()
    key = ser.load_pem_private_key(material.key_pem, None)
    public = key.public_key()
    data = (
        material.ca_pem
        + material.cert_pem
        + public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    )
    assert list(private_keys_in_bytes(data)) == []
    der_cert = tmp_path / "ca.der"
    from cryptography import x509

    der_cert.write_bytes(x509.load_pem_x509_certificate(material.ca_pem).public_bytes(ser.Encoding.DER))
    assert list(private_keys_in_file(der_cert)) == []


def test_a_trust_store_pkcs12_without_a_key_is_no_key():
    from cryptography import x509

    from tests.tls_support import foreign_material

    cert = x509.load_pem_x509_certificate(foreign_material().ca_pem)
    store = pkcs12.serialize_key_and_certificates(b"store", None, None, [cert], ser.NoEncryption())
    assert list(private_keys_in_bytes(store)) == []


def test_a_key_across_a_chunk_boundary_is_found(monkeypatch):
    monkeypatch.setattr(cert_defaults, "KEY_SCAN_CHUNK_BYTES", 4096)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    )
    for offset in (4096 - 100, 4096 - 5, 4096, 3 * 4096 - 1):
        data = b"a" * offset + b"\n" + pem + b"z" * 5000
        found = list(private_keys_in_bytes(data))
        assert [(k.form, k.offset) for k in found] == [("PEM", offset + 1)], offset
        assert found[0].public is not None


def test_a_key_deep_in_a_large_file_is_found_within_the_time_budget(tmp_path):
    """The documented budget (docs/security.md): 10 s per GiB (measured: about 1.5 s per GiB, 2.6 s dense base64)."""
    size = 96 * 1024 * 1024
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    )
    path = tmp_path / "data.bin"
    with path.open("wb") as handle:
        handle.write(os.urandom(size - 4096))
        handle.write(b"\n" + pem)
    started = time.perf_counter()
    found = list(private_keys_in_file(path))
    elapsed = time.perf_counter() - started
    assert [k.offset for k in found] == [size - 4096 + 1]
    assert elapsed < 10 * size / 2**30, f"{elapsed:.2f} s for {size >> 20} MiB"
