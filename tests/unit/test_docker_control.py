"""The docker backend's control channel as data: what a request line must carry (the run's key,
the claim), long lines in pieces, and who counts as the owner of a run. Real containers:
tests/e2e/docker/test_docker_control.py and test_docker_control_attacks.py.
"""

from __future__ import annotations

import json
import os

import pytest

from flowrig.backends.docker import control
from flowrig.backends.docker.leftovers import RunLeftovers, judge
from flowrig.containers import owner as owners


def _demux(stream: bytes, chunk: int) -> tuple[bytes, list[bytes], list[bytes]]:
    messages: list[bytes] = []
    printed: list[bytes] = []
    demux = control.Demux(messages.append, printed.append)
    out = b"".join(demux.feed(stream[i:i + chunk]) for i in range(0, len(stream), chunk)) + demux.end()
    return out, messages, printed


def test_the_old_in_band_line_is_a_request_only_without_the_claim():
    """What the host read as a request before: the same bytes, unclaimed, do reach the
    demultiplexer as a message, and the signature check refuses it."""
    out, messages, _ = _demux(b'hello\n\x1eflowrig-control {"op":"close"}\n', 5)
    assert out == b"hello\n" and messages == [b'{"op":"close"}']
    with pytest.raises(control.Refused, match="no signature"):
        control.open_message(control.new_key(), messages[0])


def test_a_request_needs_the_runs_key_on_its_own_body():
    key = control.new_key()
    line = control.sign(key, "start", 3, n_workers=2)
    payload = line[len(control.PREFIX):-1]
    assert control.open_message(key, payload) == {"op": "start", "seq": 3, "n_workers": 2}
    with pytest.raises(control.Refused, match="not the run's"):
        control.open_message(control.new_key(), payload)
    mac, body = payload.split(b" ", 1)
    with pytest.raises(control.Refused, match="not the run's"):
        control.open_message(key, mac + b" " + body.replace(b"2", b"9"))
    with pytest.raises(control.Refused, match="no sequence"):
        control.open_message(key, control.sign(key, "close", True)[len(control.PREFIX):-1])


def test_a_line_longer_than_the_host_holds_goes_on_in_pieces_unchanged():
    long = b"x" * (control.MAX_LINE + 10) + b"\x1e\x1e" + b"y" * 100 + b"\n"
    out, messages, _ = _demux(long, 65536)
    assert out == long.replace(b"\x1e\x1e", b"\x1e") and messages == []
    # A separator pair cut by a chunk boundary is not split into two lone ones.
    out, messages, _ = _demux(b"a" * control.MAX_LINE + b"\x1e\x1eb\n", control.MAX_LINE + 1)
    assert out == b"a" * control.MAX_LINE + b"\x1eb\n" and messages == []


# --- who owns a run ---------------------------------------------------------------------


def test_a_reused_process_id_or_another_machine_is_not_taken_for_the_owner():
    me = owners.parse(owners.current_label())
    assert me is not None and me.pid == os.getpid() and owners.alive(me) is True
    reused = owners.Owner(me.host, me.boot, me.pid, me.started - 3600)
    assert owners.alive(reused) is False
    elsewhere = owners.Owner("another-machine", me.boot, me.pid, me.started)
    assert owners.alive(elsewhere) is None
    # Elsewhere: live while a container runs, left once nothing does.
    running = RunLeftovers("r", containers=[("c", "scheduler", "running")], owners=[elsewhere.label()])
    stopped = RunLeftovers("r", containers=[("c", "scheduler", "exited")], owners=[elsewhere.label()])
    assert judge(running, owners.alive).live and not judge(stopped, owners.alive).live
    # Made before owners were recorded: the same rule.
    assert judge(RunLeftovers("r", containers=[("c", "worker", "running")]), owners.alive).live
    assert not judge(RunLeftovers("r", networks=["flowrig-r"]), owners.alive).live
    assert owners.parse("not json") is None and owners.parse(json.dumps({"pid": 1})) is None


def test_a_started_answers_marks_come_on_this_processs_clock_and_nothing_else_passes():
    import time

    wall = time.time()
    message = {"marks": {"containers_started": wall - 2.0, "scheduler_up": wall - 1.0, "flow_finished": wall,
                         "first_worker_joined": "soon"}}
    before = time.perf_counter()
    marks = control.start_marks(message)
    assert set(marks) == {"containers_started", "scheduler_up"}  # only the start's own marks
    assert marks["containers_started"] == pytest.approx(before - 2.0, abs=0.05)
    assert marks["scheduler_up"] - marks["containers_started"] == pytest.approx(1.0, abs=0.01)
    for bad in ({"marks": {"scheduler_up": float("nan")}}, {"marks": {"scheduler_up": float("inf")}},
                {"marks": {"scheduler_up": True}}, {"marks": {"scheduler_up": -1}}, {"marks": ["scheduler_up"]}, {}):
        assert control.start_marks(bad) == {}, bad
