"""The ``azure`` backend's one boundary with the Azure SDKs: its clients, its errors as
flowrig's, and its long-running operations waited for with a deadline.

Every SDK client is made in :class:`AzureClients`: ``DefaultAzureCredential``,
``ComputeManagementClient``, ``NetworkManagementClient`` and the Key Vault
``SecretClient``. Neither azure-mgmt-msi nor azure-mgmt-authorization is a locked
dependency: managed identities and role assignments are plain ARM calls
(:meth:`AzureClients.arm`), sent with the compute client's ``send_request`` (same
credential, retries and endpoint). The cloud itself is :mod:`.azure_cloud`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from flowrig.errors import BadInput, InfrastructureError, one_line

#: The ARM API versions flowrig's plain ARM calls speak.
IDENTITY_API = "2023-01-31"
AUTHORIZATION_API = "2022-04-01"
RESOURCES_API = "2021-04-01"
KEYVAULT_API = "2023-07-01"
REGISTRY_API = "2023-07-01"
#: Errors that say "not now": retried until the deadline.
_RETRY_CODES = {
    "AnotherOperationInProgress", "Conflict", "InUseNetworkSecurityGroupCannotBeDeleted", "NicInUse",
    "NicReservedForAnotherVm", "OperationNotAllowed", "PrincipalNotFound", "RetryableError",
    "ObjectIsBeingDeleted", "InUsePublicIpAddressCannotBeDeleted", "TooManyRequests",
}


def error_code(exc: BaseException) -> str:
    """Azure's code of an SDK error (its class name when it carries none)."""
    error = getattr(exc, "error", None)
    return str(getattr(error, "code", None) or getattr(exc, "reason", None) or type(exc).__name__)


def gone(exc: BaseException) -> bool:
    """Whether an error says the resource does not exist (any more)."""
    from azure.core.exceptions import ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError) or getattr(exc, "status_code", None) == 404


def retryable(exc: BaseException) -> bool:
    """Whether an error says "not now": in use, another operation, throttled, a server error."""
    status = getattr(exc, "status_code", None) or 0
    return error_code(exc) in _RETRY_CODES or status == 429 or status >= 500 or isinstance(exc, TimeoutError)


@contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Azure's errors while doing ``action`` as one-line flowrig errors: no credentials
    are :class:`BadInput` (exit 2), a refusal or no answer :class:`InfrastructureError`."""
    from azure.core import exceptions as ax

    try:
        yield
    except ax.ClientAuthenticationError as exc:
        raise BadInput(
            f"no usable Azure credentials while {action} ({one_line(exc, 200)}): run az login, "
            "or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET, or use a managed identity"
        ) from None
    except ax.HttpResponseError as exc:
        message = getattr(getattr(exc, "error", None), "message", None) or str(exc)
        raise InfrastructureError(f"Azure refused {action}: {error_code(exc)}: {one_line(message, 300)}") from None
    except ax.AzureError as exc:
        raise InfrastructureError(f"cannot reach Azure while {action}: {one_line(exc, 300)}") from None


class AzureClients:
    """The SDK clients of one subscription and one Key Vault (the only place they are made)."""

    def __init__(self, subscription_id: str, vault_url: str | None) -> None:
        from azure.identity import DefaultAzureCredential
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient

        self.subscription_id = subscription_id
        self.credential = DefaultAzureCredential()
        self.compute = ComputeManagementClient(self.credential, subscription_id)
        self.network = NetworkManagementClient(self.credential, subscription_id)
        self.vault_url = vault_url
        self._secrets: Any = None

    @property
    def secrets(self) -> Any:
        if self._secrets is None:
            from azure.keyvault.secrets import SecretClient

            self._secrets = SecretClient(self.vault_url, self.credential)
        return self._secrets

    def arm(self, method: str, path: str, api_version: str, body: Any = None, **params: str) -> dict:
        """One ARM REST call (``path`` from ``/subscriptions/...``); its JSON answer."""
        from azure.core.rest import HttpRequest

        request = HttpRequest(method, path, params={"api-version": api_version, **params}, json=body)
        return self._send(request)

    def arm_pages(self, path: str, api_version: str) -> Iterator[dict]:
        """Every item of an ARM list, following its ``nextLink`` (a full URL with its own query)."""
        from azure.core.rest import HttpRequest

        page = self.arm("GET", path, api_version)
        while True:
            yield from page.get("value") or []
            if not page.get("nextLink"):
                return
            page = self._send(HttpRequest("GET", page["nextLink"]))

    def _send(self, request: Any) -> dict:
        response = self.compute.send_request(request)
        response.raise_for_status()
        return response.json() if response.content else {}


def finish(poller: Any, deadline: float, what: str) -> Any:
    """Wait for a long-running operation until ``deadline`` (``time.monotonic()``); its result."""
    poller.wait(timeout=max(deadline - time.monotonic(), 0.0))
    if not poller.done():
        raise TimeoutError(f"{what} had not finished in time")
    return poller.result()
