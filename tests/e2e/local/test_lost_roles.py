"""Lost roles on the local backend, and the scheduler's no-client rule: real clusters
over real mutual TLS, runs through the CLI in a subprocess.

- a worker process killed mid-run: the flow completes with the right result and the
  cluster is back to its size;
- the runner killed with SIGKILL: nothing of the run is left;
- a flow that works on the runner between two submissions, for longer than its
  scheduler's no-client timeout, still completes: the rule counts clients, not tasks;
- the whole-run timeout ends a run with exit 124 and leaves nothing, also while the
  cluster is still starting (and then at once);
- a task run again after its worker was lost counts once;
- a run killed whole with SIGKILL leaves folders that ``flowrig local leftovers``
  removes, and never touches a live run's;
- a worker killed for its memory says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from flowrig.backends.base import ClusterSpec
from flowrig.backends.local import LocalBackend
from flowrig.project.sizing import ClusterSize
from tests.run_support import FLOWRIG, Completed, assert_nothing_left, marked_env, processes_with_marker, run_cli

#: Tasks that nap (each leaves a file named after its process id and item in
#: ``marks``), then one more task after the runner paused, then the cluster's size.
LOST_ROLES_FLOW = """
    import os
    import time
    from prefect import flow, task, unmapped
    from prefect_dask import get_dask_client

    @task
    def step(x: int, nap: float, marks: str) -> int:
        if marks:
            open(os.path.join(marks, f"{os.getpid()}-{x}"), "w").close()
        time.sleep(nap)
        return x * 2

    @flow
    def main(n: int = 10, nap: float = 0.5, marks: str = "", pause: float = 0.0, size: int = 0) -> dict:
        first = step.map(range(n), unmapped(nap), unmapped(marks)).result()
        time.sleep(pause)  # the runner's own work: nothing is submitted meanwhile
        total = step.submit(sum(first), 0.0, "").result()
        with get_dask_client() as client:
            if size:
                client.wait_for_workers(size, timeout=90)
            lifetime = client.run_on_scheduler(
                lambda dask_scheduler: [
                    dask_scheduler.plugins["flowrig-no-client-timeout"].no_client_timeout,
                    dask_scheduler.idle_timeout,
                ]
            )
            return {"total": total, "workers": len(client.scheduler_info()["workers"]), "lifetime": lifetime}
