"""The TLS files every role of a cluster uses: the CA certificate, one leaf and its key."""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from flowrig.certs import defaults, issue, validation
from flowrig.certs.keys import KeyType

if TYPE_CHECKING:
    from distributed.security import Security

#: Modes of written files: certificates are public, the key is for its owner only.
PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o600


@dataclass(frozen=True)
class TLSPaths:
    """Where certificate files were written.

    Attributes
    ----------
    ca_cert, cert, key
        ``ca.crt``, ``tls.crt`` and ``tls.key``.
    ca_key
        ``ca.key``, when the CA's private key was written too (``generate`` only).
    """

    ca_cert: Path
    cert: Path
    key: Path
    ca_key: Path | None = None

    def __iter__(self):
        """The written paths, CA files first."""
        paths = (self.ca_cert, self.ca_key, self.cert, self.key)
        return iter([path for path in paths if path is not None])


@dataclass(frozen=True)
class TLSMaterial:
    """A CA certificate plus the leaf certificate and key that the runner, scheduler
    and workers all present.

    Parameters
    ----------
    ca_pem
        The CA certificate(s) peers must chain to, PEM.
    cert_pem
        The leaf certificate, PEM.
    key_pem
        The leaf's unencrypted private key, PEM. Kept out of ``repr``.
    """

    ca_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)

    def __repr__(self) -> str:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem)
        except ValueError:
            return "TLSMaterial(<certificate not readable>)"
        return (
            f"TLSMaterial(subject={cert.subject.rfc4514_string()!r}, "
            f"not_after={cert.not_valid_after_utc.isoformat()!r})"
        )

    @property
    def not_after(self) -> dt.datetime:
        """End of the leaf's validity, timezone-aware UTC."""
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc

    @property
    def hosts(self) -> tuple[str, ...]:
        """The DNS names and addresses the leaf names (its subject alternative names)."""
        return validation.alt_names(x509.load_pem_x509_certificate(self.cert_pem))

    @classmethod
    def from_dir(cls, path: str | Path, *, now: dt.datetime | None = None) -> TLSMaterial:
        """Load ``ca.crt``, ``tls.crt`` and ``tls.key`` from a directory and validate them.

        Parameters
        ----------
        path
            The certificate directory.
        now
            The moment validity is checked at; the current time when omitted.

        Raises
        ------
        BadInput
            With one line naming the file and the fix: missing directory or file, not
            PEM, key not matching the leaf, leaf not chaining to ``ca.crt``, a
            certificate expired or not yet valid, unusable extensions.
        """
        path = Path(path)
        ca_pem, cert_pem, key_pem = validation.read_dir(path)
        labels = validation.Labels.for_dir(path)
        validation.inspect(ca_pem, cert_pem, key_pem, labels=labels, now=now)
        return cls(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)

    @classmethod
    def ephemeral(
        cls, hosts: Iterable[str] = (), *, days: int = defaults.LEAF_DAYS
    ) -> TLSMaterial:
        """Fresh material from a new CA whose private key is dropped once the leaf is signed.

        Nothing is written; no one can ever issue another certificate that this
        material trusts. Suits a single run, or an image that carries its own
        material. The validity defaults to a leaf's usual one, so material baked
        into an image lasts as long as generated certificates would.

        Parameters
        ----------
        hosts
            Names and addresses to add to :data:`flowrig.certs.defaults.LEAF_HOSTS`.
        days
            Validity of the CA and the leaf.
        """
        ca, ca_key = issue.ca_certificate("flowrig ephemeral CA", days, KeyType.ECDSA_P256)
        leaf, key = issue.leaf_certificate(
            ca, ca_key, hosts, days, common_name=defaults.LEAF_COMMON_NAME, key_type=None,
            now=None, ca_label="the CA",
        )
        return cls(
            ca_pem=issue.certificate_pem(ca),
            cert_pem=issue.certificate_pem(leaf),
            key_pem=issue.key_pem(key),
        )

    @classmethod
    def for_run(
        cls, given: "TLSMaterial | None" = None, hosts: Iterable[str] = (), *, image_roles: bool = False
    ) -> TLSMaterial:
        """The certificates of a run: ``given``, else those delivered to this container
        (``FLOWRIG_TLS_DIR``), else, when roles that flowrig does not start take part
        (``image_roles``) and this process runs in a flowrig image, the image's baked
        files, else new ones made in memory for this run, naming ``hosts`` too (the
        run's API serves HTTPS with the leaf).

        The one place that decides which certificates a run uses. Baked files serve
        only roles started by something else: every run whose roles flowrig starts
        itself gets a CA of its own, also inside a baked image, so one leaked or
        pulled key opens no other run.

        Parameters
        ----------
        given
            Certificates the caller chose (``--certs``).
        hosts
            Names and addresses the per-run leaf names besides the usual ones.
        image_roles
            Whether some role of the run is started without flowrig (a scheduler
            already running, task definitions of the user's own):
            :meth:`flowrig.backends.Backend.roles_use_image_certificates`.
        """
        import os

        from flowrig import layout

        if given is not None:
            return given
        if os.environ.get(layout.TLS_DIR_ENV):  # delivered to this container for its run
            return cls.from_dir(os.environ[layout.TLS_DIR_ENV])
        if image_roles and layout.in_image() and (layout.IMAGE_TLS_DIR / layout.LEAF_KEY).is_file():
            baked = cls.from_dir(layout.IMAGE_TLS_DIR)
            warning = validation.expiry_warning(baked.cert_pem, "the image's baked certificate")
            if warning:
                import logging

                logging.getLogger("flowrig.certs").warning(warning)
            return baked
        return cls.ephemeral(hosts=[h for h in hosts if h not in ("0.0.0.0", "")], days=defaults.RUN_DAYS)

    def write_to_dir(self, path: str | Path) -> TLSPaths:
        """Write ``ca.crt`` and ``tls.crt`` (mode 0644) and ``tls.key`` (mode 0600).

        Existing files are replaced atomically. The key file is created with mode 0600
        before any byte is written, so it is never readable by others, not even briefly.

        Parameters
        ----------
        path
            The directory; created when missing.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        paths = TLSPaths(
            ca_cert=path / defaults.CA_CERT,
            cert=path / defaults.LEAF_CERT,
            key=path / defaults.LEAF_KEY,
        )
        write_file(paths.ca_cert, self.ca_pem, PUBLIC_MODE)
        write_file(paths.cert, self.cert_pem, PUBLIC_MODE)
        write_file(paths.key, self.key_pem, PRIVATE_MODE)
        return paths

    def to_security(self) -> Security:
        """A :class:`distributed.security.Security` that requires mutual TLS.

        Every role (client, scheduler, worker) presents the same leaf and trusts only
        the CA. The PEM text is passed in memory, which ``distributed`` accepts in
        place of file paths, so no key file is left behind by this call.
        """
        from distributed.security import Security

        ca, cert, key = (pem.decode("ascii") for pem in (self.ca_pem, self.cert_pem, self.key_pem))
        return Security(
            require_encryption=True,
            tls_ca_file=ca,
            tls_client_cert=cert,
            tls_client_key=key,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
        )


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``, replacing any file atomically.

    The bytes go to a new sibling file opened with ``mode`` (set again on the open
    descriptor, before writing, so the umask cannot change it), which then replaces
    ``path``. A reader never sees a partial file, and a key never has a looser mode.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
