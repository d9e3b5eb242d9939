"""Checks that a CA certificate, a leaf and its key will work for a mutual-TLS Dask cluster.

Everything Dask or OpenSSL would reject later, with an obscure message from deep inside
a handshake, is rejected here with one line that names the file and the fix.
"""

from __future__ import annotations

import datetime as dt
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from flowrig.certs import defaults
from flowrig.errors import BadInput

#: Hint appended to every problem that new certificates solve.
REGENERATE = "generate new certificates with `flowrig certs generate`"


@dataclass(frozen=True)
class CheckReport:
    """What a successful check found out about a leaf certificate.

    Attributes
    ----------
    subject
        The leaf's subject, RFC 4514 style (``CN=flowrig dask``).
    not_after
        End of the leaf's validity, timezone-aware UTC.
    days_left
        Whole days from the time of the check to ``not_after``.
    hosts
        DNS names and IP addresses the leaf names (its subject alternative names).
    warnings
        One-line notes that do not make the certificates unusable (expiry close).
    """

    subject: str
    not_after: dt.datetime
    days_left: int
    hosts: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Labels:
    """How messages name the three inputs: file paths, or bare names for in-memory data."""

    ca: str = defaults.CA_CERT
    cert: str = defaults.LEAF_CERT
    key: str = defaults.LEAF_KEY

    @classmethod
    def for_dir(cls, directory: Path) -> Labels:
        return cls(
            ca=str(directory / defaults.CA_CERT),
            cert=str(directory / defaults.LEAF_CERT),
            key=str(directory / defaults.LEAF_KEY),
        )


def check(directory: str | Path, *, now: dt.datetime | None = None) -> CheckReport:
    """Check the certificates in a directory, as ``flowrig certs check`` does.

    Parameters
    ----------
    directory
        Holds ``ca.crt``, ``tls.crt`` and ``tls.key``.
    now
        The moment to check validity at; the current time when omitted.

    Returns
    -------
    CheckReport
        The leaf's subject and expiry, plus warnings (expiry within
        :data:`flowrig.certs.defaults.EXPIRY_WARNING_DAYS`, a key readable by others).

    Raises
    ------
    BadInput
        A file is missing or not PEM, the key does not match the leaf, the leaf does
        not chain to ``ca.crt``, ``ca.crt`` is not a CA, or a certificate is expired or
        not yet valid; or the certificates break flowrig's policy (:func:`inspect`).
    """
    directory = Path(directory)
    ca_pem, cert_pem, key_pem = read_dir(directory)
    report = inspect(ca_pem, cert_pem, key_pem, labels=Labels.for_dir(directory), now=now)
    key_path = directory / defaults.LEAF_KEY
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        report.warnings.append(
            f"{key_path} is readable by other users (mode {mode:04o}): chmod 600 {key_path}"
        )
    return report


def read_dir(directory: Path) -> tuple[bytes, bytes, bytes]:
    """Read ``ca.crt``, ``tls.crt`` and ``tls.key`` from a directory.

    Raises
    ------
    BadInput
        The directory or one of the files is missing or unreadable.
    """
    if not directory.is_dir():
        raise BadInput(
            f"certificate directory {directory} does not exist: "
            f"create it with `flowrig certs generate --out {directory}`"
        )
    contents = []
    for name in (defaults.CA_CERT, defaults.LEAF_CERT, defaults.LEAF_KEY):
        path = directory / name
        if not path.is_file():
            raise BadInput(
                f"{path} is missing: generate certificates with "
                f"`flowrig certs generate --out {directory}`"
            )
        try:
            contents.append(path.read_bytes())
        except OSError as exc:
            raise BadInput(f"{path} cannot be read ({exc.strerror}): fix its permissions") from None
    return contents[0], contents[1], contents[2]


