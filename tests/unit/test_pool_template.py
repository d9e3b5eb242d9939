"""The start every cloud backend shares (:class:`flowrig.backends.pool.PoolBackend`):
each step's failure closes what the run made and reaches the user as today, and nothing
is opened before the options are good. The cloud is a recording fake
(tests/pool_support.py); the start with a real cluster is in
tests/e2e/local/test_pool_template.py.
"""

from __future__ import annotations

import logging
import sys

import pytest

from flowrig.backends.base import ClusterSpec
from flowrig.certs import delivery
from flowrig.errors import BadInput, InfrastructureError
from flowrig.project.sizing import ClusterSize
from tests.pool_support import FakeBackend

STEPS = ["prepare", "store_certificates", "launcher"]


def spec(tls, image: str | None = "registry.example/flows:1", **options) -> ClusterSpec:
    return ClusterSpec(run_id="tmpl1", size=ClusterSize(1), tls=tls, image=image, options=options)


@pytest.mark.parametrize("step", STEPS)
def test_a_step_that_fails_closes_the_run_and_is_told_as_the_cluster_not_starting(tls, step):
    backend = FakeBackend(fail_at={step: RuntimeError("the API said no\n  (request 17)")})
    with pytest.raises(InfrastructureError) as info:
        backend.start(spec(tls))
    assert str(info.value) == "the fakecloud cluster could not start: the API said no (request 17)"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    [run] = backend.runs
    # The steps up to the failing one ran, none after it, and the run was closed once.
    assert run.steps == STEPS[: STEPS.index(step) + 1] + ["close"]


@pytest.mark.parametrize("step", STEPS)
def test_flowrig_errors_pass_as_they_are_after_the_run_is_closed(tls, step):
    refused = BadInput("the project's role may not be passed: name another")
    backend = FakeBackend(fail_at={step: refused})
    with pytest.raises(BadInput) as info:
        backend.start(spec(tls))
    assert info.value is refused
    assert backend.runs[0].steps[-1] == "close"


@pytest.mark.parametrize("step", STEPS)
def test_an_interrupt_passes_as_it_is_after_the_run_is_closed(tls, step):
    backend = FakeBackend(fail_at={step: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        backend.start(spec(tls))
    assert backend.runs[0].steps == STEPS[: STEPS.index(step) + 1] + ["close"]


def test_what_could_not_be_deleted_is_logged_once_with_the_cloud_it_is_in(tls, caplog):
    backend = FakeBackend(fail_at={"launcher": RuntimeError("no")}, leftovers=["bucket b-1", "role r-2"])
    with caplog.at_level(logging.ERROR, logger="flowrig.pool"), pytest.raises(InfrastructureError):
        backend.start(spec(tls))
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert said == ["these fake-cloud resources of the run could not be deleted (they carry its tags): "
                    "bucket b-1; role r-2"]


def test_the_roles_get_the_runs_certificates_by_the_stored_reference(tls):
    backend = FakeBackend(fail_at={"launcher": RuntimeError("stop here")})
    with pytest.raises(InfrastructureError):
        backend.start(spec(tls))
    [run] = backend.runs
    [line] = run.stored
    assert "\n" not in line and delivery.decode(line).cert_pem == tls.cert_pem
    assert run.secret_ref == "secret-of-the-run"


def test_roles_that_use_the_images_certificates_get_none_stored(tls):
    backend = FakeBackend(fail_at={"launcher": RuntimeError("stop here")})
    with pytest.raises(InfrastructureError):
        backend.start(spec(tls, certificates=False))
    [run] = backend.runs
    assert run.steps == ["prepare", "launcher", "close"]
    assert run.stored == [] and run.secret_ref is None


@pytest.mark.parametrize(("backend", "given", "message"), [
    (FakeBackend(), {"image": None}, "the fakecloud backend needs an image: pass --image or build one with flowrig build"),
    (FakeBackend(), {"provision_timeout": "soon"}, "provision_timeout"),
    (FakeBackend(), {"unknown_key": 1}, "unknown_key"),
])
def test_bad_input_is_found_before_the_run_is_opened(tls, backend, given, message):
    image = given.pop("image", "registry.example/flows:1")
    with pytest.raises(BadInput) as info:
        backend.start(spec(tls, image=image, **given))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert backend.runs == []


def test_a_missing_sdk_names_the_extra_before_the_run_is_opened(tls, monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(FakeBackend, "sdk_modules", ("flowrig_no_such_sdk.client",))
    with pytest.raises(BadInput) as info:
        backend.start(spec(tls))
    assert str(info.value) == "the fakecloud backend needs flowrig_no_such_sdk: pip install 'flowrig[fake]'"
    assert backend.runs == []
    monkeypatch.setattr(FakeBackend, "sdk_name", "the Fake SDK")
    with pytest.raises(BadInput) as info:
        backend.start(spec(tls))
    assert str(info.value) == "the fakecloud backend needs the Fake SDK: pip install 'flowrig[fake]'"


def test_opening_the_run_fails_with_nothing_to_close(tls):
    backend = FakeBackend(fail_at={"open_run": BadInput("no AWS credentials: run aws configure")})
    with pytest.raises(BadInput, match="no AWS credentials"):
        backend.start(spec(tls))
    assert backend.runs == []


def test_a_module_imported_before_its_package_went_is_no_sdk(tls, monkeypatch):
    import json.decoder  # noqa: F401  (in sys.modules from here on)

    backend = FakeBackend()
    monkeypatch.setattr(FakeBackend, "sdk_modules", ("json.decoder",))
    # A None entry makes the import fail as it does when the package is not installed.
    monkeypatch.setitem(sys.modules, "json", None)
    with pytest.raises(BadInput) as info:
        backend.start(spec(tls))
    assert str(info.value) == "the fakecloud backend needs json: pip install 'flowrig[fake]'"
