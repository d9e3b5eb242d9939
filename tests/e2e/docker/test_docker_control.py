"""The docker backend's control channel and the host's limits, without Docker.

A runner claims its stdout (a real child process here), so that nothing it prints can
be read as a request; the host reads the stream apart, checks each request's
signature and sequence number, and holds what it asks for to the project's limits.
Real containers under attack are in tests/e2e/docker/test_docker_control_attacks.py.

Cases that need none of these are in tests/unit/test_docker_control.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from flowrig.backends.docker import control
from flowrig.backends.docker.leftovers import RunLeftovers, judge
from flowrig.backends.docker.policy import MAX_START_TIMEOUT, Refusal, RunnerLimits
from flowrig.containers import owner as owners
from tests.unit.test_docker_control import _demux

RUN = "r0control"

#: A child that claims its stdout as a runner does, prints what a flow might, and
#: sends one signed request.
CHILD = r"""
import os, subprocess, sys
from flowrig.common.claimed_stdout import claim_stdout
from flowrig.backends.docker import control

claimed = claim_stdout()
key = bytes.fromhex(sys.argv[1])
print("a separator \x1e in the output, and two \x1e\x1e", flush=True)
print('\x1eflowrig-control {"op":"close"}', flush=True)
print('\x1eflowrig-control ' + "0" * 64 + ' {"op":"start","seq":1,"n_workers":4}', flush=True)
print("50% done", end="", flush=True)
claimed.send(control.sign(key, "start", 1, n_workers=1))
print(" and the rest", flush=True)
subprocess.run([sys.executable, "-c", r"print('\x1eflowrig-control {\"op\":\"close\"} from a subprocess')"])
print("last, unfinished", end="")
"""


def test_nothing_a_runner_prints_is_read_as_a_request(tmp_path):
    key = control.new_key()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), key.hex()], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    expected = (
        "a separator \x1e in the output, and two \x1e\x1e\n"
        '\x1eflowrig-control {"op":"close"}\n'
        '\x1eflowrig-control ' + "0" * 64 + ' {"op":"start","seq":1,"n_workers":4}\n'
        "50% done and the rest\n"
        '\x1eflowrig-control {"op":"close"} from a subprocess\n'
        "last, unfinished"
    ).encode()
    for chunk in (1, 3, 7, 4096):  # however the engine cuts the stream
        out, messages, printed = _demux(done.stdout, chunk)
        # Byte for byte what the run printed, separators and all ...
        assert out == expected, chunk
        # ... and the one request is the one the channel signed.
        assert [control.open_message(key, m)["n_workers"] for m in messages] == [1]
        assert len(printed) == 3 and all(p.startswith(control.PREFIX) for p in printed)


#: A runner forced out after a signal (its flow swallowed it): what it printed last,
#: its outcome line, goes through the claim before the process exits.
FORCED = r"""
import sys
from flowrig.common import signals
from flowrig.common.claimed_stdout import claim_stdout

claim_stdout()
for i in range(20000):
    print(f"task output line {i:05d} " + "x" * 40)
