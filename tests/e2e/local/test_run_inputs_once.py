"""A run's inputs are each resolved once: one real ``flowrig run`` on the local backend,
in a process of its own whose resolving functions count their calls.

The driver wraps, before the CLI starts, the one function behind each input (the
project's read, the backend's resolution, the certificates' decision, the Prefect
API's start, the flow's load, Prefect's engine import, the parameters' gathering and
validation) and writes the counts of the runner's own process when it exits.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid

from tests.run_support import FLOWRIG, SEED, TEN, assert_nothing_left, marked_env

DRIVER = textwrap.dedent(
    '''
    import atexit, json, os, runpy, sys

    counts = {}
    main_pid = os.getpid()


    def counted(key, function):
        def wrapper(*args, **kwargs):
            if os.getpid() == main_pid:
                counts[key] = counts.get(key, 0) + 1
            return function(*args, **kwargs)
        return wrapper


    def patch(owner, name, key):
        original = getattr(owner, name)
        setattr(owner, name, counted(key, original))


    import flowrig.api
    import flowrig.backends
    import flowrig.certs.material
    import flowrig.internals.prefect_engine
    import flowrig.project
    import flowrig.project.flow_loader
    import flowrig.project.load
    import flowrig.project.parameters

    loader = counted("load_project", flowrig.project.load.load_project)
    flowrig.project.load.load_project = flowrig.project.load_project = loader
    patch(flowrig.backends, "get_backend", "get_backend")
    TLS = flowrig.certs.material.TLSMaterial
    TLS.for_run = classmethod(counted("for_run", TLS.for_run.__func__))
    TLS.from_dir = classmethod(counted("from_dir", TLS.from_dir.__func__))
    # Every start of the API process goes through spawn(), the early one of a local run too.
    patch(flowrig.api.EmbeddedPrefectAPI, "spawn", "api_start")
    patch(flowrig.internals.prefect_engine, "import_flow_engine", "import_flow_engine")
    patch(flowrig.project.flow_loader, "load_flow", "load_flow")
    patch(flowrig.project.parameters, "gather", "gather")
    patch(flowrig.project.parameters, "validate", "validate")


    @atexit.register
    def write():
        if os.getpid() == main_pid:
            with open(os.environ["COUNTS_FILE"], "w") as out:
                json.dump(counts, out)


    if sys.argv[1] == "--script":
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        sys.argv = ["flowrig", *sys.argv[1:]]
        runpy.run_module("flowrig.cli", run_name="__main__")
    '''
)


def _counted_run(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, int], str]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    counts_file = tmp_path / "counts.json"
    marker = uuid.uuid4().hex
    env = {**marked_env(marker), "COUNTS_FILE": str(counts_file)}
    done = subprocess.run(
        [FLOWRIG[0], str(driver), *args], env=env, capture_output=True, text=True, timeout=240
    )
    counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    return done, counts, marker


def test_one_flowrig_run_resolves_each_input_once(tmp_path):
    done, counts, marker = _counted_run(
        tmp_path, "run", str(SEED), "--param", TEN, "--backend", "local", "--output", "json"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "Completed"
    assert counts == {
        "load_project": 1,
        "get_backend": 1,
        "for_run": 1,
        "api_start": 1,
        "load_flow": 1,
        "import_flow_engine": 1,
        "gather": 1,
        "validate": 1,
    }, counts
    assert_nothing_left(marker, outcome["scheduler_address"])


def test_given_certificates_are_read_once(tmp_path):
    from flowrig.certs import generate

    generate(tmp_path / "certs")
    done, counts, marker = _counted_run(
        tmp_path, "run", str(SEED), "--param", TEN, "--backend", "local", "--certs", str(tmp_path / "certs"),
        "--output", "json",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert counts.get("from_dir") == 1 and counts.get("for_run") == 1, counts
    assert_nothing_left(marker, json.loads(done.stdout.strip().splitlines()[-1])["scheduler_address"])


PREFECT1_SCRIPT = textwrap.dedent(
    '''
    import json, sys
    from prefect import flow, task
    from flowrig import DaskCloudProviderEnvironment


    @task
    def square(x):
        return x * x


    @flow(name="once")
    def squares(x):
        return sum(square.map(x).result())


    if __name__ == "__main__":
        outcome = DaskCloudProviderEnvironment("local", n_workers=1).run(squares, {"x": [1, 2, 3]})
        print(json.dumps({"state": outcome.state, "result": outcome.result}))
    '''
)


def test_the_prefect1_front_end_resolves_each_input_once(tmp_path):
    script = tmp_path / "prefect1_run.py"
    script.write_text(PREFECT1_SCRIPT)
    done, counts, marker = _counted_run(tmp_path, "--script", str(script))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"state": "Completed", "result": 14}
    assert counts == {
        "get_backend": 1, "for_run": 1, "api_start": 1, "import_flow_engine": 1, "validate": 1,
    }, counts
    assert_nothing_left(marker)


def test_a_prepared_run_cannot_be_changed_after_it_was_resolved():
    import dataclasses

    import pytest

    from flowrig.run.prepared import PreparedRun

    assert dataclasses.fields(PreparedRun)  # a dataclass
    run = PreparedRun(flow=None, backend=None, tls=None, api=None, api_url=None)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.backend = "other"  # type: ignore[misc]
