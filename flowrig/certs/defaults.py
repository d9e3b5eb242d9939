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
    "KEY_SCAN_MAX_BYTES",
    "LEAF_CERT",
    "LEAF_COMMON_NAME",
    "LEAF_DAYS",
    "LEAF_HOSTS",
    "LEAF_KEY",
    "RUN_DAYS",
]

#: Validity of a CA and of a leaf, in days. Leaves are short-lived on purpose.
CA_DAYS = 3650
LEAF_DAYS = 397
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
#: The CA-key scan of a build context reads only files smaller than this; keys are tiny,
#: and large files (wheels, data) would only slow the scan down.
KEY_SCAN_MAX_BYTES = 1024 * 1024
