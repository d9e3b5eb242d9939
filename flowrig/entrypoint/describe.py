"""What ``flowrig-entrypoint info`` reports about an image."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flowrig import layout

_PACKAGES = ("flowrig", "prefect", "prefect-dask", "distributed", "dask", "dask-cloudprovider", "cryptography")


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _certificate() -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from flowrig.roles import tls_dir

    path = tls_dir() / layout.LEAF_CERT
    if not path.is_file():
        return {"path": str(path), "present": False}
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    not_after = cert.not_valid_after_utc
    days_left = (not_after - dt.datetime.now(dt.timezone.utc)).days
    found: dict[str, Any] = {
        "path": str(path),
        "present": True,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": not_after.isoformat(),
        "days_left": days_left,
        "expired": days_left < 0,
    }
    ca_path = path.parent / layout.CA_CERT
    if ca_path.is_file():
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        found["ca_sha256"] = ca.fingerprint(hashes.SHA256()).hex()
        found["ca_not_after"] = ca.not_valid_after_utc.isoformat()
    return found


def describe_image() -> dict[str, Any]:
    """Manifest, versions, certificate expiry and the user the process runs as."""
    manifest_path = layout.IMAGE_MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return {
        "manifest": manifest,
        # Images from before TLS modes existed baked their certificates.
        "tls_mode": (manifest or {}).get("tls_mode", layout.TLS_BAKED),
        "versions": _versions(),
        "certificate": _certificate(),
        "user": {"uid": os.getuid(), "gid": os.getgid()},
        "project_dir": str(layout.IMAGE_PROJECT_DIR),
    }
