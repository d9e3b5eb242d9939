"""``flowrig run`` on the local backend, end to end: real LocalCluster, real mutual
TLS, real Prefect with the run's embedded API. Each run goes through the CLI in a
subprocess, and afterwards nothing of it may be left running or listening."""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import time

import pytest

from tests.run_support import (
    FLOWRIG,
    NAP_FLOW,
    SEED,
    TEN,
    assert_nothing_left,
    marked_env,
    run_cli,
)
from tests.tls_support import foreign_material

FAILING_FLOW = """
    from prefect import flow, task

    @task
    def explode(x: int) -> int:
        raise ValueError(f"cannot handle {x}")

    @flow
    def main(x: int = 1) -> int:
        return explode.submit(x).result()
"""


def test_seed_flow_gives_90_over_tls_and_leaves_nothing():
    done = run_cli("run", str(SEED), "--param", TEN, "--output", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.json
    assert out["state"] == "Completed"
    assert out["result"] == 90
    assert out["scheduler_address"].startswith("tls://")
    assert out["backend"] == "local"
    # The seed's hook asks for one worker per five items.
    assert out["n_workers"] == 2
    assert set(out["timings"]) >= {"cluster_start", "flow", "teardown", "total"}
    # The scheduler line is logged once, with the address and the dashboard.
    announced = [l for l in done.stderr.splitlines() if "scheduler at tls://" in l]
    assert len(announced) == 1 and out["scheduler_address"] in announced[0]
    assert_nothing_left(done.marker, out["scheduler_address"], out["dashboard_link"])


SETTINGS_FLOW = """
    import os
    from prefect import flow, task
    from prefect.settings import get_current_settings, temporary_settings

    @task
    def seen() -> dict:
        settings = get_current_settings()
        return {
            "pid": os.getpid(),
            "api": settings.api.url,
            "logs_to_api": settings.logging.to_api.enabled,
            "heartbeat": settings.flows.heartbeat_frequency,
        }

    @flow
    def main() -> dict:
        outer = seen.submit().result()
        with temporary_settings(updates={"flows.heartbeat_frequency": 60}):
            inner = seen.submit().result()
        return {"runner": os.getpid(), "outer": outer, "inner": inner}
"""


def test_tasks_on_workers_run_with_the_runners_settings(project_factory):
    """The run's settings reach the workers' tasks, including one that no environment
    carries (the heartbeat is off), and a ``temporary_settings`` block in the flow
    still reaches the tasks submitted inside it."""
    done = run_cli("run", str(project_factory(SETTINGS_FLOW)), "--output", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = done.json["result"]
    outer, inner = result["outer"], result["inner"]
    assert outer["pid"] != result["runner"], "the task must run in a worker process"
    assert outer["api"].startswith("https://127.0.0.1:") and outer["api"].endswith("/api")  # served over HTTPS
    assert outer["logs_to_api"] is False
    assert outer["heartbeat"] is None
    assert inner["heartbeat"] == 60 and inner["api"] == outer["api"]
    assert_nothing_left(done.marker)


CHUNKED_FLOW = """
    from prefect import flow, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def main(n: int = 64) -> dict:
        futures = double.map(range(n))
        return {"sum": sum(futures.result()), "dask_tasks": len({f.wrapped_future.key for f in futures})}
"""


@pytest.mark.parametrize(("setting", "dask_tasks"), [("", 8), ("map_chunk = 1", 64), ("map_chunk = 4", 16)])
def test_map_chunk_of_the_project_reaches_the_runs_task_runner(project_factory, setting, dask_tasks):
    """One worker of one thread: a map of 64 runs 8 task runs to a Dask task by default
    (8 Dask tasks per thread at least), ``map_chunk`` caps it, and 1 turns it off."""
    toml = f'flow = "flow.py:main"\n[cluster]\n{setting}\n'
    done = run_cli("run", str(project_factory(CHUNKED_FLOW, toml)), "--output", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.json["result"] == {"sum": 64 * 63, "dask_tasks": dask_tasks}
    assert_nothing_left(done.marker)


def test_failing_task_exits_1_and_leaves_nothing(project_factory):
    project = project_factory(FAILING_FLOW)
    done = run_cli("run", str(project), "--output", "json")
    assert done.returncode == 1, done.stderr[-2000:]
    out = done.json
    assert out["state"] == "Failed"
    assert "cannot handle 1" in out["message"]
    assert_nothing_left(done.marker, out["scheduler_address"], out["dashboard_link"])


def test_failing_sizing_hook_exits_2_and_leaves_nothing(project_factory):
    project = project_factory(
        """
        from prefect import flow

        @flow
        def main(x: int = 1) -> int:
            return x

        def size(parameters, provider_kwargs):
            raise RuntimeError("no capacity today")
        """,
        'flow = "flow.py:main"\n[cluster]\nsizing = "flow.py:size"\n',
    )
    done = run_cli("run", str(project))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "flowrig: error: sizing hook flow.py:size failed: RuntimeError: no capacity today"
    ]
    assert_nothing_left(done.marker)


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(seen[-30:])}")


def test_running_scheduler_refuses_strangers_and_sigterm_tears_down(project_factory, tmp_path):
    """Mid-run: a plain tcp:// client and a client holding a certificate from another
    CA cannot join the run's scheduler, a client with the run's certificates can; then
    SIGTERM to ``flowrig run`` tears everything down."""
    from distributed import Client

    from flowrig.certs import TLSMaterial, generate

    generate(tmp_path / "certs")
    project = project_factory(NAP_FLOW)
    marker = "sigterm-" + tmp_path.name
    proc = subprocess.Popen(
        [*FLOWRIG, "run", str(project), "--certs", str(tmp_path / "certs"), "--output", "json"],
        env=marked_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match = _wait_for_line(proc, r"scheduler at (tls://[\d.]+:\d+), dashboard at (\S+)", 180)
        address, dashboard = match.group(1), match.group(2)
        # Let the flow's task start, so SIGTERM lands mid-run rather than at start-up.
        _wait_for_line(proc, r"Beginning flow run", 120)

        plain = "tcp://" + address.removeprefix("tls://")
        with pytest.raises((OSError, TimeoutError)):
            Client(plain, timeout="3s")
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=foreign_material().to_security(), timeout="3s")
        own = TLSMaterial.from_dir(tmp_path / "certs").to_security()
        with Client(address, security=own, timeout="10s") as client:
            assert client.scheduler_info()["workers"], "the run's own certificate must be accepted"

        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_nothing_left(marker, address, dashboard)


def _expired_certs(directory):
    from flowrig.certs import CertificateAuthority

    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    ca = CertificateAuthority.create(now=past)
    ca.issue_leaf(days=2, now=past).write_to_dir(directory)
    return directory


def _mismatched_certs(directory):
    from flowrig.certs import CertificateAuthority, TLSMaterial

    ca = CertificateAuthority.create()
    one, other = ca.issue_leaf(), ca.issue_leaf()
    TLSMaterial(one.ca_pem, one.cert_pem, other.key_pem).write_to_dir(directory)
    return directory


HOOK_PROJECT = """
    from prefect import flow

    @flow
    def main(x: list[int]) -> int:
        return sum(x)

    def size(parameters, provider_kwargs):
        provider_kwargs["n_workers"] = {workers}
"""


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("unknown parameter", "unknown parameter 'y'"),
        ("wrong type", "invalid parameter"),
        ("malformed json", "malformed JSON"),
        ("missing flowrig.toml", "no flowrig.toml"),
        ("missing flow file", "does not exist"),
        ("not a flow", "is not a Prefect flow"),
        ("expired certificate", "expired"),
        ("mismatched key", "does not belong to the certificate"),
        ("hook raises", "failed: ZeroDivisionError"),
        ("hook asks for -1", "asked for -1 workers"),
    ],
)
def test_bad_input_exits_2_with_one_line(case, expect, project_factory, tmp_path):
    args: list[str] = []
    project = project_factory(HOOK_PROJECT.format(workers=1), 'flow = "flow.py:main"\n[cluster]\nsizing = "flow.py:size"\n')
    params = ["--param", "x=[1,2]"]
    if case == "unknown parameter":
        params += ["--param", "y=3"]
    elif case == "wrong type":
        params = ["--param", 'x=["a","b"]']
    elif case == "malformed json":
        params = ["--param", "x=[1,2"]
    elif case == "missing flowrig.toml":
        (project / "flowrig.toml").unlink()
    elif case == "missing flow file":
        (project / "flowrig.toml").write_text('flow = "nowhere.py:main"\n')
    elif case == "not a flow":
        (project / "flowrig.toml").write_text('flow = "flow.py:size"\n')
    elif case == "expired certificate":
        args = ["--certs", str(_expired_certs(tmp_path / "certs"))]
    elif case == "mismatched key":
        args = ["--certs", str(_mismatched_certs(tmp_path / "certs"))]
    elif case == "hook raises":
        (project / "flow.py").write_text((project / "flow.py").read_text().replace('provider_kwargs["n_workers"] = 1', "1 / 0"))
    elif case == "hook asks for -1":
        project = project_factory(HOOK_PROJECT.format(workers=-1), 'flow = "flow.py:main"\n[cluster]\nsizing = "flow.py:size"\n', name="neg")
    done = run_cli("run", str(project), *params, *args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("flowrig: error: ") and expect in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    assert_nothing_left(done.marker)
