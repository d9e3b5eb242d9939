"""Dask scheduler and worker command lines, always with TLS flags.

distributed 2026.6 removed the ``dask-scheduler``/``dask-worker`` console scripts, but
dask-cloudprovider still sends exactly those commands; the modules behind them are
still there, so every spelling maps onto ``python -m distributed.cli.dask_scheduler`` or
distributed's worker command (through :mod:`flowrig.roles.forked_dask_worker`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath

from flowrig import layout
from flowrig.errors import BadInput

SCHEDULER_MODULE = "distributed.cli.dask_scheduler"
#: distributed's worker command, run by a nanny whose worker process is a fork of it
#: with Prefect's engine imported (:mod:`flowrig.roles.forked_dask_worker`).
WORKER_MODULE = "flowrig.roles.forked_dask_worker"

#: The scheduler's port and its dashboard's, inside a container or task.
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
#: The preload every scheduler runs: it stops the scheduler once no client has been
#: connected for a while (:mod:`flowrig.roles.lifetime`).
LIFETIME_PRELOAD = "flowrig.roles.lifetime"
#: The preload that serves a role's HTTP endpoints (the scheduler's dashboard,
#: ``/metrics``) only over the run's mutual TLS (:mod:`flowrig.roles.private_http`).
PRIVATE_HTTP_PRELOAD = "flowrig.roles.private_http"
#: Seconds a worker keeps trying to reach a lost scheduler before it exits.
WORKER_DEATH_TIMEOUT = 60
#: The supervisor a worker runs under when it may be stopped with notice: it hands the
#: worker's work over before it goes (:mod:`flowrig.roles.drain`).
DRAIN_MODULE = "flowrig.roles.drain"
#: Seconds a worker has, from SIGTERM, to hand over its work. Set: the worker runs
#: under :data:`DRAIN_MODULE`; unset: it stops at once, as Dask does.
DRAIN_ENV = "FLOWRIG_DRAIN_SECONDS"
#: Where a worker reads an interruption notice: ``ecs``, ``ec2``, ``gcp`` or ``azure``
#: (:mod:`flowrig.roles.metadata`); also runs the worker under :data:`DRAIN_MODULE`.
NOTICE_ENV = "FLOWRIG_SPOT_NOTICE"

#: argv[0] (or ``dask <sub>``) spellings -> role.
ROLE_ALIASES = {
    "scheduler": "scheduler",
    "dask-scheduler": "scheduler",
    "worker": "worker",
    "dask-worker": "worker",
}

TLS_DIR_ENV = layout.TLS_DIR_ENV
_TLS_FLAGS = ("--tls-ca-file", "--tls-cert", "--tls-key")


def tls_dir() -> Path:
    """Directory holding ``ca.crt``, ``tls.crt`` and ``tls.key`` (``FLOWRIG_TLS_DIR`` wins)."""
    return Path(os.environ.get(TLS_DIR_ENV) or layout.IMAGE_TLS_DIR)


def tls_flags(directory: str | Path = layout.IMAGE_TLS_DIR, *, require_files: bool = True) -> list[str]:
    """The Dask CLI flags for the TLS files in ``directory``.

    Parameters
    ----------
    directory
        Holds the three files; the image's fixed TLS directory by default.
    require_files
        Check that the files exist here (a role about to start); ``False`` renders the
        flags for another machine, such as an ECS task definition.

    Raises
    ------
    BadInput
        When a file is missing: a role without TLS must not start at all.
    """
    base = PurePosixPath(directory) if not require_files else Path(directory)
    files = dict(zip(_TLS_FLAGS, (base / layout.CA_CERT, base / layout.LEAF_CERT, base / layout.LEAF_KEY)))
    if require_files:
        for path in files.values():
            if not Path(path).is_file():
                raise BadInput(
                    f"TLS file {path} is missing: bake certificates with `flowrig build --certs DIR` "
                    f"or set {TLS_DIR_ENV}"
                )
    return [item for flag, path in files.items() for item in (flag, str(path))]


def _has(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def command_for(role: str, args: list[str], directory: Path | None = None) -> list[str]:
    """The full argv that runs ``role`` with ``args`` over mutual TLS.

    Flags the caller already gave win; the TLS files are added unless all three are
    given. The scheduler listens on ``tls://`` and runs :data:`LIFETIME_PRELOAD`, so
    a cluster whose runner was lost stops on its own; ``--no-client-timeout S`` and
    ``--first-client-timeout S`` among ``args`` are that preload's.
    """
    directory = directory or tls_dir()
    args = list(args)
    extra: list[str] = []
    missing = [f for f in _TLS_FLAGS if not _has(args, f)]
    if missing:
        defaults_for = dict(zip(*[iter(tls_flags(directory))] * 2))
        for flag in missing:
            extra += [flag, defaults_for[flag]]
    if role == "scheduler":
        if not _has(args, "--protocol"):
            extra += ["--protocol", "tls"]
        if LIFETIME_PRELOAD not in args:
            # First: distributed hands the arguments it does not know to the preloads
            # named before them.
            args = ["--preload", LIFETIME_PRELOAD, *args]
        module = SCHEDULER_MODULE
    elif role == "worker":
        if not _has(args, "--death-timeout"):
            extra += ["--death-timeout", str(WORKER_DEATH_TIMEOUT)]
        module = WORKER_MODULE
    else:
        raise BadInput(f"unknown role {role!r}: use scheduler or worker")
    return [sys.executable, "-m", module, *args, *extra]


def drained(command: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """A worker's ``command`` run under the drain supervisor when ``environ`` asks for
    it (:data:`DRAIN_ENV` or :data:`NOTICE_ENV` set), else ``command`` as is."""
    env = os.environ if environ is None else environ
    if not (env.get(DRAIN_ENV) or env.get(NOTICE_ENV)):
        return list(command)
    return [sys.executable, "-m", DRAIN_MODULE, "--", *command]


def scheduler_command(no_client_timeout: float | None = None, extra_args: list[str] | None = None) -> list[str]:
    """The scheduler's command for another machine (an ECS task of the image).

    The image's entry point runs it with :data:`LIFETIME_PRELOAD`, whose
    ``--no-client-timeout`` it may carry (``None``: the preload's default): a scheduler
    whose runner was lost stops on its own, and one whose runner is busy between two
    submissions does not (distributed's ``--idle-timeout`` would end it).
    ``extra_args`` default to listening on TLS only with the image's baked files.
    """
    extra = ["--protocol", "tls", *tls_flags(require_files=False)] if extra_args is None else extra_args
    lifetime = [] if no_client_timeout is None else ["--no-client-timeout", f"{float(no_client_timeout):g}"]
    return ["dask-scheduler", *lifetime, *extra]


def worker_command(threads: int = 1, extra_args: list[str] | None = None) -> list[str]:
    """A worker's command for another machine, without the scheduler address.

    ``extra_args`` default to the image's baked TLS files.
    """
    extra = tls_flags(require_files=False) if extra_args is None else extra_args
    return [
        "dask-worker",
        "--nthreads",
        str(threads),
        # In a container, "auto" is the task's memory limit as the kernel enforces it.
        "--memory-limit",
        "auto",
        "--death-timeout",
        str(WORKER_DEATH_TIMEOUT),
        *extra,
    ]


def with_resource(args: list[str], name: str, amount: int) -> list[str]:
    """``args`` with the Dask worker resource ``name=amount`` added to its ``--resources``
    (the project's other resources kept; its own ``name`` replaced), or a new one."""
    out = list(args)
    for index, arg in enumerate(out):
        if arg == "--resources" and index + 1 < len(out):
            pairs = [p for p in out[index + 1].replace(",", " ").split() if p.split("=", 1)[0] != name]
            out[index + 1] = " ".join([*pairs, f"{name}={amount}"])
            return out
        if arg.startswith("--resources="):
            pairs = [p for p in arg.split("=", 1)[1].replace(",", " ").split() if p.split("=", 1)[0] != name]
            out[index] = "--resources=" + " ".join([*pairs, f"{name}={amount}"])
            return out
    return [*out, "--resources", f"{name}={amount}"]


def secure_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Dask role: any unencrypted connection is refused, and a
    client that a task opens to its own cluster without credentials gets the worker's
    (:mod:`flowrig.internals.worker_security`)."""
    from flowrig.internals.worker_security import LOADER, LOADER_ENV

    env = dict(os.environ if environ is None else environ)
    env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    env.setdefault(LOADER_ENV, LOADER)
    return env
