"""flowrig's task runner keeps Prefect's semantics: each task is a Prefect task run with
its states, retries, ``wait_for``, futures passed between tasks, caching, async tasks,
subflows and ``temporary_settings``; with a real Prefect server every task run is
recorded there; and nothing is tokenised or shipped per task that is the same for all.

The flows run through ``flowrig run`` (a real TLS LocalCluster, the real runner), or,
for the counts that need the runner's process, through :func:`flowrig.execute`.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

from tests.run_support import FLOWRIG, marked_env, run_cli

SEMANTICS_FLOW = """
    import asyncio, os
    from pathlib import Path
    from prefect import flow, task, unmapped
    from prefect.settings import PREFECT_TASK_DEFAULT_RETRIES, temporary_settings

    @task(retries=1, retry_delay_seconds=0)
    def flaky(marker: str) -> str:
        if not Path(marker).exists():
            Path(marker).write_text("failed once")
            raise RuntimeError("first attempt fails")
        return "second attempt"

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def add(x: int, y: int) -> int:
        return x + y

    @task
    def scaled(x: int, factor: list) -> int:
        return x * len(factor)

    @task
    async def later(x: int) -> int:
        await asyncio.sleep(0.01)
        return -x

    @task
    def retries_setting() -> int:
        return PREFECT_TASK_DEFAULT_RETRIES.value()

    @task
    def pid() -> int:
        return os.getpid()

    @flow
    def inner(x: int) -> int:
        return add(x, 1)  # a task called directly inside a subflow

    @flow
    def main(marker: str) -> dict:
        first = inc.submit(1)
        second = inc.submit(first)  # a future passed into another task
        ordered = add.submit(2, 3, wait_for=[second])
        mapped = scaled.map([1, 2, 3], factor=unmapped([0, 0]))
        with temporary_settings(updates={PREFECT_TASK_DEFAULT_RETRIES: 4}):
            inside = retries_setting.submit().result()
        return {
            "flaky": flaky.submit(marker).result(),
            "chain": second.result(),
            "ordered": ordered.result(),
            "ordered_after": ordered.state.timestamp >= second.state.timestamp,
            "mapped": mapped.result(),
            "async": later.submit(5).result(),
            "subflow": inner(10),
            "temporary_settings": inside,
            "worker_pid": pid.submit().result(),
            "runner_pid": os.getpid(),
        }
"""

FAILING_FLOW = """
    from prefect import flow, task

    @task
    def boom(x: int) -> int:
        raise ValueError(f"boom {x}")

    @flow
    def main() -> str:
        future = boom.submit(1)
        future.wait()
        return f"{future.state.type.value}: {future.state.message}"
"""


def test_prefect_semantics_survive_the_fast_path(project_factory, tmp_path):
    project = project_factory(SEMANTICS_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    done = run_cli("run", str(project), "--param", f"marker={tmp_path / 'flaky'}", "--output", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = done.json["result"]
    assert result["flaky"] == "second attempt"  # retried once, on a worker
    assert result["chain"] == 3  # inc(inc(1)): the future was resolved on the worker
    assert result["ordered"] == 5 and result["ordered_after"]
    assert result["mapped"] == [2, 4, 6]
    assert result["async"] == -5
    assert result["subflow"] == 11
    assert result["temporary_settings"] == 4  # a settings block inside the flow reaches its tasks
    assert result["worker_pid"] != result["runner_pid"]


def test_a_failing_task_is_a_failed_state_with_its_message(project_factory):
    done = run_cli("run", str(project_factory(FAILING_FLOW)), "--output", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.json["result"].startswith("FAILED: ") and "boom 1" in done.json["result"]


CACHE_FLOW = """
    from prefect import flow, task
    from prefect.cache_policies import INPUTS

    @task(cache_policy=INPUTS, persist_result=True)
    def cached(x: int) -> int:
        return x * 10

    @flow
    def main(result_dir: str) -> list:
        first = cached.submit(7).result()
        again = cached.submit(7)
        again.wait()
        return [first, again.state.name, again.result()]
"""


def test_caching_when_asked_for(project_factory, tmp_path):
    project = project_factory(CACHE_FLOW)
    done = run_cli("run", str(project), "--param", f"result_dir={tmp_path}", "--output", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.json["result"] == [70, "Cached", 70]


RECORDED_FLOW = """
    from prefect import flow, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def main(n: int = 50) -> int:
        return sum(double.map(range(n)).result()) + double.submit(1).result()
