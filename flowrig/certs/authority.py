"""A small certificate authority that issues the leaf every Dask role presents.

Dask checks only that a peer's certificate chains to the cluster's CA (not host names),
so one leaf shared by the runner, the scheduler and the workers is enough; it carries
both serverAuth and clientAuth because every role listens and connects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509

from flowrig.certs import defaults, issue, validation
from flowrig.certs.keys import KeyType
from flowrig.certs.material import PRIVATE_MODE, TLSMaterial, TLSPaths, write_file
from flowrig.errors import BadInput


class CertificateAuthority:
    """A CA certificate with its private key, able to issue role leaves.

    Make one with :meth:`create` or :meth:`load`; the constructor takes already
    parsed ``cryptography`` objects.

    Parameters
    ----------
    certificate
        The CA certificate (BasicConstraints ``ca=True``).
    private_key
        The private key matching ``certificate``.
    label
        How messages name this CA (its file path when loaded).
    """

    def __init__(
        self, certificate: x509.Certificate, private_key: Any, label: str = "the CA"
    ) -> None:
        self.certificate = certificate
        self._private_key = private_key
        self._label = label

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority(subject={self.certificate.subject.rfc4514_string()!r}, "
            f"not_after={self.not_after.isoformat()!r})"
        )

    @classmethod
    def create(
        cls,
        common_name: str = defaults.CA_COMMON_NAME,
        days: int = defaults.CA_DAYS,
        key_type: KeyType = KeyType.ECDSA_P256,
        *,
        now: dt.datetime | None = None,
    ) -> CertificateAuthority:
        """Make a new CA with a fresh key.

        Parameters
        ----------
        common_name
            The CA's subject common name.
        days
            Validity from ``now``.
        key_type
            Algorithm of the CA key (and, by default, of the leaves it issues).
        now
            Start of validity; the current time when omitted.

        Raises
        ------
        BadInput
            ``days`` is not positive.
        """
        certificate, key = issue.ca_certificate(common_name, days, key_type, now=now)
        return cls(certificate, key)

    @classmethod
    def load(cls, ca_cert_path: str | Path, ca_key_path: str | Path) -> CertificateAuthority:
        """Load a CA from its certificate and private key files (PEM).

        Raises
        ------
        BadInput
            A file is missing or not PEM, the certificate is not a CA, or the key
            does not match it.
        """
        cert_path, key_path = Path(ca_cert_path), Path(ca_key_path)
        for path in (cert_path, key_path):
            if not path.is_file():
                raise BadInput(
                    f"{path} is missing: pass the CA files written by `flowrig certs generate`"
                )
        certificate = validation.load_certificates(cert_path.read_bytes(), str(cert_path))[0]
        key = validation.load_private_key(key_path.read_bytes(), str(key_path))
        if not validation.is_ca(certificate):
            raise BadInput(
                f"{cert_path} is not a CA certificate (it lacks BasicConstraints ca=True): "
                f"{validation.REGENERATE}"
            )
        if validation.public_der(key) != validation.public_der(certificate):
            raise BadInput(
                f"{key_path} is not the private key of {cert_path}: pass the matching key"
            )
        return cls(certificate, key, label=str(cert_path))

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return issue.certificate_pem(self.certificate)

    @property
    def key_pem(self) -> bytes:
        """The CA's private key, unencrypted PKCS#8 PEM. Never put it in an image."""
        return issue.key_pem(self._private_key)

    @property
    def not_after(self) -> dt.datetime:
        """End of the CA's validity, timezone-aware UTC."""
        return self.certificate.not_valid_after_utc

    @property
    def key_type(self) -> KeyType:
        """The key type leaves get by default: RSA for an RSA CA, else ECDSA P-256."""
        return issue.default_leaf_key_type(self._private_key)

    def issue_leaf(
        self,
        hosts: Iterable[str] = (),
        days: int = defaults.LEAF_DAYS,
        *,
        common_name: str = defaults.LEAF_COMMON_NAME,
        key_type: KeyType | None = None,
        now: dt.datetime | None = None,
    ) -> TLSMaterial:
        """Issue the leaf that the runner, scheduler and worker roles share.

        Parameters
        ----------
        hosts
            DNS names and IP addresses to add to :data:`flowrig.certs.defaults.LEAF_HOSTS`
            in the subject alternative names.
        days
            Validity from ``now``; cut short at the CA's own expiry.
        common_name
            The leaf's subject common name.
        key_type
            Algorithm of the leaf key; the CA's (:attr:`key_type`) when omitted.
        now
            Start of validity; the current time when omitted.

        Returns
        -------
        TLSMaterial
            This CA's certificate with the new leaf and its key.

        Raises
        ------
        BadInput
            ``days`` is not between 1 and :data:`flowrig.certs.defaults.MAX_LEAF_DAYS`,
            a host is neither a DNS name nor an IP address, or the CA has expired.
        """
        certificate, key = issue.leaf_certificate(
            self.certificate, self._private_key, hosts, days,
            common_name=common_name, key_type=key_type, now=now, ca_label=self._label,
        )
        return TLSMaterial(
            ca_pem=self.cert_pem,
            cert_pem=issue.certificate_pem(certificate),
            key_pem=issue.key_pem(key),
        )


