"""A run's certificates read by the role itself from a cloud's secret store, with the
VM's identity: AWS against a real moto server, Azure and GCP at their SDKs' boundary.

Cases that need none of these are in tests/unit/test_tls_stores.py.
"""

from __future__ import annotations

import base64
import sys
import time

import pytest

from flowrig.certs import TLSMaterial, delivery, stores
from flowrig.errors import BadInput, InfrastructureError
from tests.unit.test_tls_stores import GCP_REF, VAULT_REF, _assert_one_line, _deliver, _Script


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """Retries a few milliseconds apart: the schedule is not what these tests check."""
    monkeypatch.setattr(stores, "FIRST_BACKOFF", 0.01)
    monkeypatch.setattr(stores, "MAX_BACKOFF", 0.05)


# --- AWS Secrets Manager, on moto -------------------------------------------------


@pytest.fixture
def secretsmanager(aws):
    import botocore.session

    return botocore.session.get_session().create_client("secretsmanager", region_name="us-east-1")


@pytest.mark.aws
def test_aws_secret_is_installed_and_the_ref_leaves_the_environment(secretsmanager, tls, tmp_path, monkeypatch):
    arn = secretsmanager.create_secret(Name="flowrig-run-abc", SecretString=delivery.encode(tls).decode())["ARN"]
    # The region comes from the ARN, not from the environment.
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    environ = {delivery.FROM_ENV: stores.AWS_SECRET, stores.SECRET_REF_ENV: arn, "KEEP": "1"}
    env = _deliver(environ, tmp_path)
    installed = TLSMaterial.from_dir(env[delivery.TLS_DIR_ENV])
    assert (installed.ca_pem, installed.cert_pem, installed.key_pem) == (tls.ca_pem, tls.cert_pem, tls.key_pem)
    for name in (stores.SECRET_REF_ENV, delivery.FROM_ENV):
        assert name not in env and name not in environ
    assert env["KEEP"] == "1"


@pytest.mark.aws
def test_a_missing_aws_secret_is_one_line_naming_it_without_waiting(secretsmanager, tmp_path):
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:flowrig-run-gone-AbCdEf"
    environ = {delivery.FROM_ENV: stores.AWS_SECRET, stores.SECRET_REF_ENV: arn, stores.FETCH_TIMEOUT_ENV: "5"}
    started = time.monotonic()
    with pytest.raises(BadInput) as caught:
        _deliver(environ, tmp_path)
    assert time.monotonic() - started < 5
    _assert_one_line(caught.value, "AWS Secrets Manager", arn, "ResourceNotFoundException", "GetSecretValue")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.aws
