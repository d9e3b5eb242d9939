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

    from flowrig.roles import tls_dir

    path = tls_dir() / layout.LEAF_CERT
    if not path.is_file():
        return {"path": str(path), "present": False}
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    not_after = cert.not_valid_after_utc
    days_left = (not_after - dt.datetime.now(dt.timezone.utc)).days
    return {
        "path": str(path),
        "present": True,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": not_after.isoformat(),
        "days_left": days_left,
        "expired": days_left < 0,
    }


def describe_image() -> dict[str, Any]:
    """Manifest, versions, certificate expiry and the user the process runs as."""
    manifest_path = layout.IMAGE_MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return {
        "manifest": manifest,
        "versions": _versions(),
        "certificate": _certificate(),
        "user": {"uid": os.getuid(), "gid": os.getgid()},
        "project_dir": str(layout.IMAGE_PROJECT_DIR),
    }
