"""Certificates for mutual TLS between a run's flow runner, Dask scheduler and workers.

The public surface is small::

    ca = CertificateAuthority.create()
    material = ca.issue_leaf(hosts=["scheduler.internal"])
    material.write_to_dir("certs")           # ca.crt, tls.crt, tls.key (0600)
    security = TLSMaterial.from_dir("certs").to_security()

plus :func:`generate` and :func:`check` behind ``flowrig certs``, and
:func:`find_ca_private_keys` for build contexts.

Names are resolved on first use, so importing this package (as the CLI does) does not
import ``cryptography``.

May import: :mod:`flowrig.layout`, :mod:`flowrig.errors`, ``cryptography`` (and
``distributed`` for its ``Security`` objects).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowrig.certs.authority import CertificateAuthority, generate
    from flowrig.certs.keys import KeyType
    from flowrig.certs.material import TLSMaterial, TLSPaths
    from flowrig.certs.scan import find_ca_private_keys
    from flowrig.certs.validation import CheckReport, check

_EXPORTS = {
    "CertificateAuthority": "flowrig.certs.authority",
    "generate": "flowrig.certs.authority",
    "CheckReport": "flowrig.certs.validation",
    "check": "flowrig.certs.validation",
    "KeyType": "flowrig.certs.keys",
    "TLSMaterial": "flowrig.certs.material",
    "TLSPaths": "flowrig.certs.material",
    "find_ca_private_keys": "flowrig.certs.scan",
}

__all__ = [
    "CertificateAuthority",
    "CheckReport",
    "KeyType",
    "TLSMaterial",
    "TLSPaths",
    "check",
    "find_ca_private_keys",
    "generate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