"""


def _task_runs_of(url: str) -> int:
    request = urllib.request.Request(url + "/task_runs/count", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.read())


def test_with_a_real_prefect_server_every_task_run_is_recorded(prefect_server, project_factory):
    project = project_factory(RECORDED_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    before = _task_runs_of(prefect_server)
    env = {**marked_env("recorded"), "PREFECT_API_URL": prefect_server}
    done = subprocess.run([*FLOWRIG, "run", str(project), "--output", "json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["result"] == 2 * sum(range(50)) + 2
    # The server's task-run recorder turns the task engines' events into task runs.
    deadline = time.monotonic() + 120
    while _task_runs_of(prefect_server) - before < 51 and time.monotonic() < deadline:
        time.sleep(1)
    assert _task_runs_of(prefect_server) - before == 51
    # Prefect's own link into a server of the user's stays.
    assert f"View at {prefect_server.removesuffix('/api')}" in done.stderr


def test_nothing_is_tokenised_and_a_map_is_one_submission(tls):
    """In the runner: no task is tokenised, and a map of 200 reaches the scheduler as one
    graph (prefect-dask alone tokenises and submits each of the 200)."""
    from unittest import mock

    import distributed.client
    from distributed import LocalCluster
    from prefect import flow, task

    from flowrig.internals.task_runner import FlowrigTaskRunner

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def mapped() -> int:
        return sum(double.map(range(200)).result())

    security = tls.to_security()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", security=security,
                      host="127.0.0.1", dashboard_address=None) as cluster:
        runner = FlowrigTaskRunner(address=cluster.scheduler_address, client_kwargs={"security": security},
                                   events="drop")
        graphs = mock.patch.object(distributed.Client, "_graph_to_futures",
                                   autospec=True, side_effect=distributed.Client._graph_to_futures)
        tokenize = mock.patch.object(distributed.client, "tokenize", side_effect=distributed.client.tokenize)
        with graphs as graph_calls, tokenize as tokenize_calls, _api_free():
            assert mapped.with_options(task_runner=runner)() == 2 * sum(range(200))
    assert tokenize_calls.call_count == 0
    # The run's payload, the task object, and the map itself.
    assert graph_calls.call_count == 3
    _assert_nothing_held_for_a_stopped_api()


def _assert_nothing_held_for_a_stopped_api() -> None:
    """Prefect's log and event services of this process hold nothing more: what a flow
    left for an API that has stopped would be retried for a minute by the next drain."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        _, pending = service.drain_all(timeout=5)
        assert not pending, service.__name__


def _api_free():
    """A throwaway API URL for an in-process flow (no temporary server is started)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flowrig.api import EmbeddedPrefectAPI

    class Context:
        def __enter__(self):
            self.api = EmbeddedPrefectAPI().start()
            self.api.wait_ready()
            self.settings = temporary_settings(updates={
                PREFECT_API_URL: self.api.url,
                **{__import__("prefect.settings").settings.PREFECT_API_AUTH_STRING: self.api.auth_string},
            })
            self.settings.__enter__()
            return self

        def __exit__(self, *exc):
            from flowrig.internals.prefect_engine import drain_reporting

            # As a run does before its API stops (flowrig.run.flow_call): the flow's last
            # log lines, left for a closed port, would be retried for a minute by whatever
            # drains Prefect's services in this process next.
            drain_reporting()
            self.settings.__exit__(*exc)
            self.api.stop()

    return Context()


def test_a_worker_on_another_machine_uses_the_runs_ca_where_it_was_delivered(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, get_current_settings

    from flowrig.internals.task_worker import local_ca_settings

    delivered = tmp_path / "flowrig-tls"
    delivered.mkdir()
    (delivered / "ca.crt").write_text("the run's CA")
    monkeypatch.setenv("FLOWRIG_TLS_DIR", str(delivered))
    runner_side = tmp_path / "runner-only" / "ca.crt"
    settings = get_current_settings().copy_with_update(updates={PREFECT_API_SSL_CERT_FILE: str(runner_side)})
    assert local_ca_settings(settings).api.ssl_cert_file == str(delivered / "ca.crt")

    # A CA file that exists here (the runner's own machine) is kept.
    runner_side.parent.mkdir()
    runner_side.write_text("the run's CA")
    assert local_ca_settings(settings).api.ssl_cert_file == str(runner_side)
    # Nothing delivered here: nothing better to name.
    monkeypatch.delenv("FLOWRIG_TLS_DIR")
    missing = settings.copy_with_update(updates={PREFECT_API_SSL_CERT_FILE: str(tmp_path / "nowhere")})
    assert local_ca_settings(missing).api.ssl_cert_file == str(tmp_path / "nowhere")


def test_the_runners_goodbye_to_the_workers_never_holds_up_the_flows_end():
    """Asking the workers to forget the run waits at most FORGET_TIMEOUT: a scheduler
    whose event loop is busy (importing Prefect for a run's first tasks, a worker that
    does not answer) must not keep a flow, or a run stopped by SIGTERM, from ending."""
    import threading

    from flowrig.internals.task_runner import _forget_everywhere

    answered = threading.Event()

    class BusyCluster:
        def run(self, function, tokens, wait=True):
            answered.wait(30)

    started = time.monotonic()
    _forget_everywhere(BusyCluster(), ["a-run"], 0.5)
    assert time.monotonic() - started < 5
    answered.set()