def inspect(
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    *,
    labels: Labels = Labels(),
    now: dt.datetime | None = None,
) -> CheckReport:
    """Check in-memory PEM data; the work behind :func:`check` and ``TLSMaterial.from_dir``.

    ``ca_pem`` may hold several CA certificates (a bundle); the leaf must be issued
    directly by one of them.

    Besides what Dask itself needs, certificates must meet flowrig's policy, whoever
    made them: the leaf is not a CA and does not share its CA's key (else ``tls.key``,
    which every role holds, would be the key that issues certificates the cluster
    trusts); it names both serverAuth and clientAuth in its extended key usage; no
    key is weaker than RSA 2048 or P-256 (:data:`~flowrig.certs.defaults.MIN_RSA_BITS`,
    :data:`~flowrig.certs.defaults.MIN_EC_BITS`); the leaf is valid for at most
    :data:`~flowrig.certs.defaults.MAX_LEAF_DAYS` days and is not signed with MD5 or SHA-1.

    Raises
    ------
    BadInput
        As :func:`check`.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    cas = load_certificates(ca_pem, labels.ca)
    leaf = load_certificates(cert_pem, labels.cert)[0]
    key = load_private_key(key_pem, labels.key)

    issuer = _check_chain(leaf, key, cas, labels)
    _check_leaf(leaf, issuer, cas, labels)
    for label, cert in ((labels.ca, issuer), (labels.cert, leaf)):
        check_validity(cert, label, now)

    warnings = []
    for label, cert in ((labels.cert, leaf), (labels.ca, issuer)):
        left = days_left(cert, now)
        if left < defaults.EXPIRY_WARNING_DAYS:
            warnings.append(
                f"{label} expires in {left} days (on {day(cert.not_valid_after_utc)}): "
                f"{REGENERATE} soon"
            )
    return CheckReport(
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        days_left=days_left(leaf, now),
        hosts=alt_names(leaf),
        warnings=warnings,
    )


def _check_chain(
    leaf: x509.Certificate, key: Any, cas: list[x509.Certificate], labels: Labels
) -> x509.Certificate:
    """The CA in ``cas`` that issued ``leaf``, once the key, the signature and the CA pass."""
    if public_der(key) != public_der(leaf):
        raise BadInput(
            f"{labels.key} does not belong to the certificate in {labels.cert}: "
            f"use the key that was generated with it, or {REGENERATE}"
        )
    # Before the chain: cryptography does not verify such signatures at all.
    try:
        algorithm = leaf.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None  # OpenSSL judges what cryptography does not know
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        raise BadInput(
            f"{labels.cert} is signed with {algorithm.name.upper()}, which TLS no longer trusts: {REGENERATE}"
        )
    issuer = next((ca for ca in cas if issued_by(leaf, ca)), None)
    if issuer is None:
        raise BadInput(
            f"{labels.cert} was not issued by the CA in {labels.ca}: use the ca.crt that "
            f"signed it, or {REGENERATE}"
        )
    if not is_ca(issuer):
        raise BadInput(
            f"{labels.ca} is not a CA certificate (it lacks BasicConstraints ca=True, "
            f"which Dask requires): {REGENERATE}"
        )
    return issuer


def _check_leaf(
    leaf: x509.Certificate, issuer: x509.Certificate, cas: list[x509.Certificate], labels: Labels
) -> None:
    """flowrig's policy for the leaf: not a CA, both usages, strong keys, a short life."""
    if is_ca(leaf) or any(public_der(leaf) == public_der(ca) for ca in cas):
        raise BadInput(
            f"{labels.cert} is a CA certificate, not a leaf (its key {labels.key} could then issue "
            f"certificates the cluster trusts): give the leaf that the CA issued, or {REGENERATE}"
        )
    missing = missing_usages(leaf)
    if missing:
        raise BadInput(
            f"{labels.cert} lacks the extended key usage {' and '.join(missing)} (every Dask "
            f"role both serves and connects): {REGENERATE}"
        )
    for label, cert in ((labels.cert, leaf), (labels.ca, issuer)):
        weak = weak_key(cert.public_key())
        if weak:
            raise BadInput(
                f"{label} has a {weak} key, below flowrig's minimum (RSA {defaults.MIN_RSA_BITS} bits, "
                f"ECDSA P-256): {REGENERATE}"
            )
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    # flowrig's own leaves start CERT_BACKDATE_SECONDS early (clock skew): not held against them.
    if lifetime > dt.timedelta(days=defaults.MAX_LEAF_DAYS, seconds=defaults.CERT_BACKDATE_SECONDS):
        raise BadInput(
            f"{labels.cert} is valid for {lifetime.days} days ({day(leaf.not_valid_before_utc)} to "
            f"{day(leaf.not_valid_after_utc)}), longer than the {defaults.MAX_LEAF_DAYS} days a leaf may "
            f"be: {REGENERATE} (--days {defaults.LEAF_DAYS})"
        )


