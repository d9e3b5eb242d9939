"""Dask scheduler and worker command lines with the image's TLS flags added.

distributed 2026.6 removed the ``dask-scheduler``/``dask-worker`` console scripts, but
dask-cloudprovider still sends exactly those commands; the modules behind them are
still there, so every spelling maps onto ``python -m distributed.cli.dask_*``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flowrig import defaults
from flowrig.errors import BadInput

SCHEDULER_MODULE = "distributed.cli.dask_scheduler"
WORKER_MODULE = "distributed.cli.dask_worker"

#: argv[0] (or ``dask <sub>``) spellings -> role.
ROLE_ALIASES = {
    "scheduler": "scheduler",
    "dask-scheduler": "scheduler",
    "worker": "worker",
    "dask-worker": "worker",
}


def tls_dir() -> Path:
    """Directory holding ``ca.crt``, ``tls.crt`` and ``tls.key`` (``FLOWRIG_TLS_DIR`` wins)."""
    return Path(os.environ.get("FLOWRIG_TLS_DIR") or defaults.IMAGE_TLS_DIR)


def tls_flags(directory: Path) -> list[str]:
    """The dask CLI flags for the TLS files in ``directory``.

    Raises
    ------
    BadInput
        When a file is missing: a role without TLS must not start at all.
    """
    files = {
        "--tls-ca-file": directory / defaults.CA_CERT,
        "--tls-cert": directory / defaults.LEAF_CERT,
        "--tls-key": directory / defaults.LEAF_KEY,
    }
    for path in files.values():
        if not path.is_file():
            raise BadInput(
                f"TLS file {path} is missing: bake certificates with `flowrig build --certs DIR` "
                "or set FLOWRIG_TLS_DIR"
            )
    return [item for flag, path in files.items() for item in (flag, str(path))]


def _has(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def command_for(role: str, args: list[str], directory: Path | None = None) -> list[str]:
    """The full argv that runs ``role`` with ``args`` over mutual TLS.

    Flags the caller already gave win; the TLS files are added unless all three are
    given. The scheduler listens on ``tls://`` and stops itself when idle, so a
    cluster whose runner died does not run forever.
    """
    directory = directory or tls_dir()
    args = list(args)
    extra: list[str] = []
    missing = [f for f in ("--tls-ca-file", "--tls-cert", "--tls-key") if not _has(args, f)]
    if missing:
        defaults_for = dict(zip(*[iter(tls_flags(directory))] * 2))
        for flag in missing:
            extra += [flag, defaults_for[flag]]
    if role == "scheduler":
        if not _has(args, "--protocol"):
            extra += ["--protocol", "tls"]
        if not _has(args, "--idle-timeout"):
            extra += ["--idle-timeout", defaults.SCHEDULER_IDLE_TIMEOUT]
        module = SCHEDULER_MODULE
    elif role == "worker":
        if not _has(args, "--death-timeout"):
            extra += ["--death-timeout", str(defaults.WORKER_DEATH_TIMEOUT)]
        module = WORKER_MODULE
    else:
        raise BadInput(f"unknown role {role!r}: use scheduler or worker")
    return [sys.executable, "-m", module, *args, *extra]


def secure_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Dask role: any unencrypted connection is refused."""
    env = dict(os.environ if environ is None else environ)
    env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    return env
