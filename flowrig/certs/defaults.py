"""Defaults of the certificates flowrig makes and checks.

The file names are the image's (:mod:`flowrig.layout`), repeated here so that the
certificate code reads from one place.
"""

from __future__ import annotations

from flowrig.layout import CA_CERT, CA_KEY, LEAF_CERT, LEAF_KEY

__all__ = [
    "CA_CERT",
    "CA_COMMON_NAME",
    "CA_DAYS",
    "CA_KEY",
    "CERT_BACKDATE_SECONDS",
    "EXPIRY_WARNING_DAYS",
    "KEY_BLOCK_MAX_BYTES",
    "KEY_DER_MAX_BYTES",
    "KEY_SCAN_CHUNK_BYTES",
    "LEAF_CERT",
    "LEAF_COMMON_NAME",
    "LEAF_DAYS",
    "LEAF_HOSTS",
    "LEAF_KEY",
    "MAX_LEAF_DAYS",
    "MIN_EC_BITS",
    "MIN_RSA_BITS",
    "RUN_DAYS",
]

#: Validity of a CA and of a leaf, in days. Leaves are short-lived on purpose.
CA_DAYS = 3650
LEAF_DAYS = 397
#: The longest validity a leaf may have, generated (``--days``) or given (``--certs``,
#: ``certs check``): the public web's limit for TLS leaves (CA/Browser Forum, 398 days).
#: A leaf that outlives it is a key nobody rotates. Baked images carry a leaf of
#: :data:`LEAF_DAYS`, inside it.
MAX_LEAF_DAYS = 398
#: The weakest keys a CA or leaf may have: RSA (and DSA) keys of 2048 bits, elliptic
#: curves of 256 bits (P-256); Ed25519 and Ed448 are stronger than both.
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
#: Validity of the certificates a run makes for itself (its CA's key is never kept):
#: a day covers a long run, and a stolen key is worthless the next.
RUN_DAYS = 1
#: ``certs check`` warns when a certificate expires within this many days.
EXPIRY_WARNING_DAYS = 30
#: Names every role certificate carries; Dask checks the chain, not host names,
#: but the names make certificates readable and usable by other TLS clients.
LEAF_HOSTS = ("dask-scheduler", "dask-worker", "flowrig-runner", "localhost", "127.0.0.1")
#: Subject common names of a generated CA and of its role leaf.
CA_COMMON_NAME = "flowrig CA"
LEAF_COMMON_NAME = "flowrig dask"
#: Certificates start this many seconds in the past, so a container whose clock runs a
#: little behind the host's still accepts a certificate made a moment ago.
CERT_BACKDATE_SECONDS = 300
#: The private-key scan (:mod:`flowrig.certs.scan`) reads files of any size in chunks of
#: this many bytes, so memory stays bounded whatever the file.
KEY_SCAN_CHUNK_BYTES = 8 * 1024 * 1024
#: The longest PEM or base64 key block the scan follows past the end of a chunk: an
#: RSA 16384 key in PEM takes about 13 KB.
KEY_BLOCK_MAX_BYTES = 64 * 1024
#: A file that is one DER element up to this size is given to cryptography's loaders
#: whole (a DER key or PKCS#12 file); a larger PKCS#12 counts by its structure alone.
KEY_DER_MAX_BYTES = 1024 * 1024