def load_certificates(data: bytes, label: str) -> list[x509.Certificate]:
    """All PEM certificates in ``data``; at least one, else :class:`BadInput`."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise BadInput(f"{label} holds no PEM certificate: {REGENERATE}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise BadInput(f"{label} is not a valid PEM certificate ({exc}): {REGENERATE}") from None


def load_private_key(data: bytes, label: str) -> Any:
    """The unencrypted PEM private key in ``data``, else :class:`BadInput`."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's way of saying the key is encrypted.
        raise BadInput(
            f"{label} is encrypted: Dask needs an unencrypted key (decrypt it with "
            f"`openssl pkey -in {label} -out {label}`)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise BadInput(f"{label} is not a PEM private key: {REGENERATE}") from None


def public_der(key_or_cert: Any) -> bytes:
    """DER of the public key of a private key or certificate, for comparisons."""
    public = key_or_cert.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` issued ``cert``: issuer name matches and its key signed it."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` carries BasicConstraints with ``ca=True``."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def missing_usages(cert: x509.Certificate) -> list[str]:
    """The extended key usages of serverAuth and clientAuth that the certificate does
    not name.

    Every Dask role both serves and connects, so a leaf must name both. A leaf without
    the extension, or with anyExtendedKeyUsage alone, would pass OpenSSL's purpose check
    or not depending on the peer; flowrig's policy asks for both by name.
    """
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ["serverAuth", "clientAuth"]
    wanted = {
        "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
        "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    return [name for name, oid in wanted.items() if oid not in usages]


def weak_key(public_key: Any) -> str | None:
    """How a key below flowrig's minimum is described (``RSA 1024-bit``), else ``None``."""
    if isinstance(public_key, (rsa.RSAPublicKey, dsa.DSAPublicKey)) and public_key.key_size < defaults.MIN_RSA_BITS:
        kind = "RSA" if isinstance(public_key, rsa.RSAPublicKey) else "DSA"
        return f"{kind} {public_key.key_size}-bit"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.key_size < defaults.MIN_EC_BITS:
        return f"{public_key.curve.name} ({public_key.key_size}-bit)"
    return None


def check_validity(cert: x509.Certificate, label: str, now: dt.datetime) -> None:
    """Raise :class:`BadInput` unless ``now`` lies inside the certificate's validity."""
    if now < cert.not_valid_before_utc:
        raise BadInput(
            f"{label} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC: "
            f"check this machine's clock, or {REGENERATE}"
        )
    if now > cert.not_valid_after_utc:
        raise BadInput(f"{label} expired on {day(cert.not_valid_after_utc)}: {REGENERATE}")


def days_left(cert: x509.Certificate, now: dt.datetime) -> int:
    """Days until the certificate expires, a started day counting as one.

    Rounding up means a certificate made for 397 days reports 397, and one that ends
    in an hour reports 1, not 0; an expired one reports 0 or less.
    """
    return -((now - cert.not_valid_after_utc) // dt.timedelta(days=1))


def alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS names and IP addresses in the subject alternative names, in order."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    wanted = (x509.DNSName, x509.IPAddress)
    return tuple(str(name.value) for name in names if isinstance(name, wanted))


def day(moment: dt.datetime) -> str:
    """A date as users read it in messages (``2026-01-01``)."""
    return f"{moment:%Y-%m-%d}"


def expiry_warning(cert_pem: bytes, label: str, now: dt.datetime | None = None) -> str | None:
    """A one-line warning when a certificate expires within
    :data:`flowrig.certs.defaults.EXPIRY_WARNING_DAYS` (or has expired), else ``None``."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    left = days_left(cert, now or dt.datetime.now(dt.timezone.utc))
    if left >= defaults.EXPIRY_WARNING_DAYS:
        return None
    when = f"expired on {day(cert.not_valid_after_utc)}" if left <= 0 else (
        f"expires in {left} days (on {day(cert.not_valid_after_utc)})"
    )
    return f"{label} {when}: rebuild the image (flowrig build), or build it with --tls per-run"