def generate(
    out_dir: str | Path,
    hosts: Iterable[str] = (),
    days: int = defaults.LEAF_DAYS,
    ca_days: int = defaults.CA_DAYS,
    *,
    force: bool = False,
    key_type: KeyType = KeyType.ECDSA_P256,
) -> TLSPaths:
    """Make a CA and the shared role leaf, and write all four files.

    Parameters
    ----------
    out_dir
        Directory for ``ca.crt``, ``ca.key``, ``tls.crt`` and ``tls.key``; created
        when missing. Both keys get mode 0600.
    hosts
        Names and addresses to add to :data:`flowrig.certs.defaults.LEAF_HOSTS`.
    days, ca_days
        Validity of the leaf and of the CA.
    force
        Replace existing files instead of refusing.
    key_type
        Algorithm of both keys.

    Returns
    -------
    TLSPaths
        The written files, ``ca_key`` included.

    Raises
    ------
    BadInput
        A file exists and ``force`` is false, a host is invalid, or the validities
        are not positive, the leaf's exceeds :data:`flowrig.certs.defaults.MAX_LEAF_DAYS`
        or the CA's.
    """
    out = Path(out_dir)
    issue.require_leaf_days(days)
    issue.require_positive(ca_days, "CA validity (--ca-days)")
    if days > ca_days:
        raise BadInput(
            f"leaf validity {days} days exceeds the CA's {ca_days} days: "
            f"lower --days or raise --ca-days"
        )
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out} exists and is not a directory: choose another --out")
    names = (defaults.CA_CERT, defaults.CA_KEY, defaults.LEAF_CERT, defaults.LEAF_KEY)
    if not force:
        existing = [str(out / name) for name in names if (out / name).exists()]
        if existing:
            verb = "already exists" if len(existing) == 1 else "already exist"
            raise BadInput(
                f"{', '.join(existing)} {verb}: pass --force to replace, or choose another --out"
            )
    # Build everything before writing anything, so a bad host leaves no half-written set.
    hosts = (hosts,) if isinstance(hosts, str) else tuple(hosts)
    ca = CertificateAuthority.create(days=ca_days, key_type=key_type)
    material = ca.issue_leaf(hosts=hosts, days=days)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = out / defaults.CA_KEY
    write_file(ca_key, ca.key_pem, PRIVATE_MODE)
    paths = material.write_to_dir(out)
    return TLSPaths(ca_cert=paths.ca_cert, cert=paths.cert, key=paths.key, ca_key=ca_key)
