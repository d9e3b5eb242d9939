"""The benchmark report's machinery, on real processes: the QUIET hold, the sampler that
tells the report's own CPU from other processes', and a step that fails or hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.bench_support import BENCHMARKS, REPO, benchmark_module


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("bench_report")


@pytest.fixture(scope="module")
def quiet(bench):
    return benchmark_module("report_quiet")


def test_hold_refuses_a_held_machine_and_always_lets_go(quiet, tmp_path):
    path = tmp_path / "QUIET"
    with quiet.QuietHold(path):
        assert "bench_report.py pid" in path.read_text()
        with pytest.raises(quiet.QuietHeld, match="another benchmark holds the machine"):
            quiet.QuietHold(path).__enter__()
    assert not path.exists()
    for stop in (KeyboardInterrupt, SystemExit(143), RuntimeError("a step broke")):
        with pytest.raises(type(stop) if isinstance(stop, BaseException) else stop):
            with quiet.QuietHold(path):
                raise stop
        assert not path.exists()
    # A hold that is not its own is never removed.
    path.write_text("another benchmark\n")
    with pytest.raises(quiet.QuietHeld):
        with quiet.QuietHold(path):
            pass
    assert path.read_text() == "another benchmark\n"


#: Spins until it used ``seconds`` of CPU, however loaded the machine is.
BUSY = "import time\nwhile time.process_time() < {seconds}:\n    pass\n"


def test_sampler_tells_our_load_from_others(quiet, tmp_path):
    # A busy child of ours, and a busy process that is not ours (started in a session of its
    # own by a parent that exits at once, so it is reparented away from this process).
    script = tmp_path / "busy.py"
    script.write_text(BUSY.format(seconds=1.5))
    sampler = quiet.Sampler(interval=0.5)
    sampler.start()
    ours = subprocess.Popen([sys.executable, str(script)])
    launcher = textwrap.dedent(f"""
        import subprocess, sys
        p = subprocess.Popen([sys.executable, {str(script)!r}], start_new_session=True)
        print(p.pid)
    """)
    other = int(subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True,
                               check=True).stdout)
    found = quiet.kinds(quiet.snapshot())
    assert (found[ours.pid], found[other]) == ("ours", "others")
    ours.wait()
    while psutil.pid_exists(other) and psutil.Process(other).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.1)
    sampler.stop()
    samples = sampler.samples
    assert len(samples) >= 4
    # The child used 1.5 s of CPU, counted as ours (but what it used after the last sample).
    assert sum(s["ours"] * s["seconds"] for s in samples) > 0.9
    assert sum(s["others"] * s["seconds"] for s in samples) > 0.9
    found = quiet.summary(samples, docker=False, limit=0.1)
    assert found["quiet"] is False and "python" in "".join(found["busiest_others"])
    assert quiet.summary(samples, docker=False, limit=100.0)["quiet"] is True


def test_containers_and_image_builds_are_told_from_others(quiet):
    # As ps shows them here: a container's process under its shim, a BuildKit RUN step
    # under runc under dockerd, and a process that is neither.
    rows = [(1, 0, "init"), (2, 0, "kthreadd"), (50, 2, "kworker/0:1"), (100, 1, "dockerd"),
            (110, 100, "containerd"), (200, 1, "containerd-shim-runc-v2"), (210, 200, "python"),
            (300, 100, "runc"), (310, 300, "sh"), (320, 310, "pip"), (400, 1, "python")]
    table = {pid: {"pid": pid, "ppid": ppid, "name": name} for pid, ppid, name in rows}
    found = {pid: quiet._kind(table, pid, mine={1}) for pid in table if pid != 1}
    assert found == {2: "kernel", 50: "kernel", 100: "containers", 110: "containers", 200: "containers",
                     210: "containers", 300: "containers", 310: "containers", 320: "containers", 400: "others"}


def _step(bench, tmp_path, body: str, timeout: float = 30.0):
    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent(body))
    step = benchmark_module("report_steps").Step("probe", str(script), (), ("a",), timeout)
    return bench.run_step(step, tmp_path)


def test_a_failing_step_says_why(bench, tmp_path):
    result = _step(bench, tmp_path, """
        import sys
        print("the image flowrig-x was not found", file=sys.stderr)
        sys.exit(4)
    """)
    assert result["exit"] == 4 and result["error"] == "exit 4: the image flowrig-x was not found"


def test_a_step_that_writes_no_figures_fails(bench, tmp_path):
    result = _step(bench, tmp_path, "print('done')\n")
    assert result["exit"] == 0 and result["error"] == "wrote no figures"


def test_a_step_that_hangs_is_stopped_with_its_children(bench, tmp_path):
    result = _step(bench, tmp_path, """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open(sys.argv[sys.argv.index("--json") + 1] + ".pid", "w").write(str(child.pid))
        time.sleep(300)
    """, timeout=3.0)
    assert result["error"] == "timed out after 3 s"
    child = int((tmp_path / "probe.json.pid").read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the step's child outlived the step"
        time.sleep(0.1)


def test_a_step_that_works(bench, tmp_path):
    result = _step(bench, tmp_path, """
        import json, sys
        figures = [{"figure": "a", "value": 2.0, "unit": "s", "floor": 1.0, "ratio": 2.0, "target": "<= 2.0"}]
        json.dump(figures, open(sys.argv[sys.argv.index("--json") + 1], "w"))
    """)
    assert result["error"] is None and result["figures"][0]["figure"] == "a"
    assert json.loads(json.dumps(result))["exit"] == 0


def test_profiles_owe_every_acceptance_line(bench):
    steps = benchmark_module("report_steps")
    quick = {step.name: step for step in steps.steps("quick", "img:x")}
    full = {step.name: step for step in steps.steps("full", "img:x")}
    assert list(quick) == list(full) == ["local", "scale", "docker", "pull", "fargate", "cost"]
    assert len(full["scale"].expected) == 3 * 8 and "map-chain own slope 1000->5000" in full["scale"].expected
    assert "stack image import_s after/before" in full["pull"].expected
    assert "stack image import_s after/before" not in quick["pull"].expected
    assert [s.name for s in steps.select(list(quick.values()), "cost, local")] == ["local", "cost"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        steps.select(list(quick.values()), "local,nope")
    # Every script a step runs takes --json.
    for step in full.values():
        done = subprocess.run([sys.executable, str(BENCHMARKS / step.script), "--help"], capture_output=True,
                              text=True, cwd=BENCHMARKS, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert "--json" in done.stdout, step.script


def test_an_interrupted_report_keeps_what_ran_and_fails_the_rest(bench, tmp_path):
    steps = benchmark_module("report_steps")
    first = tmp_path / "first.py"
    first.write_text(textwrap.dedent("""
        import json, os, sys, time
        open(sys.argv[sys.argv.index("--json") + 1] + ".pid", "w").write(str(os.getpid()))
        figures = [{"figure": "a", "value": 2.0, "unit": "s", "floor": 1.0, "ratio": 2.0, "target": "<= 2.0"}]
        json.dump(figures, open(sys.argv[sys.argv.index("--json") + 1], "w"))
        print("a measured", flush=True)
        time.sleep(300)
    """))
    chosen = [steps.Step("first", str(first), (), ("a", "b"), 60), steps.Step("second", str(first), (), ("c",), 60)]
    args = bench.parse(["--sample-interval", "0.2"])
    # Ctrl-C once the first step wrote its first figure.
    timer = threading.Thread(target=lambda: (_wait_for(tmp_path / "first.json"), os.kill(os.getpid(), signal.SIGINT)))
    timer.start()
    found = bench.report(args, chosen, tmp_path)
    timer.join()
    assert found["interrupted"] == 130
    assert [(row["figure"], row["holds"], row["error"]) for row in found["rows"]] == [
        ("a", "failed", "interrupted"), ("b", "failed", "interrupted"),
        ("c", "failed", "not run: the report was interrupted")]
    assert found["rows"][0]["value"] == 2.0  # what it measured before the stop is kept
    pid = int((tmp_path / "first.json.pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
