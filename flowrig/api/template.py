"""The migrated database template every run's API copies, and the environment of the
server processes (the one that makes the template, and each run's API).

A run's SQLite database is a copy of a template migrated once per Prefect version (at
image build time in the image), so a run never migrates; concurrent first runs wait on
a file lock instead of migrating side by side.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from flowrig import layout
from flowrig.errors import InfrastructureError

#: Settings that make the throwaway server quiet, offline and quick to start (none is a
#: secret: the auth string reaches the server through its stdin).
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "false",
    # No browser talks to this API (its UI is off), and the run's clients do not
    # fetch CSRF tokens from it: whatever the caller's environment says.
    "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    # Its check of whether block types changed since the last start loads every
    # installed collection and hashes the registry even when registration is off:
    # about a second of start-up. The template already holds the block types.
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    # The database is deleted with the run, so services that turn events into task
    # runs, persist events and logs, or react to them would only spend the run's CPU
    # on rows nobody reads. The flow run and its states are written by the API itself.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_LOGGER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED": "false",
    "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "false",
}


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def template_path() -> Path:
    """Where the migrated database template for the installed Prefect lives."""
    return layout.cache_dir() / f"prefect-{_prefect_version()}" / "template.db"


def ensure_template() -> Path:
    """Create the migrated database template once; later calls return at once.

    Concurrent runs wait on a file lock instead of migrating side by side.
    """
    path = template_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        env = clean_env()
        env.update(
            PREFECT_HOME=str(path.parent),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=sqlite_url(partial),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        done = subprocess.run(
            [sys.executable, "-m", "flowrig.api.serve", "make-template"],
            stdin=subprocess.DEVNULL,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InfrastructureError(f"could not create the Prefect database: {tail}")
        partial.rename(path)
    return path


def clean_env() -> dict[str, str]:
    # The server must never talk to another API, nor read the caller's database URL or
    # anyone's credentials.
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")
        and not k.startswith(("PREFECT_SERVER_DATABASE", "PREFECT_API_DATABASE", "PREFECT_SERVER_API_AUTH"))
    }
