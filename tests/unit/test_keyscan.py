"""The private-key scan: every form, any size, no false alarm on ordinary files."""

from __future__ import annotations

import os

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


def _certificate_and_public_der() -> tuple[bytes, bytes]:
    from cryptography import x509

    from tests.tls_support import foreign_material

    cert = x509.load_pem_x509_certificate(foreign_material().cert_pem)
    public = cert.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_bytes(ser.Encoding.DER), public


def test_hex_utf16_and_quoted_look_alikes_are_no_key():
    import hashlib
    import uuid

    from tests.tls_support import foreign_material

    cert, public = _certificate_and_public_der()
    pem = foreign_material().ca_pem.decode()
    look_alikes = {
        "certificate hex": cert.hex().encode(),
        "certificate hex with colons": b":".join(b"%02x" % byte for byte in cert),
        "public key as a C array": b", ".join(b"0x%02x" % byte for byte in public),
        "digests": b"\n".join(hashlib.sha256(bytes([n])).hexdigest().encode() for n in range(256)),
        "uuids and dates": b"\n".join(f"{uuid.uuid4()} 2020-12-01 0201 02 01 30 82".encode() for _ in range(500)),
        "hex of ASCII zeros": b"30" * 100_000,
        "UTF-16 certificate": pem.encode("utf-16"),
        "UTF-16 prose": ("-----BEGIN PRIVATE KEY----- goes here\n" * 50).encode("utf-16-le"),
        "quoted mention": b"> hello\n> > -----BEGIN PRIVATE KEY----- goes here\n> bye\n",
        "commented certificate": "".join(f"# {line}\n" for line in pem.splitlines()).encode(),
    }
    for name, data in look_alikes.items():
        assert list(private_keys_in_bytes(data)) == [], name


def test_keys_in_the_new_forms_are_read_not_only_noticed():
    # Read, they can be told apart from the image's own leaf key (find_ca_private_keys).
    readable = ["der-hex.txt", "der-hex-colons.txt", "der-hex-array.h", "pem-quoted-mail.eml",
                "pem-line-comment.js", "pem-block-comment.c", "pem-utf16-le-bom.txt", "pem-utf16-be.txt"]
    for name in readable:
        [key] = private_keys_in_bytes(KEY_FORMS[name]())
        assert key.public is not None, name


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-16"])
def test_a_utf16_key_across_a_chunk_boundary_is_found(monkeypatch, codec):
    monkeypatch.setattr(cert_defaults, "KEY_SCAN_CHUNK_BYTES", 4096)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    )
    for offset in (2048 - 40, 4096 - 7, 3 * 4096):
        data = ("a" * offset + "\n" + pem.decode() + "z" * 5000).encode(codec)
        [key] = private_keys_in_bytes(data)
        assert key.form == "UTF-16 PEM" and key.public is not None, offset
        bom = 2 if codec == "utf-16" else 0
        assert abs(key.offset - (bom + 2 * (offset + 1))) <= 1, (offset, key.offset)


def test_a_hex_key_deep_in_a_file_and_across_a_chunk_boundary_is_found(monkeypatch):
    monkeypatch.setattr(cert_defaults, "KEY_SCAN_CHUNK_BYTES", 4096)
    text = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    ).hex().encode()
    for offset in (4096 - 100, 4096 - 3, 2 * 4096 + 1):
        data = b"3030 " * (offset // 5) + b"x" * (offset % 5) + b"\n" + text + b"\n" + b"30" * 3000
        found = list(private_keys_in_bytes(data))
        assert [(k.form, k.offset) for k in found] == [("hex DER PKCS#8", offset + 1)], offset


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


def test_a_key_deep_in_a_large_file_is_found(tmp_path):
    """A key behind 96 MiB of noise is found where it is (the time per GiB is measured by
    benchmarks/bench_scan.py, not asserted here)."""
    size = 96 * 1024 * 1024
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    )
    path = tmp_path / "data.bin"
    with path.open("wb") as handle:
        handle.write(os.urandom(size - 4096))
        handle.write(b"\n" + pem)
    found = list(private_keys_in_file(path))
    assert [k.offset for k in found] == [size - 4096 + 1]
