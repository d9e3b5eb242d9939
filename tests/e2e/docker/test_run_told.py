"""The Dask side of a run, told to a Prefect server of the user's (flowrig.run.reporter,
flowrig.backends.watch).

Real ``prefect server start`` on SQLite and on PostgreSQL, real runs through the CLI:
what the server holds afterwards (the flow run, its task runs, flowrig's log lines,
the timeline artifact, the events) is read back through Prefect's client and its events
API. A worker killed mid-run, a cluster that cannot start and a burst of 500 workers
are told too; the run's own embedded API is told nothing.

Cases that need none of these are in tests/unit/test_run_told.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from flowrig.backends.watch import ClusterNews
from flowrig.run import reporter as reporting
from flowrig.run import reporter_lines, reporter_sink
from tests.run_support import FLOWRIG, marked_env

#: Naps on the workers (each task leaves a file named after its process), so a worker
#: can be killed in the middle of one; the flow's result counts the tasks.
NAPPING_FLOW = """
    import os
    import time
    from prefect import flow, task, unmapped

    @task
    def step(x: int, nap: float, marks: str) -> int:
        if marks:
            open(os.path.join(marks, f"{os.getpid()}-{x}"), "w").close()
        time.sleep(nap)
        return 2 * x

    @flow
    def main(n: int = 8, nap: float = 0.0, marks: str = "") -> int:
        return sum(step.map(range(n), unmapped(nap), unmapped(marks)).result())
