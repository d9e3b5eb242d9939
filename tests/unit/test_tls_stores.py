"""How a role reads the run's certificates from a cloud secret store, against fake store clients:
retries of a booting identity, the identity and version asked for, one-line refusals, the
fetch timeout. Against a real moto server: tests/e2e/aws/test_tls_stores.py.
"""

from __future__ import annotations

import io
import logging
import os

import pytest

from flowrig.certs import TLSMaterial, delivery, stores
from flowrig.errors import BadInput

VAULT_REF = "https://runs-vault.vault.azure.net/secrets/flowrig-run-abc"
GCP_REF = "projects/my-project/secrets/flowrig-run-abc"


def _stdin() -> io.BufferedReader:
    read, write = os.pipe()
    os.close(write)
    return os.fdopen(read, "rb")


def _deliver(environ: dict[str, str], base) -> dict[str, str]:
    return delivery.role_environment(environ, _stdin(), base=base)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """Retries a few milliseconds apart: the schedule is not what these tests check."""
    monkeypatch.setattr(stores, "FIRST_BACKOFF", 0.01)
    monkeypatch.setattr(stores, "MAX_BACKOFF", 0.05)


def _assert_one_line(exc: BaseException, *parts: str) -> None:
    text = str(exc)
    assert "\n" not in text
    for part in parts:
        assert part in text


# --- Azure Key Vault, at the SDK boundary -------------------------------------------


class _Script:
    """What a fake SDK call does on each attempt: raise the next exception, then answer."""

    def __init__(self, failures: list[BaseException], answer: object) -> None:
        self.failures = list(failures)
        self.answer = answer
        self.calls: list[object] = []

    def __call__(self, asked: object) -> object:
        self.calls.append(asked)
        if self.failures:
            raise self.failures.pop(0)
        return self.answer


@pytest.fixture
def keyvault(monkeypatch):
    """Key Vault and the managed identity replaced by fakes that record what was asked."""
    import azure.identity
    import azure.keyvault.secrets

    seen: dict[str, object] = {"credentials": [], "clients": []}

    class ManagedIdentity:
        def __init__(self, **kwargs: object) -> None:
            seen["credentials"].append(kwargs)

    class SecretClient:
        def __init__(self, vault_url: str, credential: object, **kwargs: object) -> None:
            assert isinstance(credential, ManagedIdentity), "a VM reads its secret with its managed identity only"
            seen["clients"].append(vault_url)

        def get_secret(self, name: str, version: str | None = None) -> object:
            return seen["script"]((name, version))

    def no_other_credential(*args: object, **kwargs: object) -> None:
        raise AssertionError("only the managed identity may be used")

    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", ManagedIdentity)
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", no_other_credential)
    monkeypatch.setattr(azure.keyvault.secrets, "SecretClient", SecretClient)
    return seen


def _vault_secret(value: str) -> object:
    return type("KeyVaultSecret", (), {"value": value})()


def _azure_error(kind: str, status: int | None = None) -> BaseException:
    from azure.core import exceptions as ax
    from azure.identity import CredentialUnavailableError

    error = {
        "unavailable": CredentialUnavailableError,
        "connection": ax.ServiceRequestError,
        "http": ax.HttpResponseError,
        "missing": ax.ResourceNotFoundError,
    }[kind](f"fake {kind} {status or ''}".strip())
    if status is not None:
        error.status_code = status
    return error


