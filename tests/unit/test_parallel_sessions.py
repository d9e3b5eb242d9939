"""What lets the suite run on several pytest-xdist workers at once (tests/conftest.py,
tests/docker_support.py): one build of a shared image, and the order files go out in."""

from __future__ import annotations

import threading
import time

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


def test_in_parallel_the_layers_that_wait_longest_go_out_first(request):
    assert PARALLEL_ORDER[0] == "docker" and PARALLEL_ORDER[-1] == "unit"
    assert _parallel_rank(request.node) == PARALLEL_ORDER.index("unit")
