"""``flowrig-entrypoint``: the role dispatcher that is the image's ENTRYPOINT.

One image, many roles::

    run [PROJECT] [--param k=v]...   the flow runner (default CMD)
    prefect flow-run execute [ID] / python -m prefect.engine
                                     what a Prefect worker sends for a deployment's
                                     flow run: runs the baked project as that flow run
    scheduler [dask args]            Dask scheduler over mutual TLS
    worker ADDRESS [dask args]       Dask worker over mutual TLS
    dask-scheduler ... / dask-worker ... / dask scheduler|worker ...
                                     what dask-cloudprovider sends; TLS flags added
    info                             manifest, versions, certificate expiry (JSON)
    prepare                          build time: migrate the Prefect database template
    bake-tls SRC                     build time: install or make the image's TLS files
    anything else                    exec'd as is

Dask roles replace this process (``exec``), so the init in front of it delivers
SIGTERM straight to Dask, which then stops in well under a second.

May import: :mod:`flowrig.cli` (the ``run`` command is the same), :mod:`flowrig.roles`,
:mod:`flowrig.api`, :mod:`flowrig.certs`, :mod:`flowrig.layout`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from flowrig import layout
from flowrig.errors import BadInput

__all__ = ["main"]


def _exec(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if env is None:
            os.execvp(argv[0], argv)
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise BadInput(f"command not found in the image: {argv[0]}") from None


def _prefect_flow_run_id(argv: list[str]) -> str | None:
    """The flow run id when ``argv`` is a Prefect worker's command for a flow run.

    Prefect workers (ECS included) start a deployment's container with
    ``prefect flow-run execute [ID]`` (older ones: ``python -m prefect.engine``) and
    ``PREFECT__FLOW_RUN_ID`` set. Executed as is, Prefect would run the flow without
    a cluster of its own; flowrig runs it as that flow run instead.
    """
    words = [os.path.basename(a) for a in argv[:3]]
    if words[:3] == ["prefect", "flow-run", "execute"]:
        explicit = argv[3] if len(argv) > 3 and not argv[3].startswith("-") else None
        return explicit or os.environ.get("PREFECT__FLOW_RUN_ID")
    if words[:1] and words[0].startswith("python") and argv[1:3] == ["-m", "prefect.engine"]:
        return os.environ.get("PREFECT__FLOW_RUN_ID")
    return None


def dispatch(argv: list[str]) -> int | None:
    """Run the role named by ``argv`` (without the program name)."""
    from flowrig import roles

    if not argv:
        argv = ["run"]
    flow_run_id = _prefect_flow_run_id(argv)
    if flow_run_id:
        os.environ["PREFECT__FLOW_RUN_ID"] = flow_run_id
        argv = ["run"]
    head = argv[0]
    if head == "dask" and len(argv) > 1 and argv[1] in ("scheduler", "worker"):
        head, argv = argv[1], argv[1:]
    role = roles.ROLE_ALIASES.get(head)
    if role is not None or head == "run":
        from flowrig.certs import delivery

        # A run's own certificates, when its starter delivers them: into memory.
        env = delivery.role_environment(os.environ, sys.stdin.buffer)
        if role is not None:
            directory = env.get(layout.TLS_DIR_ENV)
            command = roles.command_for(role, argv[1:], Path(directory) if directory else None)
            _exec(command, roles.secure_environment(env))
        os.environ.update(env)
    if head in ("run", "info", "prepare", "bake-tls", "--help", "-h"):
        from flowrig.entrypoint.app import app

        return app(argv, standalone_mode=False)
    _exec(argv)
    return None


def main() -> None:
    """Console-script entry: dispatch, mapping errors to exit codes."""
    from flowrig.cli.exits import run_and_exit

    run_and_exit(lambda: dispatch(sys.argv[1:]), "flowrig-entrypoint")