def test_azure_keyvault_retries_a_booting_identity_then_installs(keyvault, tls, tmp_path, caplog):
    keyvault["script"] = _Script(
        [_azure_error("unavailable"), _azure_error("connection"), _azure_error("http", 429), _azure_error("http", 503)],
        _vault_secret(delivery.encode(tls).decode()),
    )
    environ = {delivery.FROM_ENV: stores.AZURE_KEYVAULT, stores.SECRET_REF_ENV: VAULT_REF}
    with caplog.at_level(logging.DEBUG, logger="flowrig"):
        env = _deliver(environ, tmp_path)
    assert TLSMaterial.from_dir(env[delivery.TLS_DIR_ENV]).key_pem == tls.key_pem
    assert keyvault["script"].calls == [("flowrig-run-abc", None)] * 5
    assert set(keyvault["clients"]) == {"https://runs-vault.vault.azure.net"}
    assert keyvault["credentials"][0] == {}  # system-assigned without AZURE_CLIENT_ID
    assert "retrying" in caplog.text and "PRIVATE KEY" not in caplog.text
    assert stores.SECRET_REF_ENV not in environ


def test_azure_keyvault_uses_the_user_assigned_identity_and_the_version(keyvault, tls, tmp_path):
    keyvault["script"] = _Script([], _vault_secret(delivery.encode(tls).decode()))
    environ = {
        delivery.FROM_ENV: stores.AZURE_KEYVAULT,
        stores.SECRET_REF_ENV: VAULT_REF + "/0123abcd",
        "AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
    }
    _deliver(environ, tmp_path)
    assert keyvault["credentials"] == [{"client_id": "11111111-2222-3333-4444-555555555555"}]
    assert keyvault["script"].calls == [("flowrig-run-abc", "0123abcd")]


def test_a_missing_keyvault_secret_is_one_line_at_once(keyvault, tmp_path):
    keyvault["script"] = _Script([_azure_error("missing", 404)], None)
    environ = {delivery.FROM_ENV: stores.AZURE_KEYVAULT, stores.SECRET_REF_ENV: VAULT_REF}
    with pytest.raises(BadInput) as caught:
        _deliver(environ, tmp_path)
    assert len(keyvault["script"].calls) == 1
    _assert_one_line(caught.value, "Azure Key Vault", VAULT_REF, "1 attempt ", "managed identity")


def test_a_refusal_after_the_first_minute_is_not_retried(keyvault, tmp_path, monkeypatch):
    monkeypatch.setattr(stores, "PROPAGATION_SECONDS", 0.0)
    keyvault["script"] = _Script([_azure_error("http", 403)] * 3, None)
    environ = {delivery.FROM_ENV: stores.AZURE_KEYVAULT, stores.SECRET_REF_ENV: VAULT_REF}
    with pytest.raises(BadInput) as caught:
        _deliver(environ, tmp_path)
    assert len(keyvault["script"].calls) == 1
    _assert_one_line(caught.value, VAULT_REF, "Key Vault Secrets User")


def test_a_refusal_that_outlasts_the_deadline_is_bad_input(keyvault, tmp_path):
    keyvault["script"] = _Script([_azure_error("http", 403)] * 10**6, None)
    environ = {delivery.FROM_ENV: stores.AZURE_KEYVAULT, stores.SECRET_REF_ENV: VAULT_REF,
               stores.FETCH_TIMEOUT_ENV: "0.3"}
    with pytest.raises(BadInput) as caught:
        _deliver(environ, tmp_path)
    assert len(keyvault["script"].calls) > 1
    _assert_one_line(caught.value, VAULT_REF, "HttpResponseError", "managed identity must be allowed")


# --- what needs no store ------------------------------------------------------------


def test_a_store_source_needs_a_ref(tmp_path):
    with pytest.raises(BadInput, match=stores.SECRET_REF_ENV):
        _deliver({delivery.FROM_ENV: stores.GCP_SECRET}, tmp_path)


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_fetch_timeout_is_refused(value, tmp_path):
    environ = {delivery.FROM_ENV: stores.GCP_SECRET, stores.SECRET_REF_ENV: GCP_REF, stores.FETCH_TIMEOUT_ENV: value}
    with pytest.raises(BadInput, match=stores.FETCH_TIMEOUT_ENV):
        _deliver(environ, tmp_path)


def test_the_fetch_timeout_defaults_to_two_minutes():
    assert stores.fetch_timeout({}) == stores.DEFAULT_FETCH_TIMEOUT == 120.0
