"""Key types a certificate authority and its leaves can use.

Light on purpose: the CLI imports this module to offer ``--key-type``, so
``cryptography`` is only imported when a key is actually made.
"""

from __future__ import annotations

import enum
from typing import Any


class KeyType(str, enum.Enum):
    """The algorithm of a private key; each member knows how to make its own key.

    ECDSA P-256 is the default: small, fast to make and to use in handshakes, and
    accepted by every TLS stack Dask runs on. RSA 3072 is there for policies that
    require RSA.
    """

    ECDSA_P256 = "ecdsa-p256"
    RSA_3072 = "rsa-3072"

    def generate(self) -> Any:
        """Make a new private key of this type.

        Returns
        -------
        cryptography.hazmat.primitives.asymmetric.types.CertificateIssuerPrivateKeyTypes
            A fresh private key, only in memory.
        """
        if self is KeyType.RSA_3072:
            from cryptography.hazmat.primitives.asymmetric import rsa

            return rsa.generate_private_key(public_exponent=65537, key_size=3072)
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.generate_private_key(ec.SECP256R1())

    @property
    def encrypts_keys(self) -> bool:
        """Whether TLS may use this key for key encipherment (RSA key transport)."""
        return self is KeyType.RSA_3072
