"""What lets the suite run on several pytest-xdist workers at once (tests/conftest.py,
tests/docker_support.py): one build of a shared image, and files kept whole."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import PARALLEL_ORDER, _parallel_rank
from tests.docker_support import image_lock


def _hold(tag: str, entered: threading.Event, release: threading.Event) -> threading.Thread:
    def body() -> None:
        with image_lock(tag):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert entered.wait(10)
    return thread


def test_a_second_builder_of_the_same_tag_waits_for_the_first(tmp_path, monkeypatch):
    # flock locks belong to an open file, so two threads contend as two workers would.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    tag = f"flowrig-seed:lock-{tmp_path.name}"
    release = threading.Event()
    holder = _hold(tag, threading.Event(), release)
    second = threading.Event()
    waiter = threading.Thread(target=lambda: _hold(tag, second, threading.Event()), daemon=True)
    waiter.start()
    time.sleep(0.3)
    assert not second.is_set(), "the second builder went ahead while the first held the lock"
    release.set()
    holder.join(10)
    assert second.wait(10), "the second builder never got the lock once the first let it go"


def test_builders_of_other_tags_do_not_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    release = threading.Event()
    holder = _hold("flowrig-seed:one", threading.Event(), release)
    try:
        _hold("flowrig-seed:two", threading.Event(), threading.Event())
    finally:
        release.set()
        holder.join(10)


def test_every_test_has_its_files_group_and_parallel_order_puts_waiting_layers_first(request):
    item = request.node
    groups = [mark.args[0] for mark in item.iter_markers("xdist_group")]
    assert groups == ["tests/unit/test_parallel_sessions.py"]
    assert _parallel_rank(item) == PARALLEL_ORDER.index("unit") == len(PARALLEL_ORDER) - 1
    assert PARALLEL_ORDER[0] == "docker"


@pytest.mark.xdist_group("shared")
def test_a_file_marked_with_a_group_keeps_that_group_only(request):
    assert [mark.args[0] for mark in request.node.iter_markers("xdist_group")] == ["shared"]
