"""A run's certificates delivered to a role: one JSON line on stdin or the run's secret,
checked, installed in a private directory, and gone from the environment."""

from __future__ import annotations

import io
import os
import stat

import pytest

from flowrig.certs import TLSMaterial, delivery
from flowrig.errors import BadInput
from tests.tls_support import foreign_material


def _pipe(data: bytes) -> io.BufferedReader:
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    return os.fdopen(read, "rb")


def test_a_line_on_stdin_is_installed_and_the_rest_of_stdin_is_left(tls, tmp_path):
    stdin = _pipe(delivery.encode(tls) + b"what comes after\n")
    environ = {delivery.FROM_ENV: "stdin", "KEEP": "1"}
    env = delivery.role_environment(environ, stdin, base=tmp_path)
    directory = tmp_path / os.path.basename(env[delivery.TLS_DIR_ENV])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "tls.key").stat().st_mode) == 0o600
    assert TLSMaterial.from_dir(directory).cert_pem == tls.cert_pem
    assert delivery.FROM_ENV not in env and delivery.FROM_ENV not in environ and env["KEEP"] == "1"
    assert stdin.read() == b"what comes after\n"


def test_the_secret_variable_is_installed_and_removed_from_the_environment(tls, tmp_path):
    environ = {delivery.FROM_ENV: "secret", delivery.SECRET_ENV: delivery.encode(tls).decode()}
    env = delivery.role_environment(environ, _pipe(b""), base=tmp_path)
    assert delivery.SECRET_ENV not in env and delivery.SECRET_ENV not in environ
    assert TLSMaterial.from_dir(env[delivery.TLS_DIR_ENV]).ca_pem == tls.ca_pem


def test_nothing_is_done_when_nothing_is_delivered(tmp_path):
    env = delivery.role_environment({"A": "b"}, _pipe(b""), base=tmp_path)
    assert env == {"A": "b"} and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "environ, data, message",
    [
        ({delivery.FROM_ENV: "floppy"}, b"", "not a way certificates arrive"),
        ({delivery.FROM_ENV: "stdin"}, b"", "nothing did"),
        ({delivery.FROM_ENV: "secret"}, b"", "nothing did"),
        ({delivery.FROM_ENV: "stdin"}, b"not json\n", "JSON line"),
        ({delivery.FROM_ENV: "stdin"}, b'{"ca": "x"}\n', "JSON line"),
    ],
)
def test_a_bad_delivery_is_one_line_naming_it(environ, data, message, tmp_path):
    with pytest.raises(BadInput, match=message):
        delivery.role_environment(dict(environ), _pipe(data), base=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_certificates_that_do_not_hold_together_are_refused(tls, tmp_path):
    stranger = foreign_material()
    mixed = TLSMaterial(ca_pem=tls.ca_pem, cert_pem=stranger.cert_pem, key_pem=stranger.key_pem)
    with pytest.raises(BadInput, match="delivered"):
        delivery.role_environment({delivery.FROM_ENV: "stdin"}, _pipe(delivery.encode(mixed)), base=tmp_path)