"""

#: 2 * (0 + 1 + ... + 9) doubled once more by the last step.
TOTAL = 2 * 2 * sum(range(10))


def _toml(extra: str = "") -> str:
    return f'flow = "flow.py:main"\n\n[cluster]\nn_workers = 2\n{extra}'


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, within: float) -> float:
    """Seconds until ``pid`` has exited; fails after ``within``."""
    started = time.monotonic()
    while _alive(pid):
        assert time.monotonic() - started < within, f"process {pid} still runs after {within} s"
        time.sleep(0.1)
    return time.monotonic() - started


# --- the scheduler's no-client rule, on a real local cluster ---------------------------


def test_the_scheduler_waits_for_its_first_client_then_stops_once_no_client_is_left(tls):
    from distributed import Client

    spec = ClusterSpec(run_id="noclient1", size=ClusterSize(1), tls=tls, no_client_timeout=2)
    started = LocalBackend().start(spec)
    scheduler = started.cluster.scheduler.process.pid
    try:
        # No client yet: the first one gets the scheduler's start grace, not 2 s.
        time.sleep(4)
        assert _alive(scheduler)
        with Client(started.scheduler_address, security=tls.to_security()) as client:
            # distributed's idle timeout (which counts tasks only) is not what ends it.
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.idle_timeout) is None

            def with_a_client_of_its_worker() -> str:
                from distributed import get_client

                return get_client().id

            # A task's own client stays connected from its worker: it does not count.
            assert client.submit(with_a_client_of_its_worker, pure=False).result().startswith("Client-worker-")
            time.sleep(3)
            assert _alive(scheduler), "the scheduler stopped while its runner's client was connected"
        seconds = _wait_gone(scheduler, within=10)
        assert seconds >= 1.5, f"the scheduler stopped {seconds:.1f} s after its last client left, before 2 s"
    finally:
        started.close()


def test_only_the_last_runner_client_leaving_starts_the_clock():
    from flowrig.roles.lifetime import NoClientTimeout

    rule = NoClientTimeout(10, 100)
    assert rule.limit == 100 and not rule.expired(rule.alone_since + 99) and rule.expired(rule.alone_since + 101)
    rule.add_client(None, "Client-worker-0f")  # a task's own client: still waiting for the first
    assert rule.limit == 100
    rule.add_client(None, "Client-1a")
    rule.add_client(None, "Client-2b")
    rule.remove_client(None, "Client-1a")
    assert rule.limit == 10 and not rule.expired(rule.alone_since + 1000)
    rule.remove_client(None, "Client-2b")
    left = rule.alone_since
    # Neither a worker's client leaving nor a repeated removal moves the clock.
    rule.remove_client(None, "Client-worker-0f")
    rule.remove_client(None, "Client-2b")
    assert rule.alone_since == left
    assert not rule.expired(left + 9) and rule.expired(left + 11)


def test_a_worker_that_does_not_come_back_is_started_again_under_its_name(tls):
    import dask
    from distributed import Client

    started = LocalBackend().start(ClusterSpec(run_id="keeper1", size=ClusterSize(2), tls=tls))
    cluster = started.cluster
    try:
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}), \
                Client(started.scheduler_address, security=tls.to_security()) as client:
            gone = cluster.workers[0]
            # A nanny that closes does not restart its worker: the worker is lost for good.
            cluster.sync(gone.close)
            deadline = time.monotonic() + 30
            # The new worker joins the scheduler a moment before the cluster records it.
            while not (cluster.keeper.replaced == 1 and len(client.scheduler_info()["workers"]) == 2
                       and cluster.workers.get(0) not in (None, gone)):
                assert time.monotonic() < deadline, (cluster.keeper.replaced, cluster.workers)
                time.sleep(0.2)
            assert set(cluster.workers) == {0, 1}
            assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
            # Adaptive or explicit scale-downs are not losses: nothing is started again.
            cluster.scale(1)
            client.wait_for_workers(1, timeout=30)
            time.sleep(4)
            assert cluster.keeper.replaced == 1 and len(cluster.workers) == 1
    finally:
        started.close()


# --- through the CLI -----------------------------------------------------------------


def test_a_killed_worker_process_does_not_fail_the_flow_and_the_cluster_gets_its_size_back(project_factory, tmp_path):
    project = project_factory(LOST_ROLES_FLOW, _toml())
    marks = tmp_path / "marks"
    marks.mkdir()
    marker = "lost-worker-" + os.urandom(4).hex()
    process = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--output", "json", "--param", "nap=1.5", "--param", f"marks={marks}",
         "--param", "size=2"],
        env=marked_env(marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(marks.iterdir()):
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.1)
        victim = int(next(marks.iterdir()).name.split("-")[0])
        os.kill(victim, signal.SIGKILL)  # mid-task: its task runs again elsewhere
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    from tests.run_support import Completed

    outcome = Completed(process.returncode, out, err, marker).json
    assert outcome["result"] == {"total": TOTAL, "workers": 2, "lifetime": [60, None]}
    pids = {int(name.split("-")[0]) for name in os.listdir(marks)}
    assert victim in pids and len(pids) >= 2, pids
    assert_nothing_left(marker, outcome["scheduler_address"], outcome["dashboard_link"])


def test_a_runner_killed_with_sigkill_leaves_nothing_running(project_factory, tmp_path):
    project = project_factory(LOST_ROLES_FLOW, _toml())
    marks, scratch_root = tmp_path / "marks", tmp_path / "tmp"
    marks.mkdir()
    scratch_root.mkdir()
    marker = "killed-runner-" + os.urandom(4).hex()
    process = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--param", "nap=60", "--param", f"marks={marks}"],
        env={**marked_env(marker), "TMPDIR": str(scratch_root)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while len(list(marks.iterdir())) < 2:
            assert process.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.1)
        [announced] = [line for line in lines if "scheduler at tls://" in line]
        address = announced.split("scheduler at ", 1)[1].split(",", 1)[0]
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Scheduler, workers and fork server: all gone, the scheduler's port closed.
    started = time.monotonic()
    assert_nothing_left(marker, address)
    assert time.monotonic() - started < 15
    # Nor any folder of the run: the API server and the scheduler removed the run's.
    assert list(scratch_root.glob("flowrig-*")) == []


def test_a_flow_that_works_on_the_runner_longer_than_the_no_client_timeout_still_completes(project_factory):
    # The scheduler would stop 1 s after its last client went (it looks every 0.25 s);
    # the runner spends 4 s on its own between two submissions, with nothing in processing.
    project = project_factory(LOST_ROLES_FLOW, _toml("no_client_timeout = 1\n"))
    done = run_cli("run", str(project), "--output", "json", "--param", "pause=4", "--param", "nap=0")
    assert done.returncode == 0, done.stderr[-3000:]
    # The scheduler had the project's no-client timeout, and no idle timeout at all.
    assert done.json["result"] == {"total": TOTAL, "workers": 2, "lifetime": [1, None]}
    assert_nothing_left(done.marker, done.json["scheduler_address"])


# --- the whole-run timeout -------------------------------------------------------------


@pytest.mark.parametrize("where", ["option", "toml"])
def test_a_run_past_its_timeout_ends_with_124_in_one_line_and_leaves_nothing(project_factory, where):
    toml = _toml() + ("\n[run]\ntimeout = 12\n" if where == "toml" else "")
    project = project_factory(LOST_ROLES_FLOW, toml)
    args = ["--timeout", "12"] if where == "option" else []
    started = time.monotonic()
    done = run_cli("run", str(project), "--param", "nap=120", *args)
    elapsed = time.monotonic() - started
    assert done.returncode == 124, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("flowrig: error:")]
    assert errors == [
        "flowrig: error: the run went on for longer than its timeout of 12 s and was ended; everything it "
        "started is torn down (raise [run] timeout in flowrig.toml or --timeout)"
    ], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert 12 <= elapsed < 60, elapsed
    assert_nothing_left(done.marker)


def test_a_bad_timeout_is_bad_input(project_factory):
    project = project_factory(LOST_ROLES_FLOW, _toml("no_client_timeout = 0\n"))
    done = run_cli("run", str(project))
    assert done.returncode == 2
    assert "'cluster.no_client_timeout' must be a number of seconds greater than 0, got 0" in done.stderr
    for bad in ("0", "inf"):
        done = run_cli("run", str(project), "--timeout", bad)
        assert done.returncode == 2, done.stderr
        assert f"--timeout must be a finite number of seconds greater than 0, got {bad}" in done.stderr


@pytest.mark.parametrize("value", ['"soon"', "inf"])
def test_a_timeout_in_the_project_file_must_be_finite_seconds(project_factory, value):
    project = project_factory(LOST_ROLES_FLOW, _toml() + f"\n[run]\ntimeout = {value}\n")
    done = run_cli("run", str(Path(project)))
    assert done.returncode == 2
    shown = "'soon'" if value.startswith('"') else "inf"
    assert f"flowrig.toml: 'run.timeout' must be a finite number of seconds, got {shown}" in done.stderr


def test_a_timeout_while_the_local_cluster_starts_ends_the_run_at_once_without_a_traceback(project_factory, tmp_path):
    """Workers that take minutes to start (a preload that sleeps): the run's timeout
    passes during the cluster's start, which is given up; the command exits right after
    its line, and nothing of the run is left."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "slow_worker_start.py").write_text("import time\n\ndef dask_setup(worker):\n    time.sleep(300)\n")
    project = project_factory(LOST_ROLES_FLOW, _toml())
    marker = "start-timeout-" + os.urandom(4).hex()
    env = marked_env(marker)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(slow), env.get("PYTHONPATH")])),
               DASK_DISTRIBUTED__WORKER__PRELOAD='["slow_worker_start"]')
    started = time.monotonic()
    process = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--timeout", "15", "--output", "json"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: lines.extend((time.monotonic(), line) for line in process.stderr), daemon=True
    )
    reader.start()
    try:
        out = process.stdout.read()
        process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    ended = time.monotonic()
    reader.join(10)
    stderr = "".join(line for _, line in lines)
    assert process.returncode == 124, stderr[-3000:]
    [(said, _)] = [(at, line) for at, line in lines if line.startswith("flowrig: error: the run went on for longer")]
    assert ended - said < 3, f"exited {ended - said:.1f} s after its line"
    assert ended - started < 15 + 10, ended - started
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-3000:]
    outcome = Completed(process.returncode, out, stderr, marker).json
    assert (outcome["state"], outcome["exit_code"]) == ("TimedOut", 124)
    # It was starting its cluster: that phase ran until the end, and the flow never began.
    assert outcome["timings"]["cluster_start"] > 0 and outcome["timings"]["flow"] is None, outcome["timings"]
    assert_nothing_left(marker)


