"""The host command line: ``flowrig``.

Owns the commands and the mapping of errors to exit codes (:mod:`~flowrig.cli.exits`).
Commands are thin: they parse, call one function, and let :func:`main` map a
:class:`~flowrig.errors.FlowrigError` to its exit code and a single line on stderr.
Heavy modules (prefect, distributed, docker) are imported inside the commands so that
``flowrig --help`` stays fast.

May import: every other package (inside the commands).
"""

from __future__ import annotations

from flowrig.backends import backend_choices
from flowrig.cli.apps import command_group
from flowrig.cli.aws import app as aws_app
from flowrig.cli.build import build_command
from flowrig.cli.certs import app as certs_app
from flowrig.cli.deploy import deploy_command
from flowrig.cli.docker import app as docker_app
from flowrig.cli.ecs import app as ecs_app
from flowrig.cli.local import app as local_app
from flowrig.cli.preflight import preflight_command
from flowrig.cli.run import run
from flowrig.cli.vm import app as vm_app

app = command_group(
    name="flowrig",
    help=f"Run each Prefect flow run on its own short-lived, mutual-TLS Dask cluster. Backends: {backend_choices()}.",
)
app.command("run")(run)
app.command("build")(build_command)
app.command("deploy")(deploy_command)
app.command("preflight")(preflight_command)
app.add_typer(aws_app, name="aws")
app.add_typer(certs_app, name="certs")
app.add_typer(docker_app, name="docker")
app.add_typer(ecs_app, name="ecs")
app.add_typer(local_app, name="local")
app.add_typer(vm_app, name="vm")


def main() -> None:
    """Console-script entry: run the app and turn errors into exit codes."""
    import sys

    from flowrig.cli.exits import run_and_exit
    from flowrig.cli.run import usage_error_outcome

    run_and_exit(
        lambda: app(standalone_mode=False), "flowrig",
        on_usage_error=lambda exc: usage_error_outcome(exc, sys.argv[1:]),
    )
