"""A small certificate authority that issues the leaf every Dask role presents.

Dask checks only that a peer's certificate chains to the cluster's CA (not host names),
so one leaf shared by the runner, the scheduler and the workers is enough; it carries
both serverAuth and clientAuth because every role listens and connects.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flowrig.certs import defaults, validation
from flowrig.certs.keys import KeyType
from flowrig.certs.material import PRIVATE_MODE, TLSMaterial, TLSPaths, write_file
from flowrig.errors import BadInput

# A DNS name label: letters, digits, hyphens and underscores (service names use them);
# a leading "*." wildcard is allowed.
_DNS_NAME = re.compile(r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$")


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
        _require_positive(days, "CA validity (--ca-days)")
        start = _start(now)
        key = KeyType(key_type).generate()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(seconds=defaults.CERT_BACKDATE_SECONDS))
            .not_valid_after(start + dt.timedelta(days=days))
            # path_length=0: this CA signs leaves only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, _hash_for(key))
        )
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
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA's private key, unencrypted PKCS#8 PEM. Never put it in an image."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def not_after(self) -> dt.datetime:
        """End of the CA's validity, timezone-aware UTC."""
        return self.certificate.not_valid_after_utc

    @property
    def key_type(self) -> KeyType:
        """The key type leaves get by default: RSA for an RSA CA, else ECDSA P-256."""
        if isinstance(self._private_key, rsa.RSAPrivateKey):
            return KeyType.RSA_3072
        return KeyType.ECDSA_P256

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
        _require_leaf_days(days)
        start = _start(now)
        if start >= self.not_after:
            raise BadInput(
                f"{self._label} expired on {validation.day(self.not_after)}: "
                f"{validation.REGENERATE}"
            )
        key_type = KeyType(key_type) if key_type is not None else self.key_type
        key = key_type.generate()
        ca_ski = self._subject_key_identifier()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(seconds=defaults.CERT_BACKDATE_SECONDS))
            # A leaf outliving its CA would only fail later, during a handshake.
            .not_valid_after(min(start + dt.timedelta(days=days), self.not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(digital_signature=True, key_encipherment=key_type.encrypts_keys),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(alt_names(hosts)), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(self._private_key, _hash_for(self._private_key))
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return TLSMaterial(
            ca_pem=self.cert_pem,
            cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
            key_pem=key_pem,
        )

    def _subject_key_identifier(self) -> x509.SubjectKeyIdentifier:
        try:
            return self.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value
        except x509.ExtensionNotFound:
            # A CA made elsewhere may lack one; derive it the way RFC 5280 suggests.
            return x509.SubjectKeyIdentifier.from_public_key(self.certificate.public_key())


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
    _require_leaf_days(days)
    _require_positive(ca_days, "CA validity (--ca-days)")
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


def alt_names(hosts: Iterable[str] = ()) -> list[x509.GeneralName]:
    """Subject alternative names for :data:`flowrig.certs.defaults.LEAF_HOSTS` plus ``hosts``.

    Duplicates are dropped, order is kept.

    Raises
    ------
    BadInput
        A host is neither an IP address nor a DNS name.
    """
    if isinstance(hosts, str):
        hosts = [hosts]
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*defaults.LEAF_HOSTS, *hosts):
        name = _alt_name(host)
        key = str(name.value).lower()
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def _alt_name(host: str) -> x509.GeneralName:
    text = host.strip().strip("[]")  # "[::1]" is how IPv6 addresses appear in URLs
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        ascii_name = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        ascii_name = ""
    if len(ascii_name) > 253 or not _DNS_NAME.match(ascii_name):
        raise BadInput(
            f"host {host!r} is neither a DNS name nor an IP address: "
            f"pass names like dask-scheduler.internal or addresses like 10.0.0.5"
        )
    return x509.DNSName(ascii_name)


def _key_usage(**usages: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(usages)
    return x509.KeyUsage(**flags)


def _hash_for(key: Any) -> hashes.HashAlgorithm | None:
    # Ed25519 and Ed448 sign without a separate hash; a loaded CA may use them.
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _start(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _require_positive(days: int, what: str) -> None:
    if days < 1:
        raise BadInput(f"{what} must be at least 1 day, got {days}")


def _require_leaf_days(days: int) -> None:
    _require_positive(days, "leaf validity (--days)")
    if days > defaults.MAX_LEAF_DAYS:
        raise BadInput(
            f"leaf validity (--days) may be at most {defaults.MAX_LEAF_DAYS} days, got {days}: leaves are "
            f"short-lived on purpose (the default is {defaults.LEAF_DAYS}); make new ones before they expire"
        )