def test_an_unreachable_aws_endpoint_is_retried_until_the_deadline(moto_server, tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:flowrig-run-abc-AbCdEf"
    # A deadline a loaded machine still fits a few attempts into.
    environ = {delivery.FROM_ENV: stores.AWS_SECRET, stores.SECRET_REF_ENV: arn, stores.FETCH_TIMEOUT_ENV: "4"}
    started = time.monotonic()
    with pytest.raises(InfrastructureError) as caught:
        _deliver(environ, tmp_path)
    assert 4 <= time.monotonic() - started < 30
    _assert_one_line(caught.value, arn, "attempts", "EndpointConnectionError", "secretsmanager:GetSecretValue")


# --- Azure Key Vault, at the SDK boundary -------------------------------------------


# --- Google Secret Manager, at the SDK boundary -------------------------------------


@pytest.fixture
def secretmanager(monkeypatch):
    """google.auth's default credentials and the discovery client replaced by fakes."""
    import google.auth
    import googleapiclient.discovery

    seen: dict[str, object] = {"scopes": [], "builds": []}
    credentials = object()

    def default(scopes=None, **kwargs):
        seen["scopes"].append(scopes)
        return credentials, "my-project"

    class Request:
        def __init__(self, name: str) -> None:
            self.name = name

        def execute(self) -> object:
            return seen["script"](self.name)

    class Service:
        def projects(self):
            return self

        def secrets(self):
            return self

        def versions(self):
            return self

        def access(self, name: str) -> Request:
            return Request(name)

    def build(service, version, credentials=None, cache_discovery=True, **kwargs):
        seen["builds"].append((service, version, credentials, cache_discovery))
        return Service()

    monkeypatch.setattr(google.auth, "default", default)
    monkeypatch.setattr(googleapiclient.discovery, "build", build)
    seen["credentials"] = credentials
    return seen


def _http_error(status: int) -> BaseException:
    import httplib2
    from googleapiclient.errors import HttpError

    return HttpError(httplib2.Response({"status": status}), b'{"error": {"message": "fake"}}')


def _payload(line: bytes) -> dict[str, object]:
    return {"name": GCP_REF + "/versions/3", "payload": {"data": base64.b64encode(line).decode()}}


def test_gcp_secret_retries_then_installs_the_latest_version(secretmanager, tls, tmp_path):
    from google.auth.exceptions import TransportError

    secretmanager["script"] = _Script(
        [TransportError("metadata server"), _http_error(503), _http_error(429)], _payload(delivery.encode(tls))
    )
    environ = {delivery.FROM_ENV: stores.GCP_SECRET, stores.SECRET_REF_ENV: GCP_REF}
    env = _deliver(environ, tmp_path)
    assert TLSMaterial.from_dir(env[delivery.TLS_DIR_ENV]).cert_pem == tls.cert_pem
    assert secretmanager["script"].calls == [GCP_REF + "/versions/latest"] * 4
    assert secretmanager["builds"][0] == ("secretmanager", "v1", secretmanager["credentials"], False)
    assert secretmanager["scopes"][0] == ["https://www.googleapis.com/auth/cloud-platform"]


def test_gcp_secret_reads_the_version_named(secretmanager, tls, tmp_path):
    secretmanager["script"] = _Script([], _payload(delivery.encode(tls)))
    ref = GCP_REF + "/versions/7"
    _deliver({delivery.FROM_ENV: stores.GCP_SECRET, stores.SECRET_REF_ENV: ref}, tmp_path)
    assert secretmanager["script"].calls == [ref]


def test_a_missing_gcp_secret_is_one_line_at_once(secretmanager, tmp_path):
    secretmanager["script"] = _Script([_http_error(404)], None)
    with pytest.raises(BadInput) as caught:
        _deliver({delivery.FROM_ENV: stores.GCP_SECRET, stores.SECRET_REF_ENV: GCP_REF}, tmp_path)
    assert len(secretmanager["script"].calls) == 1
    _assert_one_line(caught.value, "Google Secret Manager", GCP_REF, "HttpError", "secretAccessor")


def test_a_store_that_keeps_failing_is_an_infrastructure_error(secretmanager, tmp_path):
    secretmanager["script"] = _Script([_http_error(500)] * 10**6, None)
    environ = {delivery.FROM_ENV: stores.GCP_SECRET, stores.SECRET_REF_ENV: GCP_REF, stores.FETCH_TIMEOUT_ENV: "0.3"}
    with pytest.raises(InfrastructureError) as caught:
        _deliver(environ, tmp_path)
    assert len(secretmanager["script"].calls) > 1
    _assert_one_line(caught.value, GCP_REF, "attempts")


@pytest.mark.parametrize("data, message", [("%%%", "not base64"), (base64.b64encode(b"hello").decode(), "JSON line")])
def test_what_a_store_holds_is_checked_like_any_delivery(secretmanager, tmp_path, data, message):
    secretmanager["script"] = _Script([], {"payload": {"data": data}})
    with pytest.raises(BadInput, match=message):
        _deliver({delivery.FROM_ENV: stores.GCP_SECRET, stores.SECRET_REF_ENV: GCP_REF}, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- what needs no store ------------------------------------------------------------


@pytest.mark.parametrize(
    "source, module, extra",
    [
        (stores.AWS_SECRET, "botocore.session", "aws"),
        (stores.AZURE_KEYVAULT, "azure.identity", "azure"),
        (stores.AZURE_KEYVAULT, "azure.keyvault.secrets", "azure"),
        (stores.GCP_SECRET, "googleapiclient.discovery", "gcp"),
        (stores.GCP_SECRET, "google.auth", "gcp"),
    ],
)
def test_a_missing_sdk_names_the_install_command(source, module, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    ref = {
        stores.AWS_SECRET: "arn:aws:secretsmanager:us-east-1:123456789012:secret:flowrig-run-abc-AbCdEf",
        stores.AZURE_KEYVAULT: VAULT_REF,
        stores.GCP_SECRET: GCP_REF,
    }[source]
    with pytest.raises(BadInput) as caught:
        _deliver({delivery.FROM_ENV: source, stores.SECRET_REF_ENV: ref}, tmp_path)
    _assert_one_line(caught.value, f"pip install 'flowrig[{extra}]'")


@pytest.mark.parametrize(
    "source, ref",
    [
        (stores.AWS_SECRET, "flowrig-run-abc"),
        (stores.AWS_SECRET, "arn:aws:s3:::bucket"),
        (stores.AZURE_KEYVAULT, "http://runs-vault.vault.azure.net/secrets/x"),
        (stores.AZURE_KEYVAULT, "https://example.com/secrets/x"),
        (stores.AZURE_KEYVAULT, "https://runs-vault.vault.azure.net/keys/x"),
        (stores.GCP_SECRET, "projects/p/secrets"),
        (stores.GCP_SECRET, "projects/p/secrets/s/versions/1/extra"),
    ],
)
def test_a_malformed_ref_is_refused_before_any_call(source, ref, tmp_path):
    with pytest.raises(BadInput, match="is not a secret"):
        _deliver({delivery.FROM_ENV: source, stores.SECRET_REF_ENV: ref}, tmp_path)
