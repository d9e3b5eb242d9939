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
    check-imports [PROJECT]          build time: import the flow and what it imports
    bake-tls SRC --out DIR           build time: install or make the image's TLS files
    anything else                    exec'd as is

Dask roles replace this process (``exec``), so the init in front of it delivers
SIGTERM straight to Dask, which then stops in well under a second. A worker whose
environment sets ``FLOWRIG_DRAIN_SECONDS`` or ``FLOWRIG_SPOT_NOTICE`` runs under the
drain supervisor instead (:mod:`flowrig.roles.drain`), which hands its work over
before it stops.

May import: :mod:`flowrig.cli` (the ``run`` command is the same), :mod:`flowrig.roles`,
:mod:`flowrig.api`, :mod:`flowrig.certs`, :mod:`flowrig.common`, :mod:`flowrig.layout`.
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


def _check_baked_tls() -> None:
    """A role about to use the image's own certificates: refuse when a per-run image
    has none (its starter delivered nothing), warn when they expire soon."""
    from flowrig.certs.delivery import FROM_ENV
    from flowrig.errors import BadInput

    if not (layout.IMAGE_TLS_DIR / layout.LEAF_KEY).is_file():
        if layout.in_image() and image_tls_mode() == layout.TLS_PER_RUN:
            raise BadInput(
                "this image was built with --tls per-run and carries no certificates: start its "
                "roles through flowrig, which delivers each run's own "
                f"({FROM_ENV}=stdin, secret, or a cloud secret store on VMs)"
            )
        return  # command_for names the missing file
    from flowrig.certs.validation import expiry_warning

    warning = expiry_warning((layout.IMAGE_TLS_DIR / layout.LEAF_CERT).read_bytes(), "the image's baked certificate")
    if warning:
        print(f"flowrig-entrypoint: warning: {warning}", file=sys.stderr, flush=True)


def image_tls_mode() -> str:
    """``tls_mode`` of this image's manifest (``baked`` for images made before it existed)."""
    import json

    try:
        manifest = json.loads(layout.IMAGE_MANIFEST.read_text())
    except (OSError, ValueError):
        return layout.TLS_BAKED
    return manifest.get("tls_mode", layout.TLS_BAKED) if isinstance(manifest, dict) else layout.TLS_BAKED


def dispatch(argv: list[str]) -> int | None:
    """Run the role named by ``argv`` (without the program name)."""
    if not argv:
        argv = ["run"]
    if argv[0] == "run" and os.environ.get(layout.DOCKER_CONTROL_ENV):
        # A runner whose host reads its stdout for requests: claimed before anything
        # else is imported, so no line printed from here on can pass for one.
        from flowrig.common.claimed_stdout import claim_stdout

        claim_stdout()
    from flowrig import roles

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
            if not directory:
                _check_baked_tls()
            args = argv[1:]
            if role == "worker":
                from flowrig.roles import task_name

                args = task_name.resolve(args)
            command = roles.command_for(role, args, Path(directory) if directory else None)
            if role == "worker":
                # A worker that may be stopped with notice hands its work over first.
                command = roles.drained(command, env)
            _exec(command, roles.secure_environment(env))
        os.environ.update(env)
    if head in ("run", "info", "prepare", "check-imports", "bake-tls", "--help", "-h"):
        from flowrig.entrypoint.app import app

        return app(argv, standalone_mode=False)
    _exec(argv)
    return None


def main() -> None:
    """Console-script entry: dispatch, mapping errors to exit codes."""
    from flowrig.cli.exits import run_and_exit
    from flowrig.cli.run import usage_error_outcome

    run_and_exit(
        lambda: dispatch(sys.argv[1:]), "flowrig-entrypoint",
        on_usage_error=lambda exc: usage_error_outcome(exc, sys.argv[1:]),
    )
