"""The host command line: ``flowrig``.

Commands are thin: they parse, call one function, and let :func:`main` map a
:class:`~flowrig.errors.FlowrigError` to its exit code and a single line on stderr.
Heavy modules (prefect, distributed, docker) are imported inside the commands so that
``flowrig --help`` stays fast.
"""

from __future__ import annotations

import typer

from flowrig.certs.cli import app as certs_app
from flowrig.ecs.cli import app as ecs_app
from flowrig.commands import register_commands

app = typer.Typer(
    name="flowrig",
    help="Run each Prefect flow run on its own short-lived, mutual-TLS Dask cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(certs_app, name="certs")
app.add_typer(ecs_app, name="ecs")
register_commands(app)


def main() -> None:
    """Console-script entry: run the app and turn errors into exit codes."""
    from flowrig.exits import run_and_exit

    run_and_exit(lambda: app(standalone_mode=False), "flowrig")


if __name__ == "__main__":
    main()
