"""A run's certificates read from a cloud's secret store by the role container itself.

A role on a VM cannot be handed its certificates the way docker (stdin) or ECS (a
secret the agent injects) hands them: the VM's user data is readable by anyone who may
describe the VM, so it names only where the secret is (``FLOWRIG_TLS_SECRET_REF``),
and the container reads it at boot with the VM's own identity:

``aws-secret``
    a Secrets Manager ARN, read with botocore's default credential chain (the
    instance profile on EC2) in the ARN's region;
``azure-keyvault``
    ``https://<vault>.vault.azure.net/secrets/<name>[/<version>]``, read with the VM's
    managed identity (a user-assigned one when ``AZURE_CLIENT_ID`` is set);
``gcp-secret``
    ``projects/<p>/secrets/<s>[/versions/<v>]`` (default version: ``latest``), read
    with the VM's service account (``google.auth.default()``).

A VM's identity is often not usable the moment the VM boots (IAM propagation, a
metadata service still starting), so transient failures are retried with backoff
until ``FLOWRIG_TLS_FETCH_TIMEOUT`` seconds have passed, refusals included during the
first minute. Each SDK is imported only when its store is used: a role image needs
only the extra of the cloud it runs on.

Nothing here logs or puts into an error what a store returned.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from flowrig.common.environ import positive_seconds
from flowrig.errors import BadInput, InfrastructureError, one_line

logger = logging.getLogger("flowrig.certs")

#: Where the secret holding the run's certificates is (a store's own kind of name).
SECRET_REF_ENV = "FLOWRIG_TLS_SECRET_REF"
#: Seconds a role keeps trying to read its certificates before it gives up.
FETCH_TIMEOUT_ENV = "FLOWRIG_TLS_FETCH_TIMEOUT"
#: :data:`FETCH_TIMEOUT_ENV` when unset.
DEFAULT_FETCH_TIMEOUT = 120.0
#: ``FLOWRIG_TLS_FROM`` of AWS Secrets Manager.
AWS_SECRET = "aws-secret"
#: ``FLOWRIG_TLS_FROM`` of Azure Key Vault.
AZURE_KEYVAULT = "azure-keyvault"
#: ``FLOWRIG_TLS_FROM`` of Google Secret Manager.
GCP_SECRET = "gcp-secret"
#: Every ``FLOWRIG_TLS_FROM`` this module serves.
SOURCES = (AWS_SECRET, AZURE_KEYVAULT, GCP_SECRET)

#: Seconds during which a refusal is retried: a role or grant made just before the VM
#: may take this long to reach every endpoint.
PROPAGATION_SECONDS = 60.0
#: First pause between attempts (doubling, with jitter, up to :data:`MAX_BACKOFF`).
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
#: Seconds one request may take to connect and to answer: a hung endpoint must not
#: outlast the deadline by much.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15

# How a failed attempt counts.
_TRANSIENT = "transient"  # retried until the deadline
_DENIED = "denied"  # retried during PROPAGATION_SECONDS only
_PERMANENT = "permanent"  # not retried


@dataclass(frozen=True)
class _Store:
    title: str
    extra: str
    #: What the VM's identity needs, said in the store's own terms.
    fix: str
    #: ``(ref, environ)`` -> a function reading the secret's text; parses the ref and
    #: imports the SDK, so both fail before any attempt.
    open: Callable[[str, Mapping[str, str]], Callable[[], str]]
    classify: Callable[[BaseException], str]


def _missing_sdk(store: str, extra: str) -> BadInput:
    return BadInput(f"reading the run's certificates from {store} needs its SDK: pip install 'flowrig[{extra}]'")


def _bad_ref(source: str, ref: str, shape: str) -> BadInput:
    return BadInput(f"{SECRET_REF_ENV}={ref!r} is not a secret {source} can read: expected {shape}")


def _by_status(status: int | None) -> str:
    if status in (401, 403):
        return _DENIED
    if status is not None and (status == 429 or status >= 500):
        return _TRANSIENT
    return _PERMANENT


# --- AWS Secrets Manager ---------------------------------------------------------

_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:.+")
_AWS_THROTTLED = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
_AWS_DENIED = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    # kms:Decrypt on the secret's key is a grant of its own.
    "DecryptionFailure",
}


def _aws_open(ref: str, environ: Mapping[str, str]) -> Callable[[], str]:
    match = _ARN.fullmatch(ref)
    if not match:
        raise _bad_ref(AWS_SECRET, ref, "arn:aws:secretsmanager:<region>:<account>:secret:<name>")
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise _missing_sdk("AWS Secrets Manager", "aws") from None
    # This loop retries; botocore's own retries would only stretch one attempt.
    config = Config(
        retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT
    )
    client: list[Any] = []

    def read() -> str:
        # Made in the first attempt that gets this far: making it resolves credentials
        # lazily, but a broken configuration is still worth a retry at boot.
        if not client:
            session = botocore.session.get_session()
            client.append(session.create_client("secretsmanager", region_name=match["region"], config=config))
        return client[0].get_secret_value(SecretId=ref).get("SecretString") or ""

    return read


def _aws_classify(exc: BaseException) -> str:
    from botocore import exceptions as bx

    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        # The instance profile's credentials are not in the metadata service yet.
        return _DENIED
    # Two families: no connection (ConnectionError) and a connection that broke.
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, OSError)):
        return _TRANSIENT
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _AWS_THROTTLED:
            return _TRANSIENT
        if code in _AWS_DENIED:
            return _DENIED
        return _by_status(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return _PERMANENT


# --- Azure Key Vault -------------------------------------------------------------

_VAULT_HOST = re.compile(r"[0-9a-zA-Z-]{3,24}\.vault\.[a-z0-9.-]+")
_VAULT_PATH = re.compile(r"/secrets/(?P<name>[0-9a-zA-Z-]{1,127})(?:/(?P<version>[0-9a-zA-Z]+))?/?")


def _azure_open(ref: str, environ: Mapping[str, str]) -> Callable[[], str]:
    parts = urlsplit(ref)
    path = _VAULT_PATH.fullmatch(parts.path)
    if parts.scheme != "https" or not _VAULT_HOST.fullmatch(parts.netloc) or not path or parts.query:
        raise _bad_ref(AZURE_KEYVAULT, ref, "https://<vault>.vault.azure.net/secrets/<name>")
    try:
        from azure.identity import ManagedIdentityCredential
        from azure.keyvault.secrets import SecretClient
    except ImportError:
        raise _missing_sdk("Azure Key Vault", "azure") from None
    vault_url = f"https://{parts.netloc}"
    client_id = environ.get("AZURE_CLIENT_ID") or None
    client: list[Any] = []

    def read() -> str:
        if not client:
            # The managed identity only: a VM must not read its run's secret with
            # whatever else DefaultAzureCredential would find (a CLI login, variables).
            credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
            client.append(
                SecretClient(
                    vault_url,
                    credential,
                    retry_total=0,
                    connection_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                )
            )
        return client[0].get_secret(path["name"], path["version"]).value or ""

    return read


def _azure_classify(exc: BaseException) -> str:
    from azure.core import exceptions as ax

    if isinstance(exc, ax.ClientAuthenticationError):
        # Includes the identity library's CredentialUnavailableError: no identity
        # assigned (yet), or the metadata endpoint not answering.
        return _DENIED
    if isinstance(exc, ax.ResourceNotFoundError):
        return _PERMANENT
    if isinstance(exc, ax.HttpResponseError):
        return _by_status(exc.status_code)
    if isinstance(exc, (ax.ServiceRequestError, ax.ServiceResponseError, OSError)):
        return _TRANSIENT
    return _PERMANENT


# --- Google Secret Manager -------------------------------------------------------

_GCP_NAME = re.compile(r"projects/[^/\s]+/secrets/[^/\s]+(?P<version>/versions/[^/\s]+)?")
_GCP_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def _gcp_open(ref: str, environ: Mapping[str, str]) -> Callable[[], str]:
    match = _GCP_NAME.fullmatch(ref)
    if not match:
        raise _bad_ref(GCP_SECRET, ref, "projects/<project>/secrets/<secret>[/versions/<version>]")
    name = ref if match["version"] else f"{ref}/versions/latest"
    try:
        import google.auth
        import googleapiclient.discovery
    except ImportError:
        raise _missing_sdk("Google Secret Manager", "gcp") from None
    service: list[Any] = []

    def read() -> str:
        if not service:
            credentials, _project = google.auth.default(scopes=_GCP_SCOPES)
            # The discovery document ships with the client: no network, nothing cached.
            service.append(
                googleapiclient.discovery.build("secretmanager", "v1", credentials=credentials, cache_discovery=False)
            )
        answer = service[0].projects().secrets().versions().access(name=name).execute()
        data = (answer.get("payload") or {}).get("data") or ""
        try:
            # The API's JSON writes bytes as base64, either alphabet.
            return base64.b64decode(data, altchars=b"-_", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise BadInput(f"{GCP_SECRET} {name} does not hold flowrig's certificates (not base64 text)") from None

    return read


def _gcp_classify(exc: BaseException) -> str:
    from google.auth import exceptions as gx
    from googleapiclient.errors import HttpError

    if isinstance(exc, HttpError):
        return _by_status(exc.status_code)
    if isinstance(exc, gx.TransportError):
        return _TRANSIENT
    if isinstance(exc, (gx.DefaultCredentialsError, gx.RefreshError)):
        # The metadata server has no token for the VM's service account (yet).
        return _DENIED
    if isinstance(exc, OSError):
        return _TRANSIENT
    return _PERMANENT


_STORES = {
    AWS_SECRET: _Store(
        title="AWS Secrets Manager",
        extra="aws",
        fix="the VM's instance profile role must be allowed secretsmanager:GetSecretValue on that secret "
        "(and kms:Decrypt on its key)",
        open=_aws_open,
        classify=_aws_classify,
    ),
    AZURE_KEYVAULT: _Store(
        title="Azure Key Vault",
        extra="azure",
        fix="the VM's managed identity must be allowed to get that secret (role Key Vault Secrets User)",
        open=_azure_open,
        classify=_azure_classify,
    ),
    GCP_SECRET: _Store(
        title="Google Secret Manager",
        extra="gcp",
        fix="the VM's service account must have roles/secretmanager.secretAccessor on that secret",
        open=_gcp_open,
        classify=_gcp_classify,
    ),
}


def fetch_timeout(environ: Mapping[str, str]) -> float:
    """Seconds :func:`fetch` keeps trying: ``FLOWRIG_TLS_FETCH_TIMEOUT``, default 120.

    Raises
    ------
    BadInput
        The variable is set to something other than a positive number.
    """
    return positive_seconds(environ, FETCH_TIMEOUT_ENV, DEFAULT_FETCH_TIMEOUT)


def fetch(source: str, ref: str, environ: Mapping[str, str]) -> bytes:
    """The delivery line held by the secret ``ref`` in the store named by ``source``.

    Read with the identity of the machine the role runs on; transient failures are
    retried with backoff until :func:`fetch_timeout` seconds have passed, refusals
    during the first :data:`PROPAGATION_SECONDS` only.

    Parameters
    ----------
    source
        One of :data:`SOURCES`.
    ref
        The secret, in the store's own notation (see the module's description).
    environ
        The role's environment (``FLOWRIG_TLS_FETCH_TIMEOUT``, ``AZURE_CLIENT_ID``).

    Returns
    -------
    bytes
        The secret's text, to be checked by :func:`flowrig.certs.delivery.decode`.

    Raises
    ------
    BadInput
        A malformed ref, the store's SDK missing, no such secret, or the machine's
        identity refused (exit 2).
    InfrastructureError
        The store could not be reached, or kept failing, until the deadline (exit 3).
    """
    store = _STORES[source]
    timeout = fetch_timeout(environ)
    read = store.open(ref, environ)
    start = time.monotonic()
    deadline = start + timeout
    delay = FIRST_BACKOFF
    attempt = 0
    while True:
        attempt += 1
        try:
            return read().encode()
        except BadInput:
            raise
        except Exception as exc:  # noqa: BLE001 - each SDK's errors are sorted by classify
            kind = store.classify(exc)
            last = exc
        now = time.monotonic()
        if kind == _DENIED and now - start >= PROPAGATION_SECONDS:
            kind = _PERMANENT
        if kind == _PERMANENT or now >= deadline:
            break
        # The last pause ends at the deadline, for one more attempt there.
        pause = min(delay * random.uniform(0.5, 1.0), deadline - now)
        logger.debug("%s %s: attempt %d failed (%s), retrying", store.title, ref, attempt, one_line(last, 160))
        time.sleep(pause)
        delay = min(delay * 2, MAX_BACKOFF)
    elapsed = time.monotonic() - start
    detail = one_line(f"{type(last).__name__}: {last}", 200)
    message = (
        f"cannot read the run's certificates from {store.title} {ref} "
        f"({attempt} attempt{'s' if attempt > 1 else ''} in {elapsed:.0f} s): {detail}; {store.fix}"
    )
    # Still failing for a reason that would have been retried: the store, not the set-up.
    raise (InfrastructureError if kind == _TRANSIENT else BadInput)(message) from None
