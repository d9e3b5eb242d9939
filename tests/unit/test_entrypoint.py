"""``flowrig-entrypoint`` as data: the scheduler and worker commands it builds (TLS, preloads,
caller flags), role names, the secure environment, and Prefect worker commands turned into a
``flowrig run``. Exec'd processes: tests/e2e/local/test_entrypoint.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from flowrig import roles
from flowrig.entrypoint import dispatch
from flowrig.errors import BadInput
from flowrig.roles import (
    ROLE_ALIASES,
    SCHEDULER_MODULE,
    command_for,
    secure_environment,
)


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Path:
    """A directory with ca.crt, tls.crt and tls.key made by ``flowrig certs``' generator."""
    from flowrig.certs import generate

    out = tmp_path_factory.mktemp("tls")
    generate(out)
    return out


def tls_of(tls: Path) -> list[str]:
    return [
        "--tls-ca-file", str(tls / "ca.crt"),
        "--tls-cert", str(tls / "tls.crt"),
        "--tls-key", str(tls / "tls.key"),
    ]


# --- command lines ----------------------------------------------------------------------


def test_scheduler_command_gets_tls_protocol_and_the_lifetime_preload_not_an_idle_timeout(tls):
    assert command_for("scheduler", ["--port", "8786"], tls) == [
        sys.executable, "-m", SCHEDULER_MODULE, "--preload", roles.LIFETIME_PRELOAD, "--port", "8786",
        *tls_of(tls),
        "--protocol", "tls",
    ]
    # The preload's own arguments follow it, where distributed hands them to it.
    command = command_for("scheduler", ["--no-client-timeout", "5"], tls)
    assert command[3:7] == ["--preload", roles.LIFETIME_PRELOAD, "--no-client-timeout", "5"]
    given = command_for("scheduler", ["--preload", roles.LIFETIME_PRELOAD], tls)
    assert given.count(roles.LIFETIME_PRELOAD) == 1


def test_what_dask_cloudprovider_sends_is_not_duplicated(tls):
    # dask-cloudprovider's scheduler command already carries an idle timeout.
    command = command_for("scheduler", ["--idle-timeout", "5 minutes", "--protocol=tls"], tls)
    assert command.count("--idle-timeout") == 1 and "5 minutes" in command
    assert command.count("--protocol") == 0 and command.count("--protocol=tls") == 1
    worker = command_for("worker", ["tls://s:8786", "--death-timeout", "60", "--name", "w"], tls)
    assert worker.count("--death-timeout") == 1
    assert worker[worker.index("--death-timeout") + 1] == "60"


def test_caller_tls_files_win(tmp_path, tls):
    own = [
        "--tls-ca-file=/own/ca.crt",
        "--tls-cert", "/own/tls.crt",
        "--tls-key", "/own/tls.key",
    ]
    # Given all three, the default directory is not even looked at.
    command = command_for("worker", ["tls://s:8786", *own], tmp_path / "empty")
    assert [a for a in command if a.startswith("--tls")] == ["--tls-ca-file=/own/ca.crt", "--tls-cert", "--tls-key"]
    assert str(tls) not in " ".join(command)


def test_one_caller_tls_flag_is_not_overridden(tls):
    command = command_for("scheduler", ["--tls-ca-file", "/own/ca.crt"], tls)
    assert command.count("--tls-ca-file") == 1
    assert command[command.index("--tls-ca-file") + 1] == "/own/ca.crt"


def test_unknown_role(tls):
    with pytest.raises(BadInput, match="unknown role 'nanny'"):
        command_for("nanny", [], tls)


def test_role_aliases_are_the_spellings_the_manual_documents():
    """Every Dask role spelling in the manual's role table (docs/images.md) maps to its
    role, and no spelling the dispatcher accepts is undocumented."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "images.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `scheduler") or line.startswith("| `worker")]
    documented = {}
    for row in rows:
        role = "scheduler" if row.startswith("| `scheduler") else "worker"
        for spelling in re.findall(r"`([a-z-]+)(?: [^`]*)?`", row.split("|")[1]):
            if spelling != "dask":
                documented[spelling] = role
    assert documented == ROLE_ALIASES


def test_secure_environment_requires_encryption_and_lends_tasks_the_workers_credentials():
    env = secure_environment({"PATH": "/bin", "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "False"})
    assert env == {
        "PATH": "/bin",
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER": "flowrig.internals.worker_security.load",
    }
    # A loader of the user's own stays.
    mine = {"DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER": "my.module.loader"}
    assert secure_environment(mine)["DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER"] == "my.module.loader"


# --- dispatch (in this process only where it fails before exec'ing) -------------------------


def test_dispatch_unknown_command_is_bad_input():
    with pytest.raises(BadInput, match="command not found in the image: flowrig-no-such-command"):
        dispatch(["flowrig-no-such-command", "--flag"])


# --- exit codes (flowrig.exits), through a real interpreter exit -------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["prefect", "flow-run", "execute", "abc"], {}, "abc"),
        (["prefect", "flow-run", "execute"], {"PREFECT__FLOW_RUN_ID": "from-env"}, "from-env"),
        (["/opt/venv/bin/python", "-m", "prefect.engine"], {"PREFECT__FLOW_RUN_ID": "e"}, "e"),
        (["python", "-m", "prefect.engine"], {}, None),
        (["prefect", "server", "start"], {"PREFECT__FLOW_RUN_ID": "x"}, None),
    ],
)
def test_prefect_worker_commands_become_a_flowrig_run(monkeypatch, argv, env, expected):
    from flowrig.entrypoint import _prefect_flow_run_id

    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _prefect_flow_run_id(argv) == expected
