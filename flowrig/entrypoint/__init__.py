"""``flowrig-entrypoint``: the role dispatcher that is the image's ENTRYPOINT.

One image, many roles::

    run [PROJECT] [--param k=v]...   the flow runner (default CMD)
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
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

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


def dispatch(argv: list[str]) -> int | None:
    """Run the role named by ``argv`` (without the program name)."""
    from flowrig.entrypoint import dask_commands

    if not argv:
        argv = ["run"]
    head = argv[0]
    if head == "dask" and len(argv) > 1 and argv[1] in ("scheduler", "worker"):
        head, argv = argv[1], argv[1:]
    role = dask_commands.ROLE_ALIASES.get(head)
    if role is not None:
        command = dask_commands.command_for(role, argv[1:])
        _exec(command, dask_commands.secure_environment())
    if head in ("run", "info", "prepare", "bake-tls", "--help", "-h"):
        from flowrig.entrypoint.app import app

        return app(argv, standalone_mode=False)
    _exec(argv)
    return None


def main() -> None:
    """Console-script entry: dispatch, mapping errors to exit codes."""
    from flowrig.exits import run_and_exit

    run_and_exit(lambda: dispatch(sys.argv[1:]), "flowrig-entrypoint")
