"""A run's folders on this machine: held while any process of the run lives, listed and
removed by ``flowrig local leftovers`` only once none does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from flowrig.common import runfolders
from tests.run_support import FLOWRIG

#: Makes a run folder, says where, then waits (for stdin to close) or forks a child
#: that keeps it while the maker exits.
MAKER = textwrap.dedent(
    """
    import os, sys, time
    from flowrig.common import runfolders

    folder = runfolders.make("scratch", "run1")
    (folder.path / "data").write_bytes(b"x" * 1000)
    print(folder.path, flush=True)
    if sys.argv[1] == "fork":
        if os.fork() == 0:
            sys.stdin.read()  # the child holds the folder until its stdin closes
            os._exit(0)
        os._exit(0)
    sys.stdin.read()
    """
)


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    return root


def _maker(tmp_path, how: str) -> tuple[subprocess.Popen, str]:
    script = tmp_path / "maker.py"
    script.write_text(MAKER)
    process = subprocess.Popen([sys.executable, str(script), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=os.environ)
    return process, process.stdout.readline().strip()


def test_a_live_processs_folder_is_never_listed_nor_removed_then_is_once_it_ended(tmp_path, tmpdir_env):
    process, path = _maker(tmp_path, "wait")
    try:
        assert path.startswith(str(tmpdir_env / "flowrig-scratch-"))
        assert oct(os.stat(path).st_mode & 0o777) == "0o700"
        assert runfolders.leftovers() == []
        assert runfolders.remove_leftover(path) is False and os.path.isdir(path)
    finally:
        process.stdin.close()
        process.wait(30)
    [left] = runfolders.leftovers()
    assert (left.path, left.kind, left.run_id, left.pid) == (path, "scratch", "run1", process.pid)
    assert left.size >= 1000
    assert runfolders.remove_leftover(path) is True and not os.path.exists(path)


def test_a_child_forked_by_the_maker_keeps_its_folder(tmp_path, tmpdir_env):
    process, path = _maker(tmp_path, "fork")
    process.wait(30)  # the maker is gone; its child still holds the lock
    try:
        assert runfolders.leftovers() == []
    finally:
        process.stdin.close()
    deadline = time.monotonic() + 10
    while not runfolders.leftovers():
        assert time.monotonic() < deadline, "the child's end did not free the folder"
        time.sleep(0.05)
    assert [left.path for left in runfolders.leftovers()] == [path]


def test_what_is_not_a_run_folder_of_this_user_is_left_alone(tmp_path, tmpdir_env):
    (tmpdir_env / "flowrig-plain").mkdir()  # no marker: not made by runfolders
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / runfolders.MARKER).write_text("{}")
    (tmpdir_env / "flowrig-link").symlink_to(elsewhere)  # a link to a folder with a marker
    assert runfolders.leftovers() == []
    assert runfolders.remove_leftover(tmpdir_env / "flowrig-link") is False
    assert (elsewhere / runfolders.MARKER).exists() and (tmpdir_env / "flowrig-plain").is_dir()


def test_a_folder_removed_by_its_run_is_gone_and_the_command_lists_what_is_left(tmp_path, tmpdir_env):
    folder = runfolders.make("prefect")
    assert runfolders.leftovers() == []
    folder.remove()
    folder.remove()  # twice is fine
    assert not folder.path.exists()
    process, path = _maker(tmp_path, "wait")
    process.stdin.close()
    process.wait(30)
    env = {**os.environ, "TMPDIR": str(tmpdir_env)}
    listed = subprocess.run([*FLOWRIG, "local", "leftovers", "--output", "json"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [item["path"] for item in json.loads(listed.stdout)] == [path]
    text = subprocess.run([*FLOWRIG, "local", "leftovers", "--remove"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert text.returncode == 0 and path in text.stdout and "(scratch, run run1," in text.stdout
    assert text.stderr.strip() == f"removed {path}"
    assert not os.path.exists(path)
    bad = subprocess.run([*FLOWRIG, "local", "leftovers", "--output", "yaml"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "flowrig: error: --output 'yaml': use text or json"
