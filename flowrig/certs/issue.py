"""The x509 building behind a CA and the leaf every Dask role presents.

Pure certificate construction: keys, names, extensions, validity and signatures. It
returns ``cryptography`` objects and writes nothing, so both the certificate authority
(:mod:`flowrig.certs.authority`) and throw-away material
(:meth:`flowrig.certs.material.TLSMaterial.ephemeral`) build on it without importing
each other.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flowrig.certs import defaults, validation
from flowrig.certs.keys import KeyType
from flowrig.errors import BadInput

# A DNS name label: letters, digits, hyphens and underscores (service names use them);
# a leading "*." wildcard is allowed.
_DNS_NAME = re.compile(r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$")


def ca_certificate(
    common_name: str, days: int, key_type: KeyType, *, now: dt.datetime | None = None
) -> tuple[x509.Certificate, Any]:
    """A new self-signed CA certificate and its fresh private key.

    Raises
    ------
    BadInput
        ``days`` is not positive.
    """
    require_positive(days, "CA validity (--ca-days)")
    start = start_of(now)
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
    return certificate, key


def default_leaf_key_type(ca_key: Any) -> KeyType:
    """The key type leaves get by default: RSA under an RSA CA, else ECDSA P-256."""
    if isinstance(ca_key, rsa.RSAPrivateKey):
        return KeyType.RSA_3072
    return KeyType.ECDSA_P256


def leaf_certificate(
    ca_certificate: x509.Certificate,
    ca_key: Any,
    hosts: Iterable[str],
    days: int,
    *,
    common_name: str,
    key_type: KeyType | None,
    now: dt.datetime | None,
    ca_label: str,
) -> tuple[x509.Certificate, Any]:
    """A leaf for serverAuth and clientAuth, signed by ``ca_key``, and its private key.

    ``key_type`` defaults to :func:`default_leaf_key_type` of the CA's key; the leaf
    never outlives the CA (``ca_label`` names it when it has expired).

    Raises
    ------
    BadInput
        ``days`` is not between 1 and :data:`flowrig.certs.defaults.MAX_LEAF_DAYS`,
        a host is neither a DNS name nor an IP address, or the CA has expired.
    """
    require_leaf_days(days)
    start = start_of(now)
    ca_not_after = ca_certificate.not_valid_after_utc
    if start >= ca_not_after:
        raise BadInput(
            f"{ca_label} expired on {validation.day(ca_not_after)}: "
            f"{validation.REGENERATE}"
        )
    key_type = KeyType(key_type) if key_type is not None else default_leaf_key_type(ca_key)
    key = key_type.generate()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(seconds=defaults.CERT_BACKDATE_SECONDS))
        # A leaf outliving its CA would only fail later, during a handshake.
        .not_valid_after(min(start + dt.timedelta(days=days), ca_not_after))
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
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                _subject_key_identifier(ca_certificate)
            ),
            critical=False,
        )
        .sign(ca_key, _hash_for(ca_key))
    )
    return certificate, key


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """``certificate``, PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any) -> bytes:
    """``key``, unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


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


def start_of(now: dt.datetime | None) -> dt.datetime:
    """Start of validity: ``now`` (timezone-aware), or the current time."""
    if now is None:
        return dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def require_positive(days: int, what: str) -> None:
    """Refuse a validity of less than a day."""
    if days < 1:
        raise BadInput(f"{what} must be at least 1 day, got {days}")


def require_leaf_days(days: int) -> None:
    """Refuse a leaf validity outside 1 to :data:`flowrig.certs.defaults.MAX_LEAF_DAYS` days."""
    require_positive(days, "leaf validity (--days)")
    if days > defaults.MAX_LEAF_DAYS:
        raise BadInput(
            f"leaf validity (--days) may be at most {defaults.MAX_LEAF_DAYS} days, got {days}: leaves are "
            f"short-lived on purpose (the default is {defaults.LEAF_DAYS}); make new ones before they expire"
        )


def _subject_key_identifier(certificate: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # A CA made elsewhere may lack one; derive it the way RFC 5280 suggests.
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())


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
