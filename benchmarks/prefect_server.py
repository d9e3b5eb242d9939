"""A real ``prefect server start`` on SQLite or PostgreSQL, for the benchmarks and the tests.

PostgreSQL is what teams run a Prefect server on in production; SQLite is Prefect's
default. For PostgreSQL a private cluster is made with Debian's ``postgresql`` binaries
(``initdb``/``pg_ctl``, found through ``pg_config`` or under /usr/lib/postgresql): a
data directory of its own, listening on 127.0.0.1 only, password authentication with
a password made for it, removed again on :meth:`PrefectServer.stop`. As root (CI) the
database runs as the ``postgres`` user, since PostgreSQL refuses to run as root.

The benchmarks import this module directly (``from prefect_server import ...``); the
tests' fixtures in tests/prefect_support.py import it as ``benchmarks.prefect_server``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DATABASES = ("sqlite", "postgres")


class ServerError(RuntimeError):
    """The database or the Prefect server did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or ``None`` when PostgreSQL is not installed."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if found and (Path(found) / "initdb").is_file():
            return Path(found)
    # Debian keeps the server binaries off PATH, one directory per major version.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


class PostgresCluster:
    """A private PostgreSQL cluster on 127.0.0.1, for one test session or benchmark.

    Parameters
    ----------
    durable
        Keep PostgreSQL's own durability settings (``fsync``); tests turn it off for
        speed, the benchmark keeps it, as a production server would.
    """

    def __init__(self, *, durable: bool = True) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise ServerError("PostgreSQL is not installed: apt-get install postgresql")
        self.bindir = bindir
        self.durable = durable
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        self.root = Path(tempfile.mkdtemp(prefix="flowrig-postgres-"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0
        self._started = False

    def _run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, **kwargs)

    def start(self) -> "PostgresCluster":
        if self._as_root:
            shutil.chown(self.root, "postgres")
        (self.root / "pw").write_text(self.password + "\n")
        if self._as_root:
            shutil.chown(self.root / "pw", "postgres")
        os.chmod(self.root / "pw", 0o600)
        init = self._run("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-instructions",
                         "--auth-host=scram-sha-256", "--auth-local=peer", f"--pwfile={self.root / 'pw'}")
        (self.root / "pw").unlink()
        if init.returncode != 0:
            raise ServerError(f"initdb failed: {init.stderr[-2000:]}")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        started = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
                            "-t", "60", "start")
        if started.returncode != 0:
            log = (self.root / "log").read_text()[-2000:] if (self.root / "log").exists() else ""
            raise ServerError(f"PostgreSQL did not start: {started.stderr[-1000:]} {log}")
        self._started = True
        created = subprocess.run(
            [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "prefect"],
            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": self.password},
        )
        if created.returncode != 0:
            self.stop()
            raise ServerError(f"createdb failed: {created.stderr[-1000:]}")
        return self

    @property
    def url(self) -> str:
        """Prefect's connection URL of the cluster's ``prefect`` database."""
        return f"postgresql+asyncpg://postgres:{self.password}@127.0.0.1:{self.port}/prefect"

    def stop(self) -> None:
        if self._started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)


class PrefectServer:
    """``prefect server start`` with its default services (the task-run recorder among
    them) on ``host`` and a free port, UI off, once it answers.

    Parameters
    ----------
    work
        Where its ``PREFECT_HOME`` goes.
    env
        Its environment (``PREFECT_*`` variables of the caller's are dropped).
    database
        ``sqlite`` (a file under ``work``) or ``postgres`` (a private cluster).
    host
        The address it listens on: 127.0.0.1, or the Docker bridge's gateway for
        containers to reach it.
    durable
        For ``postgres``: see :class:`PostgresCluster`.
    """

    def __init__(self, work: Path, env: dict[str, str], *, database: str = "sqlite", host: str = "127.0.0.1",
                 durable: bool = True) -> None:
        if database not in DATABASES:
            raise ValueError(f"database must be one of {DATABASES}, got {database!r}")
        self.work, self.database, self.host = Path(work), database, host
        self.env = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
        self.env.update(
            PREFECT_HOME=str(self.work / f"server-home-{database}"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        self.postgres = PostgresCluster(durable=durable) if database == "postgres" else None
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 180) -> "PrefectServer":
        if self.postgres is not None:
            self.postgres.start()
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.postgres.url
        port = free_port(self.host)
        self.work.mkdir(parents=True, exist_ok=True)
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full one
        # would stop it.
        self.log = self.work / f"prefect-server-{self.database}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(port)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log,
            )
        self.url = f"http://{self.host}:{port}/api"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.log.read_text(errors="replace")[-2000:]
                self.stop()
                raise ServerError(f"prefect server exited: {error}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.postgres is not None:
            self.postgres.stop()

    def __enter__(self) -> "PrefectServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(work: Path, env: dict[str, str], database: str = "sqlite") -> tuple[PrefectServer, str]:
    """A started :class:`PrefectServer` and its API URL; exits the benchmark when it
    cannot start. Stop it with ``server.stop()``."""
    server = PrefectServer(work, env, database=database)
    try:
        server.start()
    except ServerError as exc:
        sys.exit(f"the Prefect server did not start: {exc}")
    return server, server.url
