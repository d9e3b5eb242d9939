"""The embedded API's own process: ``python -m flowrig.api.serve serve|make-template``.

Started by :class:`flowrig.api.EmbeddedPrefectAPI`, never by users. A process flowrig
owns, so start-up may pause and freeze the collector here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time


def _exit_with_parent(parent: int, workdir: str | None) -> None:
    # Runs in a daemon thread of the server: when the runner is gone (even by SIGKILL)
    # the server has no one to serve and must not linger, nor leave its database.
    while os.getppid() == parent:
        time.sleep(0.5)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """``python -m flowrig.api.serve serve|make-template`` (internal)."""
    parser = argparse.ArgumentParser(prog="python -m flowrig.api.serve")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--host", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--parent", type=int, required=True)
    serve.add_argument("--workdir", help="removed when the parent dies")
    sub.add_parser("make-template")
    args = parser.parse_args(argv)
    from flowrig.internals import prefect_server

    if args.command == "make-template":
        prefect_server.build_template_database()
        return
    threading.Thread(target=_exit_with_parent, args=(args.parent, args.workdir), daemon=True).start()
    from flowrig.common.gcpause import collector_paused

    with collector_paused():
        import uvicorn

        prefect_server.import_server()
    # A second phase, so that the full collection Prefect runs after building its app
    # skips the millions of objects the imports made (0.5 s when they are not frozen).
    with collector_paused():
        app = prefect_server.create_app()
    uvicorn.run(app, host=args.host, port=args.port, log_level="error", lifespan="on")


if __name__ == "__main__":
    main()
