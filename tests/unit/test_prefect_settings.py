"""Settings shipped to workers as objects: what prefect-dask's serialisation turns
them into, and what a worker's hydration makes of that."""

from __future__ import annotations

import gc

import cloudpickle
from prefect.context import SettingsContext, hydrated_context, serialize_context
from prefect.settings import (
    PREFECT_API_KEY,
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)

from flowrig.common.startup_gc import collector_paused
from flowrig.internals.prefect_settings import ShippedSettingsContext, run_settings, settings_with

API = "http://127.0.0.1:4999/api"


def test_run_settings_ship_as_the_objects_and_hydrate_unchanged(monkeypatch):
    with run_settings({PREFECT_API_URL: API, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}) as settings:
        assert isinstance(SettingsContext.get(), ShippedSettingsContext)
        shipped = serialize_context()["settings_context"]
        assert shipped["settings"] is settings
    # What a worker receives: the pickled objects, rebuilt without re-reading sources.
    received = cloudpickle.loads(cloudpickle.dumps(shipped))
    # An environment that disagrees proves the worker keeps the runner's values.
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:1/api")
    with hydrated_context({"settings_context": received}):
        current = get_current_settings()
        assert current.api.url == API
        assert current.flows.heartbeat_frequency is None
        assert current == settings


def test_settings_built_ahead_are_entered_as_they_are():
    built = settings_with({"PREFECT_API_URL": API})
    assert get_current_settings().api.url != API  # building enters nothing
    with run_settings(built) as settings:
        assert settings is built and PREFECT_API_URL.value() == API
        assert serialize_context()["settings_context"]["settings"] is built


def test_a_temporary_settings_block_inside_ships_the_usual_way():
    with run_settings({PREFECT_API_URL: API}):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
            context = SettingsContext.get()
            assert type(context) is SettingsContext
            shipped = serialize_context()["settings_context"]
    assert isinstance(shipped["settings"], dict)
    assert shipped["settings"]["api"]["url"] == API


def test_masked_serialisation_stays_plain_data():
    with run_settings({PREFECT_API_URL: API, PREFECT_API_KEY: "pnu_secret"}):
        masked = SettingsContext.get().serialize(include_secrets=False)
        full = SettingsContext.get().serialize()
    assert isinstance(masked["settings"], dict)
    assert "pnu_secret" not in repr(masked)
    assert full["settings"].api.key.get_secret_value() == "pnu_secret"


def test_collector_paused_restores_the_collector():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()
