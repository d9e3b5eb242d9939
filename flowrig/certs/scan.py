"""Find private keys that must not go into an image, such as a CA's key in a build context.

Whoever holds the CA key can mint certificates every cluster built from that CA trusts,
so an image must carry only the leaf key. The scan errs on the side of reporting: any
private key that is not provably the key of a leaf certificate in the same tree counts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from flowrig.certs import defaults, validation

_KEY_MARKER = b"PRIVATE KEY-----"
_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
# One whole PEM private key block (PKCS#8, "RSA", "EC", "ENCRYPTED", "OPENSSH", ...).
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.DOTALL
)


def find_ca_private_keys(root: str | Path) -> list[Path]:
    """Files under ``root`` holding a private key that is not a leaf's key.

    Reported are: every file named ``ca.key``; every file with a private key whose
    public key belongs to a CA certificate (BasicConstraints ``ca=True``) found in
    the tree; and every file with a private key that matches no leaf certificate in
    the tree (including keys that are encrypted or cannot be parsed, since they
    cannot be shown to be harmless).

    Only regular files smaller than :data:`flowrig.certs.defaults.KEY_SCAN_MAX_BYTES` are
    read; symbolic links are not followed.

    Parameters
    ----------
    root
        A directory, typically a Docker build context.

    Returns
    -------
    list of Path
        The offending files, sorted; empty when the tree is clean.
    """
    ca_keys: set[bytes] = set()
    leaf_keys: set[bytes] = set()
    key_files: dict[Path, list[bytes]] = {}
    reported: set[Path] = set()

    for path in _files(Path(root)):
        if path.name.lower() == defaults.CA_KEY:
            reported.add(path)
        data = _read_small(path)
        if data is None:
            continue
        if _CERT_MARKER in data:
            for certificate in _certificates(data):
                try:
                    public = validation.public_der(certificate)
                except (ValueError, UnsupportedAlgorithm):
                    continue  # a key type cryptography cannot read matches no key either
                target = ca_keys if validation.is_ca(certificate) else leaf_keys
                target.add(public)
        if _KEY_MARKER in data:
            blocks = [match.group(0) for match in _KEY_BLOCK.finditer(data)]
            if blocks:
                key_files[path] = blocks

    for path, blocks in key_files.items():
        for block in blocks:
            public = _public_of(block)
            if public is None or public in ca_keys or public not in leaf_keys:
                reported.add(path)
                break
    return sorted(reported)


def _files(root: Path):
    for directory, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(directory) / name
            if not path.is_symlink():
                yield path


def _read_small(path: Path) -> bytes | None:
    try:
        if path.stat().st_size >= defaults.KEY_SCAN_MAX_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        # Unreadable here means unreadable for `docker build` too; it cannot leak.
        return None


def _certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def _public_of(block: bytes) -> bytes | None:
    """Public key DER of a PEM private key block, or None when it cannot be read."""
    key: Any
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        # Encrypted (TypeError), an OpenSSH key, or not a key at all.
        try:
            key = serialization.load_ssh_private_key(block, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            return None
    try:
        return validation.public_der(key)
    except (ValueError, UnsupportedAlgorithm):
        return None