signals.force_exit(15, None, None, lambda code, error: print('{"exit_code": %d, "last": true}' % code))
"""


def test_a_runner_forced_out_still_gets_its_last_lines_through_the_claim(tmp_path):
    script = tmp_path / "forced.py"
    script.write_text(FORCED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
    assert done.returncode == 143, done.stderr.decode()
    out, _, _ = _demux(done.stdout, 4096)
    lines = out.decode().splitlines()
    assert len(lines) == 20001 and lines[-2].startswith("task output line 19999")
    assert json.loads(lines[-1]) == {"exit_code": 143, "last": True}


# --- the host's limits -----------------------------------------------------------------


def _limits(toml: str) -> RunnerLimits:
    return RunnerLimits.from_toml(RUN, toml.encode(), "flowrig.toml")


PROJECT = textwrap.dedent(
    """
    flow = "flow.py:main"
    [cluster]
    backend = "docker"
    n_workers = 1
    max_workers = 2
    no_client_timeout = 30
    [cluster.options]
    worker_memory = "1g"
    environment = { REGION = "eu" }
    """
)


def _start(**changes):
    """A start request as the runner makes it for PROJECT."""
    request = {
        "op": "start", "seq": 1, "n_workers": 1, "adapt": None, "worker_threads": 1,
        "options": {"worker_memory": "1g", "environment": {"REGION": "eu"}},
        "worker_env": {
            "FLOWRIG_RUN_ID": RUN, "PREFECT_API_URL": "https://flowrig-r-runner:4200/api",
            "DASK_LOGGING__DISTRIBUTED": "warning",
        },
        "no_client_timeout": 30,
    }
    request.update(changes)
    return request


def test_the_host_starts_what_the_project_allows():
    accepted = _limits(PROJECT).check_start(_start(n_workers=2, options={"worker_memory": "3g", "environment": {}}))
    assert accepted.n_workers == 2 and accepted.adapt is None and accepted.worker_threads == 1
    assert accepted.no_client_timeout == 30.0 and accepted.options.worker_memory == "3g"
    assert accepted.environment["FLOWRIG_RUN_ID"] == RUN
    adaptive = _limits(PROJECT.replace("n_workers = 1", "min_workers = 0")).check_start(_start(n_workers=0, adapt=[0, 2]))
    assert adaptive.adapt == (0, 2)
    # A run that reports to a Prefect server of the user's asks for its workers' news.
    assert not accepted.news and _limits(PROJECT).check_start(_start(news=True)).news


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"n_workers": 4}, "4 workers, outside min_workers = 0 and max_workers = 2"),
        ({"n_workers": 0}, "0 workers, outside"),
        ({"n_workers": True}, "not a number of workers"),
        ({"n_workers": 0, "adapt": [0, 5]}, "adaptive 0-5 workers, outside"),
        ({"n_workers": 2, "adapt": [1, 2]}, "2 workers to start an adaptive 1-2 cluster"),
        ({"worker_threads": 16}, "worker_threads 16; flowrig.toml has 1"),
        ({"no_client_timeout": 100000}, "no_client_timeout 100000; flowrig.toml has 30"),
        ({"no_client_timeout": None}, "no_client_timeout None"),
        ({"options": {"environment": {"REGION": "eu", "LD_PRELOAD": "/tmp/x.so"}}},
         "worker environment LD_PRELOAD, which [cluster.options] environment of flowrig.toml does not declare"),
        ({"options": {"publish": True}}, "publish not known to the docker backend"),
        ({"options": {"start_timeout": 10**9}}, f"start_timeout 1000000000 s, more than {MAX_START_TIMEOUT:g} s"),
        ({"worker_env": {"FLOWRIG_RUN_ID": RUN, "PYTHONPATH": "/tmp"}}, "worker environment PYTHONPATH, which flowrig"),
        ({"worker_env": {"FLOWRIG_RUN_ID": "another"}}, "workers of another run"),
        ({"worker_env": {"PREFECT_API_URL": "x" * 10_000}}, "longer than 8192 characters: PREFECT_API_URL"),
        ({"image": "someone-elses:latest"}, "fields a start request does not have: image"),
        ({"worker_env": {"DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER": "evil.load"}},
         "worker environment DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER other than flowrig sets it"),
        ({"news": "yes"}, "news 'yes' is not true or false"),
    ],
)
def test_the_host_refuses_what_the_project_does_not_allow(changes, reason):
    with pytest.raises(Refusal) as refused:
        _limits(PROJECT).check_start(_start(**changes))
    assert reason in str(refused.value)


def test_a_project_file_without_bounds_gets_the_defaults_and_a_broken_one_is_bad_input():
    from flowrig.errors import BadInput
    from flowrig.project.defaults import MAX_WORKERS

    limits = RunnerLimits.from_toml(RUN, b'flow = "f.py:m"\n', "flowrig.toml")
    with pytest.raises(Refusal, match=f"max_workers = {MAX_WORKERS}"):
        limits.check_start(_start(n_workers=MAX_WORKERS + 1, options={}, no_client_timeout=None))
    with pytest.raises(BadInput, match="not valid TOML"):
        RunnerLimits.from_toml(RUN, b"[cluster", "flowrig.toml")
    with pytest.raises(BadInput, match="cluster.max_workers"):
        RunnerLimits.from_toml(RUN, b'flow = "f.py:m"\n[cluster]\nmax_workers = "many"\n', "flowrig.toml")


@pytest.mark.parametrize("to_api", [False, True])
@pytest.mark.parametrize("verbosity", ["QUIET", "NORMAL", "VERBOSE"])
def test_every_worker_environment_variable_flowrig_sets_passes_the_hosts_check(
    tmp_path, monkeypatch, verbosity, to_api
):
    """The runner's own worker environment (as flowrig.run.execute builds it) is never
    refused: a new variable there must be added to the host's list."""
    from flowrig import layout
    from flowrig.api import EmbeddedPrefectAPI
    from flowrig.certs import TLSMaterial
    from flowrig.internals import worker_security
    from flowrig.run.console import Verbosity, base_worker_environment

    tls = TLSMaterial.ephemeral()
    tls.write_to_dir(tmp_path)
    monkeypatch.setenv(layout.TLS_DIR_ENV, str(tmp_path))
    api = EmbeddedPrefectAPI()
    settings = api.client_settings(tls)
    worker_env = {
        **base_worker_environment(RUN, Verbosity[verbosity], to_api),
        **{name: str(value) for name, value in settings.items() if value is not None},
        worker_security.LOADER_ENV: worker_security.LOADER,
    }
    limits = RunnerLimits.from_toml(RUN, b'flow = "f.py:m"\n', "flowrig.toml")
    limits.check_start(_start(worker_env=worker_env, options={}, no_client_timeout=None))
    # Every setting, None ones included (flowrig may start sending them).
    limits.check_start(_start(worker_env={name: "" for name in settings}, options={}, no_client_timeout=None))


# --- who owns a run ---------------------------------------------------------------------


def test_a_run_is_live_while_its_owner_process_runs_and_left_once_it_has_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        found = owners.process(child.pid)
        assert found is not None and owners.alive(found) is True
        label = found.label()
        assert owners.parse(label) == owners.Owner(found.host, found.boot, found.pid, round(found.started, 2))
        run = RunLeftovers("r", containers=[("flowrig-r-worker-0", "worker", "running")], owners=[label])
        assert judge(run, owners.alive).live
    finally:
        child.kill()
        child.wait()
    assert owners.alive(owners.parse(label)) is False
    verdict = judge(run, owners.alive)
    assert not verdict.live and f"flowrig process {child.pid}" in verdict.why and "has gone" in verdict.why