def test_a_task_run_again_after_its_worker_was_lost_counts_once(project_factory, tmp_path):
    """A worker killed after some of its tasks finished: the results it held are
    computed again elsewhere, and each task run still counts once."""
    project = project_factory(LOST_ROLES_FLOW, _toml())
    marks = tmp_path / "marks"
    marks.mkdir()
    marker = "rerun-" + os.urandom(4).hex()
    process = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--output", "json", "--param", "nap=1", "--param", f"marks={marks}"],
        env=marked_env(marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            by_pid: dict[int, int] = {}
            for name in os.listdir(marks):
                pid = int(name.split("-")[0])
                by_pid[pid] = by_pid.get(pid, 0) + 1
            # Marks are made as tasks start: a third start means two finished there.
            busy = [pid for pid, count in by_pid.items() if count >= 3]
            if busy:
                break
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, by_pid
            time.sleep(0.05)
        os.kill(busy[0], signal.SIGKILL)
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    outcome = Completed(process.returncode, out, err, marker).json
    assert outcome["result"]["total"] == TOTAL
    summaries = [line for line in err.splitlines() if ": tasks " in line and " done, " in line]
    assert summaries and summaries[-1].endswith(": tasks 11/11 done, 0 failed"), summaries
    starts = len(os.listdir(marks))
    assert starts > 10, f"no task ran again ({starts} starts): the test proved nothing"


def test_a_local_run_killed_with_sigkill_leaves_folders_that_leftovers_removes_never_a_live_runs(
    project_factory, tmp_path
):
    """The whole run killed at once (every process of it: the runner, its API server, its
    fork server, scheduler and workers, which have sessions of their own), so nothing of
    it can clean up: its folders stay, and `flowrig local leftovers --remove` removes
    them; while a run lives, it touches none of its folders."""
    project = project_factory(LOST_ROLES_FLOW, _toml())
    marks, scratch_root = tmp_path / "marks", tmp_path / "tmp"
    marks.mkdir()
    scratch_root.mkdir()
    marker = "killed-folders-" + os.urandom(4).hex()
    env = {**marked_env(marker), "TMPDIR": str(scratch_root)}
    process = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--param", "nap=60", "--param", f"marks={marks}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(marks.iterdir())) < 2:
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        folders = sorted(path.name.rsplit("-", 1)[0] for path in scratch_root.glob("flowrig-*"))
        assert folders == ["flowrig-prefect", "flowrig-scratch"], folders
        live = subprocess.run([*FLOWRIG, "local", "leftovers", "--remove", "--output", "json"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert (live.returncode, json.loads(live.stdout)) == (0, []), live.stderr
        assert len(list(scratch_root.glob("flowrig-*"))) == 2  # the live run's, untouched
        # Stopped first, then killed: none of them sees another go and cleans up.
        every = [process.pid, *(p.pid for p in processes_with_marker(marker) if p.pid != process.pid)]
        for pid in every:
            os.kill(pid, signal.SIGSTOP)
        for pid in every:
            os.kill(pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert_nothing_left(marker)
    left = subprocess.run([*FLOWRIG, "local", "leftovers", "--output", "json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert left.returncode == 0, left.stderr
    listed = json.loads(left.stdout)
    assert sorted(item["kind"] for item in listed) == ["prefect", "scratch"], listed
    assert len({item["run_id"] for item in listed}) == 1 and listed[0]["run_id"]
    assert any(item["kind"] == "prefect" and item["size"] > 0 for item in listed)  # the run's database
    removed = subprocess.run([*FLOWRIG, "local", "leftovers", "--remove"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert removed.returncode == 0, removed.stderr
    assert removed.stderr.count("removed ") == 2, removed.stderr
    assert list(scratch_root.glob("flowrig-*")) == []


#: A task that holds more memory than its worker may use.
MEMORY_FLOW = """
    from prefect import flow, task

    @task
    def hog(mb: int) -> int:
        block = bytearray(mb * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        import time
        time.sleep(10)
        return len(block)

    @flow
    def main(mb: int = 600) -> int:
        return hog.submit(mb).result()
"""


def test_a_local_worker_killed_for_its_memory_says_memory(project_factory):
    project = project_factory(
        MEMORY_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 1\n[cluster.options]\nmemory_limit = "300MB"\n'
    )
    done = run_cli("run", str(project), "--output", "json", "--timeout", "150")
    assert done.returncode == 1, done.stderr[-3000:]
    outcome = done.json
    assert outcome["state"] == "Failed"
    assert "restarted for running out of memory" in outcome["error"] and "KilledWorker" in outcome["error"]
    assert done.stderr.strip().splitlines()[-1] == f"flowrig: error: {outcome['error']}"
    assert "ran out of memory at" in done.stderr  # said when it happened, too
    assert_nothing_left(done.marker, outcome["scheduler_address"])
