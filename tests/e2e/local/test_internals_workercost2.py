"""What flowrig.internals.result_paths and flowrig.internals.cache_keys assume of the
locked Prefect: each test fails when that version stops behaving so."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest


def _prefects_resolve_path():
    """Prefect's own ``LocalFileSystem._resolve_path``, unwrapped when installed."""
    from prefect.filesystems import LocalFileSystem

    method = LocalFileSystem._resolve_path
    return getattr(method, "__wrapped__", method)


def _paths_to_try(tmp_path: Path) -> list:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "file").write_text("x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.symlink(tmp_path / "real" / "file", tmp_path / "real" / "a-link")
    return [None, "", ".", "..", uuid.uuid4().hex, "file", "a-link", "sub/dir/key", "../escape",
            str(tmp_path / "real" / "file"), "/etc/passwd", "~", "~/x", "a\\b"]


@pytest.fixture
def installed():
    from flowrig.internals import result_paths

    result_paths.install()
    return result_paths


def test_resolve_path_is_the_resolved_base_joined_with_the_key(tmp_path):
    """What the fast path computes for a plain key is what Prefect's method returns:
    the base path expanded and resolved, joined with the key, resolved again."""
    from prefect.filesystems import LocalFileSystem

    resolve = _prefects_resolve_path()
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    storage = LocalFileSystem(basepath=str(tmp_path / "link"))
    key = uuid.uuid4().hex
    assert resolve(storage, key) == (tmp_path / "real" / key)
    assert resolve(storage, key) == Path(str(tmp_path / "link")).expanduser().resolve() / key
    assert resolve(storage, None) == tmp_path / "real"
    with pytest.raises(ValueError):
        resolve(storage, "../escape")


def test_the_wrapped_resolve_path_returns_what_prefects_does(tmp_path, installed, monkeypatch):
    """For every kind of path (plain keys, symlinked keys, nested, absolute, escaping,
    ``~``) and for bases that are symlinks, relative, empty or missing, the installed
    method gives the same result or the same error as Prefect's."""
    from prefect.filesystems import LocalFileSystem

    assert LocalFileSystem._resolve_path.__wrapped__ is _prefects_resolve_path()
    paths = _paths_to_try(tmp_path)
    monkeypatch.chdir(tmp_path / "real")
    monkeypatch.setenv("HOME", str(tmp_path))
    # A base that cannot be looked into (a name too long here; a folder the worker's user may
    # not search in a container) is resolved by Prefect without an error: so it must be here.
    for basepath in (str(tmp_path / "link"), str(tmp_path / "real"), "~/link", "", None, "link-missing",
                     str(tmp_path / "missing"), str(tmp_path / ("x" * 300) / "storage")):
        storage = LocalFileSystem(basepath=basepath) if basepath is not None else LocalFileSystem()
        for path in paths:
            for _ in range(2):  # the second time from the cached base
                outcomes = []
                for method in (_prefects_resolve_path(), LocalFileSystem._resolve_path):
                    try:
                        outcomes.append(("ok", method(storage, path)))
                    except Exception as exc:  # noqa: BLE001 - the same error is what is checked
                        outcomes.append(("error", type(exc)))
                assert outcomes[0] == outcomes[1], (basepath, path, outcomes)


def test_result_records_and_cache_lookups_resolve_through_the_storage_method(tmp_path, installed, monkeypatch):
    """``ResultStore`` makes a record's storage key, persists it and looks a key up
    through ``_resolve_path`` found on the storage object (the installed one)."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    calls = []
    wrapped = LocalFileSystem._resolve_path

    def spy(self, path):
        calls.append(path)
        return wrapped(self, path)

    monkeypatch.setattr(LocalFileSystem, "_resolve_path", spy)
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path)))
    key = uuid.uuid4().hex
    record = store.create_result_record(4, key=key)
    assert record.metadata.storage_key == str(tmp_path.resolve() / key)
    assert key in calls
    calls.clear()
    assert store.exists(key) is False
    assert key in calls
    store.persist_result_record(record)
    assert store.exists(key) is True
    assert store.read(key).result == 4


def _task_context(task):
    return SimpleNamespace(task=task)


def test_task_source_key_is_the_hash_of_the_stored_source_alone():
    """``TaskSource.compute_key`` hashes ``task.source_code`` and nothing else: two tasks
    with the same stored text and different functions, names, inputs and flow
    parameters get the same key; another text gets another key."""
    from prefect.cache_policies import TaskSource
    from prefect.utilities.hashing import hash_objects

    from flowrig.internals import cache_keys

    compute = getattr(TaskSource.compute_key, "__wrapped__", TaskSource.compute_key)
    if TaskSource.compute_key is not compute:
        assert cache_keys._INSTALLED
    text = "def double(x):\n    return 2 * x\n"
    one = SimpleNamespace(source_code=text, fn=lambda x: 2 * x, name="double")
    two = SimpleNamespace(source_code=text, fn=lambda x: x, name="other")
    policy = TaskSource()
    key = compute(policy, _task_context(one), {"x": 1}, {"n": 1})
    assert key == hash_objects(text, raise_on_failure=True)
    assert compute(TaskSource(), _task_context(two), {"x": 2}, {"n": 9}) == key
    assert compute(policy, _task_context(SimpleNamespace(source_code=text + "#", fn=None)), {}, {}) != key
    assert compute(policy, None, {}, {}) is None


def test_the_default_policy_reaches_task_source_through_the_class():
    """The default cache policy holds a ``TaskSource`` whose ``compute_key`` is looked
    up on the class (what install() replaces), and the installed one returns the key
    Prefect's function returns."""
    from prefect.cache_policies import DEFAULT, TaskSource

    from flowrig.internals import cache_keys

    parts = [policy for policy in DEFAULT.policies if isinstance(policy, TaskSource)]
    assert len(parts) == 1 and "compute_key" not in vars(parts[0])
    cache_keys.install()
    original = TaskSource.compute_key.__wrapped__
    task = SimpleNamespace(source_code=f"def f():\n    return {uuid.uuid4().int}\n")
    expected = original(parts[0], _task_context(task), {}, {})
    assert TaskSource.compute_key(parts[0], _task_context(task), {}, {}) == expected
    assert task.source_code in cache_keys._KEYS
    assert TaskSource.compute_key(parts[0], _task_context(task), {"x": 1}, {}) == expected


def test_caching_and_persistence_on_workers_hold_when_asked_for(tls, prefect_server, tmp_path):
    """On a run's workers, with both wrappers installed, a task that asks for caching
    and persistence writes its result under its cache key in its storage and a second
    call with the same input is Cached with that result; a task that asks for neither
    writes nothing and is never Cached."""
    from distributed import LocalCluster
    from prefect import flow, task
    from prefect.cache_policies import INPUTS
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flowrig.internals import cache_keys, result_paths
    from flowrig.internals.task_runner import FlowrigTaskRunner

    storage = tmp_path / "results"
    storage.mkdir()

    @task(cache_policy=INPUTS, persist_result=True, result_storage=storage)
    def kept(x: int) -> int:
        return 2 * x

    @task
    def plain(x: int) -> int:
        return 3 * x

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tls://", host="127.0.0.1",
                      security=tls.to_security(), dashboard_address=None) as cluster:

        @flow(task_runner=FlowrigTaskRunner(address=cluster.scheduler_address,
                                            client_kwargs={"security": tls.to_security()}, events="send"))
        def cached_twice():
            states = []
            for each, x in ((kept, 21), (kept, 21), (plain, 5), (plain, 5)):
                future = each.submit(x)
                future.wait()
                states.append(future.state)
            return [(state.name, state.result()) for state in states]

        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            outcome = cached_twice()
    assert result_paths._INSTALLED and cache_keys._INSTALLED
    assert outcome == [("Completed", 42), ("Cached", 42), ("Completed", 15), ("Completed", 15)]
    written = [path.name for path in storage.iterdir()]
    assert len(written) == 1, written