"""


# --- reading a server back --------------------------------------------------------------


class Server:
    """What a Prefect server holds of one flow run, read through its API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        class Context:
            def __enter__(inner):
                inner.settings = temporary_settings(updates={PREFECT_API_URL: self.url})
                inner.settings.__enter__()
                inner.client = get_client(sync_client=True).__enter__()
                return inner.client

            def __exit__(inner, *exc):
                inner.client.__exit__(*exc)
                inner.settings.__exit__(*exc)

        return Context()

    def flow_runs(self, flow_name: str) -> list:
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        with self._client() as client:
            return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))

    def flow_run(self, flow_run_id):
        with self._client() as client:
            return client.read_flow_run(flow_run_id)

    def logs(self, flow_run_id) -> list:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.client.schemas.sorting import LogSort

        with self._client() as client:
            return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    sort=LogSort.TIMESTAMP_ASC)

    def task_runs(self, flow_run_id) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self._client() as client:
            return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    def artifacts(self, flow_run_id) -> list:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with self._client() as client:
            return client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    def events(self, flow_run_id) -> list[dict]:
        """flowrig's events related to the flow run."""
        body = {"filter": {"event": {"prefix": ["flowrig."]},
                           "related": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50}
        request = urllib.request.Request(self.url + "/events/filter", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        events: list[dict] = []
        while request is not None:
            with urllib.request.urlopen(request, timeout=30) as response:
                page = json.loads(response.read())
            events += page["events"]
            request = urllib.request.Request(page["next_page"]) if page.get("next_page") else None
        return events

    def wait_for(self, what, check, within: float = 90):
        """``what()`` once ``check`` holds for it (the server records asynchronously)."""
        deadline = time.monotonic() + within
        while True:
            found = what()
            if check(found) or time.monotonic() > deadline:
                return found
            time.sleep(1)


def flowrig_lines(logs: list) -> list[str]:
    return [log.message for log in logs if log.name == "flowrig"]


def _run(project: Path, url: str, *args: str, **popen) -> subprocess.Popen:
    env = {**marked_env("told-" + os.urandom(4).hex()), "PREFECT_API_URL": url}
    return subprocess.Popen([*FLOWRIG, "run", str(project), "--output", "json", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _kill_a_worker_mid_task(process: subprocess.Popen, marks: Path) -> int:
    deadline = time.monotonic() + 180
    while not list(marks.iterdir()):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no task started"
        time.sleep(0.1)
    victim = int(next(marks.iterdir()).name.split("-")[0])
    os.kill(victim, signal.SIGKILL)
    return victim


# --- against a real server, local backend ---------------------------------------------------


def test_a_run_leaves_its_dask_side_on_the_users_server(prefect_servers, project_factory, tmp_path):
    """Flow run, task runs with their log lines, flowrig's lines (workers asked for,
    started, joined, the dashboard link, a worker killed mid-run lost with its exit
    code and restarted), the timeline artifact and the events, on SQLite and PostgreSQL."""
    project = project_factory(NAPPING_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    marks = tmp_path / "marks"
    marks.mkdir()
    process = _run(project, prefect_servers, "--param", "nap=1.5", "--param", f"marks={marks}")
    try:
        _kill_a_worker_mid_task(process, marks)
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["result"] == 2 * sum(range(8))

    server = Server(prefect_servers)
    [flow_run] = [r for r in server.flow_runs("main") if f"flowrig run {outcome['run_id']}" in
                  " ".join(flowrig_lines(server.logs(r.id)))]
    assert flow_run.state.is_completed()
    task_runs = server.wait_for(lambda: server.task_runs(flow_run.id), lambda found: len(found) >= 8)
    assert len(task_runs) == 8 and all(t.state.is_completed() for t in task_runs)

    logs = server.logs(flow_run.id)
    lines = flowrig_lines(logs)
    run_id = outcome["run_id"]
    assert f"flowrig run {run_id}: asking the local backend for 2 workers" in lines
    assert any(line.startswith(f"flowrig run {run_id}: 2 workers on local") and outcome["dashboard_link"] in line
               for line in lines), lines
    for worker in ("0", "1"):
        assert f"worker {worker} started" in lines
        assert any(line.startswith(f"worker {worker} joined at tls://127.0.0.1:") for line in lines)
    [lost] = [log for log in logs if log.name == "flowrig" and " lost: " in log.message]
    assert lost.message.endswith("lost: its process ended: killed by SIGKILL") and lost.level == 30, lost
    assert any(line.endswith("restarted by its nanny") for line in lines), lines
    # Prefect's own lines of every task run, from the workers, as Prefect has them.
    finished = [log for log in logs if log.name == "prefect.task_runs" and "Finished in state Completed" in log.message]
    assert len({log.task_run_id for log in finished}) == 8, [log.message for log in logs]
    # The console kept its own verbosity: the flow run's last line, no task run's.
    assert err.count("Finished in state Completed()") == 1, err[-3000:]

    [artifact] = server.artifacts(flow_run.id)
    assert artifact.key == "flowrig-main" and artifact.type == "markdown"
    assert "### Start-up timeline" in artifact.data and "| first worker joined |" in artifact.data
    assert "killed by SIGKILL" in artifact.data
    assert "### What the run used" in artifact.data and "no price: it ran on this machine" in artifact.data
    assert any(line.startswith(f"flowrig run {outcome['run_id']}: used scheduler 1 x ") for line in
               flowrig_lines(server.logs(flow_run.id))), flowrig_lines(server.logs(flow_run.id))

    events = server.wait_for(lambda: server.events(flow_run.id),
                             lambda found: {"flowrig.worker.lost", "flowrig.worker.joined"} <= {e["event"] for e in found})
    by_name: dict[str, list[dict]] = {}
    for event in events:
        by_name.setdefault(event["event"], []).append(event)
    assert {"flowrig.cluster.asked", "flowrig.cluster.started", "flowrig.worker.started", "flowrig.worker.joined",
            "flowrig.worker.lost", "flowrig.worker.replaced"} <= set(by_name), sorted(by_name)
    joined = by_name["flowrig.worker.joined"][0]
    assert joined["resource"]["prefect.resource.id"].startswith(f"flowrig.worker.{run_id}.")
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in joined["related"]}
    assert related["flow-run"] == f"prefect.flow-run.{flow_run.id}"
    assert related["flow"] == f"prefect.flow.{flow_run.flow_id}"
    [lost_event] = by_name["flowrig.worker.lost"]
    assert lost_event["payload"]["reason"] == "its process ended: killed by SIGKILL"
    assert by_name["flowrig.cluster.started"][0]["payload"]["dashboard_link"] == outcome["dashboard_link"]


def test_a_cluster_that_cannot_start_leaves_a_crashed_flow_run_with_the_reason(prefect_servers, project_factory):
    project = project_factory(
        NAPPING_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 1\n'
        '[cluster.options]\ndashboard_address = "256.0.0.1:1"\n', name="unstartable",
    )
    process = _run(project, prefect_servers)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 3, err[-3000:]
    error = err.strip().splitlines()[-1]
    assert error.startswith("flowrig: error: the local cluster could not start"), err[-3000:]

    server = Server(prefect_servers)
    crashed = [r for r in server.flow_runs("main") if r.state.is_crashed()]
    [flow_run] = [r for r in crashed if error.removeprefix("flowrig: error: ") in (r.state.message or "")]
    lines = flowrig_lines(server.logs(flow_run.id))
    failed = [line for line in lines if "the cluster did not start: the local cluster could not start" in line]
    assert len(failed) == 1, lines
    events = server.wait_for(lambda: server.events(flow_run.id),
                             lambda found: "flowrig.cluster.start-failed" in {e["event"] for e in found})
    [event] = [e for e in events if e["event"] == "flowrig.cluster.start-failed"]
    assert "could not start" in event["payload"]["error"]
    [artifact] = server.artifacts(flow_run.id)
    assert "| flow finished | - |" in artifact.data


def test_the_runs_own_api_is_told_nothing(project_factory):
    """No reporter thread, no watch of the cluster: the embedded path costs what it did."""
    project = project_factory("""
        import threading
        from prefect import flow

        @flow
        def main() -> list:
            return sorted(t.name for t in threading.enumerate())
    """)
    done = subprocess.run([*FLOWRIG, "run", str(project), "--output", "json"], env=marked_env("untold"),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = json.loads(done.stdout.strip().splitlines()[-1])["result"]
    assert "flowrig-reporter" not in threads, threads


def test_a_run_against_a_server_reports_from_a_thread_of_its_own(prefect_server, project_factory):
    project = project_factory("""
        import threading
        from prefect import flow

        @flow
        def main() -> list:
            return sorted(t.name for t in threading.enumerate())
    """, name="threads")
    process = _run(project, prefect_server)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    assert "flowrig-reporter" in json.loads(out.strip().splitlines()[-1])["result"]


# --- the watch on a real local cluster ----------------------------------------------------------


def _news_until(news: list, check, within: float = 60) -> list:
    deadline = time.monotonic() + within
    while not check(news):
        assert time.monotonic() < deadline, [n.message for n in news]
        time.sleep(0.1)
    return list(news)


def test_the_watch_tells_what_workers_do_and_tells_a_scale_down_from_a_loss(tls, monkeypatch):
    import dask
    from distributed import Client

    from flowrig.backends import watch
    from flowrig.backends.base import ClusterSpec
    from flowrig.backends.local import LocalBackend
    from flowrig.project.sizing import ClusterSize

    monkeypatch.setattr(watch, "REASON_WAIT", 2.0)
    news: list[ClusterNews] = []
    started = LocalBackend().start(ClusterSpec(run_id="watch1", size=ClusterSize(2), tls=tls, on_news=news.append))
    cluster = started.cluster
    try:
        _news_until(news, lambda n: sum(x.kind == "worker.joined" for x in n) == 2)
        assert sorted((n.kind, n.worker) for n in news) == [
            ("worker.joined", "0"), ("worker.joined", "1"), ("worker.started", "0"), ("worker.started", "1")]
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}), \
                Client(started.scheduler_address, security=tls.to_security()) as client:
            # A nanny that closes takes its worker with it: nothing says why, and the
            # cluster starts it again.
            cluster.sync(cluster.workers[0].close)
            seen = _news_until(news, lambda n: any(x.kind == "worker.replaced" for x in n)
                               and sum(x.kind == "worker.joined" for x in n) == 3)
            [lost] = [n for n in seen if n.kind == "worker.lost"]
            assert (lost.worker, lost.reason, lost.joined) == ("0", None, 1)
            assert lost.message == "worker 0 lost: it left the scheduler; why is not known"
            [replaced] = [n for n in seen if n.kind == "worker.replaced"]
            assert (replaced.worker, replaced.replaces, replaced.message) == ("0", "0", "worker 0 started again")
            # A scale-down is no loss.
            cluster.scale(1)
            client.wait_for_workers(1, timeout=30)
            retired = _news_until(news, lambda n: any(x.kind == "worker.retired" for x in n))
            assert [n.worker for n in retired if n.kind == "worker.retired"] == ["1"]
            time.sleep(3)
            assert [n.kind for n in news].count("worker.lost") == 1
    finally:
        started.close()
    count = len(news)
    time.sleep(1)
    assert len(news) == count  # the watch stopped with the cluster, and told nothing of its teardown


class _RestartingCluster:
    """The public face of a cluster whose nanny restarts worker 0 between two looks of
    the watch: it leaves at one address and is back at another, and the backend knows
    why only from a thread (as an engine or a cloud API answers)."""

    def __init__(self) -> None:
        from distributed.core import Status

        self.status = Status.running
        self.plan = self.requested = {0}
        self.scheduler_info = {"workers": {"tls://127.0.0.1:1": {"name": 0}}}
        self.asked: list[str] = []

    def lost_reason(self, name: str) -> str | None:
        self.asked.append(name)
        time.sleep(0.3)
        return "its process ended: killed by SIGKILL"


def test_a_worker_back_before_its_loss_was_told_is_told_lost_with_its_reason_then_restarted():
    """A nanny that restarts its worker faster than the watch looks: the loss keeps its
    reason, and the news comes in order (lost, restarted, joined)."""
    import asyncio

    from flowrig.backends.watch import ClusterWatch

    cluster = _RestartingCluster()
    news: list[ClusterNews] = []
    watch = ClusterWatch(cluster, news.append)

    async def looks() -> None:
        watch._check()
        cluster.scheduler_info = {"workers": {"tls://127.0.0.1:2": {"name": 0}}}  # restarted meanwhile
        for _ in range(20):
            watch._check()
            await asyncio.sleep(0.1)

    asyncio.run(looks())
    assert [(n.kind, n.message) for n in news] == [
        ("worker.started", "worker 0 started"),
        ("worker.joined", "worker 0 joined at tls://127.0.0.1:1"),
        ("worker.lost", "worker 0 lost: its process ended: killed by SIGKILL"),
        ("worker.replaced", "worker 0 restarted by its nanny"),
        ("worker.joined", "worker 0 joined at tls://127.0.0.1:2"),
    ]
    assert cluster.asked == ["0"]


def _hold_memory(size: int) -> int:
    data = bytearray(size)
    time.sleep(60)
    return len(data)


def test_a_local_worker_over_its_memory_limit_is_lost_for_memory(tls):
    from distributed import Client

    from flowrig.backends.base import ClusterSpec
    from flowrig.backends.local import LocalBackend
    from flowrig.project.sizing import ClusterSize

    news: list[ClusterNews] = []
    spec = ClusterSpec(run_id="watch2", size=ClusterSize(1), tls=tls, options={"memory_limit": "300MB"},
                       on_news=news.append)
    started = LocalBackend().start(spec)
    try:
        # A worker lost before the watch saw it join has nothing to be lost from.
        _news_until(news, lambda n: any(x.kind == "worker.joined" for x in n))
        with Client(started.scheduler_address, security=tls.to_security()) as client:
            # Held until the nanny's next look at it (every 100 ms): a task that frees
            # it at once may finish between two looks.
            client.submit(_hold_memory, 600_000_000, pure=False)
            seen = _news_until(news, lambda n: any(x.kind == "worker.lost" for x in n))
    finally:
        started.close()
    [lost] = [n for n in seen if n.kind == "worker.lost"]
    assert lost.reason is not None and lost.reason.startswith("out of memory: it used "), lost
    assert "of its memory limit of 286.10 MiB and its nanny ended it (killed by SIG" in lost.reason


# --- rate bound ---------------------------------------------------------------------------------


class CountingSink(reporter_sink.PrefectSink):
    """The real sink, counting what it sends (events one by one)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, int]] = []

    def send_logs(self, logs):
        self.requests.append(("logs", len(logs)))
        super().send_logs(logs)

    def send_events(self, events):
        self.requests.append(("events", len(events)))
        super().send_events(events)


def test_a_burst_of_500_workers_costs_a_bounded_number_of_requests(prefect_server):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow(name="burst")
    def burst() -> None:
        pass

    sink = CountingSink()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        told = reporting.RunReporter(sink, run_id="burst1", backend="fargate", since=time.time(), flow=burst)
        flow_run_id = told.flow_run_id()
        now = time.time()
        for i in range(500):
            told.news(ClusterNews("worker.joined", f"w{i}", f"worker w{i} joined", joined=i + 1, at=now))
        for i in range(500):
            told.news(ClusterNews("worker.lost", f"w{i}", f"worker w{i} lost: SpotInterruption", joined=499 - i,
                                  reason="SpotInterruption", at=now))
        told.close({}, None)

    logs = [r for r in sink.requests if r[0] == "logs"]
    events = [r for r in sink.requests if r[0] == "events"]
    # 1000 pieces of news: one or two sends (those the flush interval split), each of at
    # most 10 lines and one summary per kind.
    assert 1 <= len(logs) <= 2 and sum(n for _, n in logs) <= 2 * 2 * (reporter_lines.PER_KIND + 1), sink.requests
    assert sum(n for _, n in events) == sum(n for _, n in logs)
    server = Server(prefect_server)
    lines = flowrig_lines(server.logs(flow_run_id))
    assert len(lines) == sum(n for _, n in logs)
    summaries = [line for line in lines if line.startswith("... and ")]
    assert sum(int(line.split()[2]) for line in summaries) + len(lines) - len(summaries) == 1000
    found = server.wait_for(lambda: server.events(flow_run_id), lambda e: len(e) == len(lines))
    assert len(found) == len(lines)
    counted = [e for e in found if "count" in e["payload"]]
    assert sum(e["payload"]["count"] for e in counted) + len(found) - len(counted) == 1000


def test_a_server_that_refuses_lines_does_not_hold_up_the_run(prefect_server):
    """Lines the server refuses are dropped; the events and the artifact still go."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow(name="refused")
    def refused() -> None:
        pass

    class RefusingSink(CountingSink):
        def send_logs(self, logs):
            self.requests.append(("logs", len(logs)))
            raise RuntimeError("422 Unprocessable Entity")

    sink = RefusingSink()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        told = reporting.RunReporter(sink, run_id="refused1", backend="local", since=time.time(), flow=refused)
        flow_run_id = told.flow_run_id()
        told.news(ClusterNews("worker.joined", "0", "worker 0 joined", joined=1))
        started = time.monotonic()
        told.close({"flow_finished": 1.0}, None)
        assert time.monotonic() - started < reporting.CLOSE_TIMEOUT
    server = Server(prefect_server)
    assert server.wait_for(lambda: server.events(flow_run_id), lambda e: len(e) == 1)[0]["event"] == \
        "flowrig.worker.joined"
    assert len(server.artifacts(flow_run_id)) == 1


# --- pure parts -----------------------------------------------------------------------------------


def test_the_artifact_holds_the_timeline_and_the_size_over_time():
    timeline = {"scheduler_up": 0.5, "first_worker_joined": 1.25, "flow_finished": 3.0}
    sizes = [reporter_lines.Size(100.6, 1, "worker 0 joined"), reporter_lines.Size(101.0, 0, "worker 0 lost: a | b")]
    text = reporter_lines.render_artifact("r1", "docker", timeline, sizes, since=100.0)
    assert "| scheduler up | 0.50 |" in text and "| API ready | - |" in text
    assert "| 0.60 | 1 | worker 0 joined |" in text and "| 1.00 | 0 | worker 0 lost: a \\| b |" in text
    many = [reporter_lines.Size(100.0 + i / 10, i, f"worker {i} joined") for i in range(500)]
    rows = [row for row in reporter_lines.render_artifact("r1", "ecs", {}, many, since=100.0).splitlines()
            if row.startswith("| ") and row[2].isdigit()]
    assert len(rows) <= reporter_lines.SIZE_ROWS and rows[-1].startswith("| 49.90 | 499 | 10 changes")
    assert reporter_lines.artifact_key("My Flow_2") == "flowrig-my-flow-2"


def test_news_crosses_the_docker_control_channel_only_as_news():
    news = ClusterNews("worker.lost", "0", "worker 0 lost: x", joined=1, reason="x")
    assert ClusterNews.from_dict(json.loads(json.dumps(news.to_dict()))) == news
    for bad in ({**news.to_dict(), "kind": "worker.exploded"}, {**news.to_dict(), "joined": "1"},
                {**news.to_dict(), "worker": None}, {**news.to_dict(), "message": ["x"]}, "news"):
        with pytest.raises(ValueError):
            ClusterNews.from_dict(bad)
    long = ClusterNews.from_dict({**news.to_dict(), "reason": "y" * 10_000, "message": "a\nb"})
    assert len(long.reason) <= 400 and long.message == "a b"


def test_the_reporter_thread_ends_with_the_run_even_when_the_server_never_answers(monkeypatch):
    """A flow run that cannot be created: the run is told why, and nothing waits forever."""

    class Unreachable(reporter_sink.PrefectSink):
        def create_flow_run(self, flow, parameters, tags):
            raise ConnectionError("All connection attempts failed")

    told = reporting.RunReporter(Unreachable(), run_id="gone1", backend="local", since=time.time(), flow=None)
    from flowrig.errors import InfrastructureError

    with pytest.raises(InfrastructureError, match="did not create the flow run: All connection attempts failed"):
        told.flow_run_id()
    told.close({}, None)
    assert not any(t.name == "flowrig-reporter" and t.is_alive() for t in threading.enumerate())


# --- the docker backend: the runner in a container, its cluster on the host ----------------------


@pytest.mark.docker
def test_a_docker_run_leaves_its_dask_side_on_the_users_server(container_prefect_server, docker_client, seed_image,
                                                               tmp_path):
    """The host watches the cluster and hands its news to the runner container, which
    tells the server; a worker container killed mid-run is lost with its exit code."""
    from tests.docker_support import derived_image, docker_run_env
    from tests.run_support import write_project

    project = write_project(tmp_path / "napping", NAPPING_FLOW,
                            'flow = "flow.py:main"\n[cluster]\nbackend = "docker"\nn_workers = 2\n')
    run_id = "told" + os.urandom(3).hex()
    with derived_image(docker_client, seed_image, project, "flowrig-told") as image:
        env = {**docker_run_env(run_id), "PREFECT_API_URL": container_prefect_server}
        process = subprocess.Popen(
            [*FLOWRIG, "run", str(project), "--backend", "docker", "--image", image, "--output", "json",
             "--param", "nap=3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
        try:
            deadline = time.monotonic() + 300
            while not any("Beginning flow run" in line for line in lines):
                assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
                time.sleep(0.25)
            time.sleep(4)  # both workers are in the middle of a task
            docker_client.containers.get(f"flowrig-{run_id}-worker-0").kill()
            out, _ = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    err = "".join(lines)
    assert process.returncode == 0, err[-3000:]
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["result"] == 2 * sum(range(8))

    server = Server(container_prefect_server)
    [flow_run] = [r for r in server.flow_runs("main") if f"flowrig run {run_id}" in
                  " ".join(flowrig_lines(server.logs(r.id)))]
    assert flow_run.state.is_completed()
    task_runs = server.wait_for(lambda: server.task_runs(flow_run.id), lambda found: len(found) >= 8)
    assert len(task_runs) == 8
    logs = server.logs(flow_run.id)
    told = flowrig_lines(logs)
    assert f"flowrig run {run_id}: asking the docker backend for 2 workers" in told
    assert any(f"flowrig run {run_id}: 2 workers on docker" in line and "dashboard at http://127.0.0.1:" in line
               for line in told), told
    assert {"worker 0 started", "worker 1 started"} <= set(told)
    assert "worker 0 lost: its container ended: killed by SIGKILL (exit code 137)" in told, told
    assert "worker 0 started again" in told, told  # by the cluster's keeper, after lost-worker-timeout
    # Every task run's own lines, the last ones too: the workers send theirs before
    # their containers go.
    finished = [log for log in logs if log.name == "prefect.task_runs" and "Finished in state Completed" in log.message]
    assert len({log.task_run_id for log in finished}) == 8, [log.message for log in logs]
    [artifact] = server.artifacts(flow_run.id)
    assert f"flowrig run {run_id} on docker" in artifact.data and "killed by SIGKILL" in artifact.data
    # What the run used counts the killed worker's container and the one started in its
    # place: in the outcome, in a line to the server, and in the artifact.
    usage = outcome["usage"]["roles"]
    assert {key: role["count"] for key, role in usage.items()} == {"runner": 1, "scheduler": 1, "worker": 3}, usage
    assert any(line.startswith(f"flowrig run {run_id}: used runner 1 x ") and ", worker 3 x " in line
               for line in told), told
    assert "### What the run used" in artifact.data and "| worker | 3 |" in artifact.data, artifact.data
    events = server.wait_for(lambda: server.events(flow_run.id),
                             lambda found: {"flowrig.worker.lost", "flowrig.worker.joined"} <= {e["event"] for e in found})
    [lost] = [e for e in events if e["event"] == "flowrig.worker.lost"]
    assert lost["resource"]["prefect.resource.id"] == f"flowrig.worker.{run_id}.0"
    assert lost["payload"]["reason"] == "its container ended: killed by SIGKILL (exit code 137)"


# --- the cloud pool: a task that stops after its worker joined ------------------------------------


class InProcessLauncher:
    """A Launcher whose "tasks" are real Dask workers in this process, on a loop of
    their own, joining a real scheduler over mutual TLS; a task can be interrupted the
    way Fargate Spot does it (its worker goes, the task is STOPPED with that reason)."""

    kind = "task"

    def __init__(self, security) -> None:
        from distributed.utils import LoopRunner

        self.security = security
        self.loop = LoopRunner(asynchronous=False)
        self.loop.start()
        self.workers: dict[str, object] = {}
        self.stopped: dict[str, str] = {}
        self.count = 0

    def start_scheduler(self) -> str:
        raise AssertionError("the pool is given a running scheduler")

    def scheduler_endpoint(self, handle):
        raise AssertionError("the pool is given a running scheduler")

    def start_workers(self, scheduler_address: str, count: int, replacing=()):
        from distributed import Worker
        from distributed.utils import sync

        from flowrig.backends.pool import WorkerStart

        started = {}
        for _ in range(count):
            name = f"task-{self.count}"
            self.count += 1

            async def start(name=name):
                return await Worker(scheduler_address, name=name, nthreads=1, security=self.security,
                                    host="127.0.0.1")

            self.workers[name] = sync(self.loop.loop, start)
            started[name] = name
        return WorkerStart(started)

    def observe(self, handles):
        from flowrig.backends.pool import Observed

        return {h: Observed("stopped", self.stopped[h]) if h in self.stopped else Observed("running")
                for h in handles}

    def interrupt(self, name: str, reason: str) -> None:
        from distributed.utils import sync

        sync(self.loop.loop, self.workers.pop(name).close)
        self.stopped[name] = reason

    def stop(self, handles, reason: str) -> None:
        from distributed.utils import sync

        for handle in handles:
            worker = self.workers.pop(handle, None)
            if worker is not None:
                sync(self.loop.loop, worker.close)

    def close(self) -> None:
        self.loop.stop()


def test_a_cloud_task_interrupted_after_its_worker_joined_is_told_lost_with_its_stop_reason(tls):
    from flowrig.backends.base import ClusterSpec
    from flowrig.backends.pool import start_pool
    from flowrig.project.sizing import ClusterSize
    from tests.tls_support import local_scheduler

    news: list[ClusterNews] = []
    launcher = InProcessLauncher(tls.to_security())
    spec = ClusterSpec(run_id="spot1", size=ClusterSize(2), tls=tls, on_news=news.append)
    reason = "SpotInterruption; Your Spot Task was interrupted."
    with local_scheduler(tls, workers=0) as scheduler:
        cluster = start_pool(launcher, spec, backend="fargate", timeout=60, deadline=time.monotonic() + 60,
                             scheduler_address=scheduler.scheduler_address)
        try:
            _news_until(news, lambda n: sum(x.kind == "worker.joined" for x in n) == 2)
            launcher.interrupt("task-0", reason)
            seen = _news_until(news, lambda n: sum(x.kind == "worker.joined" for x in n) == 3)
        finally:
            cluster.close()
    told = [(n.kind, n.worker) for n in seen]
    assert told[:4] == [("worker.started", "task-0"), ("worker.started", "task-1"),
                        ("worker.joined", "task-0"), ("worker.joined", "task-1")], told
    # Lost with the task's stop reason, seen by the pool's next poll; then its replacement.
    assert told[4:] == [("worker.lost", "task-0"), ("worker.replaced", "task-2"), ("worker.joined", "task-2")], told
    lost, replaced = seen[4], seen[5]
    assert lost.reason == reason and lost.message == f"worker task-0 lost: {reason}"
    assert replaced.replaces == "task-0" and replaced.message == "worker task-2 started in place of worker task-0"


# --- task runs' lines: the server gets Prefect's, the console its own ------------------------------


def test_a_users_server_gets_task_lines_at_info_whatever_the_console_shows():
    import logging

    from flowrig.run.console import Verbosity, worker_environment
    from flowrig.run.tasklog import NEVER, TaskLines

    for verbosity in (0, 1, 2):
        told, console = TaskLines.for_verbosity(verbosity, to_api=True), TaskLines.for_verbosity(verbosity)
        assert told.logger_level == logging.INFO
        # What the console shows is the same rule.
        assert (told.level, told.prints, told.prefect_level) == (console.level, console.prints, console.prefect_level)
        assert console.api_level == NEVER
    # The run's own API: as before (quiet keeps the workers' task-run logger at ERROR).
    assert TaskLines.for_verbosity(0).logger_level == logging.ERROR
    level = "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"
    assert worker_environment(Verbosity.QUIET)[level] == "CRITICAL"
    assert worker_environment(Verbosity.QUIET, to_api=True)[level] == "INFO"
    assert worker_environment(Verbosity.VERBOSE, to_api=True)[level] == "INFO"
