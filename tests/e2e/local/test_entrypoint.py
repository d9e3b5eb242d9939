"""``flowrig-entrypoint``: Dask command lines with TLS added, role dispatch, a real TLS
scheduler started in exec form, and the exit-code contract shared with ``flowrig``.

Cases that need none of these are in tests/unit/test_entrypoint.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from flowrig import layout, roles
from flowrig.certs import defaults as cert_defaults
from flowrig.entrypoint import dispatch
from flowrig.errors import BadInput
from flowrig.roles import (
    SCHEDULER_MODULE,
    WORKER_MODULE,
    command_for,
    secure_environment,
    tls_dir,
    tls_flags,
)
from tests.unit.test_entrypoint import tls_of

ENTRYPOINT = shutil.which("flowrig-entrypoint", path=str(Path(sys.executable).parent))
SCHEDULER_AT = re.compile(r"Scheduler at:\s+(tls://\S+)")


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Path:
    """A directory with ca.crt, tls.crt and tls.key made by ``flowrig certs``' generator."""
    from flowrig.certs import generate

    out = tmp_path_factory.mktemp("tls")
    generate(out)
    return out


def entrypoint_env(tls_dir_: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FLOWRIG_TLS_DIR", None)
    env.pop("FLOWRIG_DEBUG", None)
    if tls_dir_ is not None:
        env["FLOWRIG_TLS_DIR"] = str(tls_dir_)
    return env


def run_entrypoint(*args: str, tls_dir_: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    assert ENTRYPOINT, "flowrig-entrypoint is not installed next to this interpreter"
    return subprocess.run(
        [ENTRYPOINT, *args], env=entrypoint_env(tls_dir_), capture_output=True, text=True, timeout=timeout
    )


# --- command lines ----------------------------------------------------------------------


def test_worker_command_gets_tls_and_death_timeout(tls):
    assert command_for("worker", ["tls://sched:8786", "--nthreads", "2"], tls) == [
        sys.executable, "-m", WORKER_MODULE, "tls://sched:8786", "--nthreads", "2",
        *tls_of(tls),
        "--death-timeout", str(roles.WORKER_DEATH_TIMEOUT),
    ]
    # A worker has no --protocol or --idle-timeout of its own.
    command = command_for("worker", ["tls://sched:8786"], tls)
    assert "--protocol" not in command and "--idle-timeout" not in command


@pytest.mark.parametrize("missing", ["ca.crt", "tls.crt", "tls.key"])
def test_missing_tls_file_is_bad_input(tmp_path, tls, missing):
    partial = tmp_path / "partial"
    shutil.copytree(tls, partial)
    (partial / missing).unlink()
    with pytest.raises(BadInput) as info:
        command_for("scheduler", [], partial)
    assert str(partial / missing) in str(info.value) and "FLOWRIG_TLS_DIR" in str(info.value)
    with pytest.raises(BadInput):
        tls_flags(partial)


def test_tls_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOWRIG_TLS_DIR", raising=False)
    assert tls_dir() == layout.IMAGE_TLS_DIR
    monkeypatch.setenv("FLOWRIG_TLS_DIR", str(tmp_path))
    assert tls_dir() == tmp_path
    with pytest.raises(BadInput, match=re.escape(str(tmp_path / "ca.crt"))):
        command_for("worker", ["tls://s:1"])


def test_secure_environment_copies_the_process_environment(monkeypatch):
    monkeypatch.setenv("FLOWRIG_TEST_VALUE", "kept")
    monkeypatch.delenv("DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", raising=False)
    env = secure_environment()
    assert env["FLOWRIG_TEST_VALUE"] == "kept"
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION" not in os.environ


# --- dispatch (in this process only where it fails before exec'ing) -------------------------


@pytest.mark.parametrize("argv", [["scheduler"], ["dask-worker", "tls://s:1"], ["dask", "scheduler"], ["dask", "worker", "x"]])
def test_dispatch_refuses_dask_roles_without_tls(monkeypatch, tmp_path, argv):
    monkeypatch.setenv("FLOWRIG_TLS_DIR", str(tmp_path))
    with pytest.raises(BadInput, match="TLS file"):
        dispatch(argv)


# --- the installed console script -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "module"),
    [
        (["scheduler"], SCHEDULER_MODULE),
        (["dask-scheduler"], SCHEDULER_MODULE),
        (["dask", "scheduler"], SCHEDULER_MODULE),
        (["worker"], WORKER_MODULE),
        (["dask-worker"], WORKER_MODULE),
        (["dask", "worker"], WORKER_MODULE),
    ],
)
def test_spellings_exec_the_right_dask_module(tls, spelling, module):
    # --version is eager in dask's CLIs: it names the module that runs and exits at once.
    done = run_entrypoint(*spelling, "--version", tls_dir_=tls)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"python -m {module}, version {_version('distributed')}"


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def test_real_tls_scheduler_in_exec_form_stops_on_sigterm(tls):
    from distributed import Client

    from flowrig.certs import TLSMaterial

    proc = subprocess.Popen(
        [ENTRYPOINT, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0"],
        env=entrypoint_env(tls),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address, seen = None, []
        deadline = time.monotonic() + 90
        while address is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            match = SCHEDULER_AT.search(line)
            address = match.group(1) if match else None
        assert address, "".join(seen[-20:])
        assert address.startswith("tls://127.0.0.1:")

        # Exec form: the process we started *is* the scheduler, with no shell or child in between.
        me = psutil.Process(proc.pid)
        assert me.cmdline()[1:3] == ["-m", SCHEDULER_MODULE]
        assert roles.LIFETIME_PRELOAD in me.cmdline() and str(tls / "tls.key") in me.cmdline()
        assert me.environ()["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert me.children() == []

        # It speaks mutual TLS with the generated certificates.
        security = TLSMaterial.from_dir(tls).to_security()
        with Client(address, security=security, timeout=30) as client:
            assert client.scheduler_info()["address"] == address

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        assert time.monotonic() - started < 8
        assert code in (0, 143, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_info_prints_versions_and_certificate(tls):
    done = run_entrypoint("info", tls_dir_=tls)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["versions"]["flowrig"] == _version("flowrig")
    assert info["versions"]["distributed"] == _version("distributed")
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    cert = info["certificate"]
    assert cert["present"] is True and cert["expired"] is False
    assert cert["path"] == str(tls / "tls.crt")
    assert cert["subject"] == f"CN={cert_defaults.LEAF_COMMON_NAME}"
    assert cert["issuer"] == f"CN={cert_defaults.CA_COMMON_NAME}"
    assert cert_defaults.LEAF_DAYS - 2 <= cert["days_left"] <= cert_defaults.LEAF_DAYS
    assert info["user"] == {"uid": os.getuid(), "gid": os.getgid()}


def test_info_without_certificate(tmp_path):
    done = run_entrypoint("info", tls_dir_=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["certificate"] == {"path": str(tmp_path / "tls.crt"), "present": False}


def test_passthrough_execs_anything_else():
    done = run_entrypoint("echo", "hi")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hi\n", "")
    done = run_entrypoint("sh", "-c", "exit 7")
    assert done.returncode == 7


def test_unknown_command_exits_2_with_one_line():
    done = run_entrypoint("flowrig-no-such-command")
    assert done.returncode == 2
    assert done.stderr == "flowrig-entrypoint: error: command not found in the image: flowrig-no-such-command\n"


def test_dask_role_without_tls_exits_2_with_one_line(tmp_path):
    done = run_entrypoint("worker", "tls://127.0.0.1:1", tls_dir_=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "TLS file" in done.stderr and "Traceback" not in done.stderr


# --- exit codes (flowrig.exits), through a real interpreter exit -------------------------------

EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    from flowrig import errors
    from flowrig.cli.exits import run_and_exit

    class PrefectLikeTermination(Exception):
        signal = 15

    def command():
        case = sys.argv[1]
        if case == "bad-input":
            raise errors.BadInput("the parameter x is wrong")
        if case == "flow-failed":
            raise errors.FlowRunFailed("flow run ended Failed")
        if case == "infrastructure":
            raise errors.InfrastructureError("the cluster did not start")
        if case == "terminated":
            raise errors.Terminated(15)
        if case == "interrupt":
            raise KeyboardInterrupt
        if case == "prefect-termination":
            raise PrefectLikeTermination("terminated")
        if case == "unexpected":
            def deep():
                return {}["missing"]
            deep()
        if case == "returns-4":
            return 4
        if case == "returns-none":
            return None
        if case == "typer-exit":
            import typer
            raise typer.Exit(6)
        if case == "usage":
            from typer.main import get_command
            import typer
            app = typer.Typer()
            @app.command()
            def cmd(n: int):
                pass
            return get_command(app)(["not-a-number"], standalone_mode=False)

    run_and_exit(command, "prog")
    """
)


def run_exit_case(case: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = entrypoint_env(None)
    if debug:
        env["FLOWRIG_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, case], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("case", "code", "stderr"),
    [
        ("bad-input", 2, "prog: error: the parameter x is wrong\n"),
        ("flow-failed", 1, "prog: error: flow run ended Failed\n"),
        ("infrastructure", 3, "prog: error: the cluster did not start\n"),
        ("terminated", 143, ""),
        ("interrupt", 130, ""),
        ("prefect-termination", 143, ""),
        ("returns-4", 4, ""),
        ("returns-none", 0, ""),
        ("typer-exit", 6, ""),
    ],
)
def test_exit_codes(case, code, stderr):
    done = run_exit_case(case)
    assert (done.returncode, done.stderr) == (code, stderr)


def test_usage_error_exits_2_without_traceback():
    done = run_exit_case("usage")
    assert done.returncode == 2
    assert "Invalid value for 'n'" in done.stderr and "Traceback" not in done.stderr


def test_unexpected_exception_is_one_line_and_exit_3():
    done = run_exit_case("unexpected")
    assert done.returncode == 3
    assert done.stderr == (
        "prog: error: unexpected KeyError: 'missing' (set FLOWRIG_DEBUG=1 for the traceback)\n"
    )


def test_unexpected_exception_traceback_with_debug():
    done = run_exit_case("unexpected", debug=True)
    assert done.returncode == 3
    assert done.stderr.startswith("Traceback (most recent call last):")
    assert "in deep" in done.stderr
    assert done.stderr.endswith("prog: error: unexpected KeyError: 'missing' (set FLOWRIG_DEBUG=1 for the traceback)\n")
