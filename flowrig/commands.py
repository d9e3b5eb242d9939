"""Top-level ``flowrig`` commands other than the ``certs`` and ``ecs`` groups."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Output(str, Enum):
    text = "text"
    json = "json"


def run(
    project: Annotated[
        Optional[Path],
        typer.Argument(help="Flow project directory (holds flowrig.toml); default: the baked one in the image, else '.'."),
    ] = None,
    backend: Annotated[
        Optional[str],
        typer.Option("--backend", "-b", help="local | docker | ecs | fargate | package.module:ClusterClass."),
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option("--param", "-p", help="k=v; v parses as JSON, else it is a string. Repeatable."),
    ] = None,
    params_file: Annotated[
        Optional[Path], typer.Option("--params-file", help="JSON object of parameters.")
    ] = None,
    image: Annotated[
        Optional[str], typer.Option("--image", help="Image for container backends.", envvar="FLOWRIG_IMAGE")
    ] = None,
    certs: Annotated[
        Optional[Path],
        typer.Option("--certs", help="Directory with ca.crt, tls.crt, tls.key; default: per-run certificates."),
    ] = None,
    scheduler_address: Annotated[
        Optional[str],
        typer.Option("--scheduler-address", help="Use a running tls:// scheduler instead of starting one."),
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="text, or json: one JSON line last on stdout.")] = Output.text,
) -> None:
    """Run one flow run on a fresh mutual-TLS Dask cluster sized from its parameters."""
    import os

    from flowrig.launch import default_project_dir

    project = project or default_project_dir()
    if not os.environ.get("FLOWRIG_IN_IMAGE") and not scheduler_address:
        # The project file may choose the backend too (reading it is cheap). On the
        # host, the docker backend runs the runner itself in a container of the image.
        from flowrig.defaults import PROJECT_FILE
        from flowrig.project import load_project

        chosen, configured_image = backend, None
        if (Path(project) / PROJECT_FILE).is_file():
            config = load_project(project).cluster
            chosen, configured_image = backend or config.backend, config.image
        if chosen == "docker":
            from flowrig.backends.docker import run_in_container

            raise typer.Exit(
                run_in_container(
                    project, image=image or configured_image, params=param or [], params_file=params_file, output=output.value
                )
            )
    from flowrig.launch import run_project

    run_project(
        project,
        output=output.value,
        backend=backend,
        scheduler_address=scheduler_address,
        params=param or [],
        params_file=params_file,
        image=image,
        certs=certs,
    ).raise_for_state()


def register_commands(app: typer.Typer) -> None:
    """Add ``run``, ``build`` and ``docker`` commands to the ``flowrig`` app."""
    from flowrig.backends.docker_cli import app as docker_app
    from flowrig.builder.cli import register as register_build

    app.command("run")(run)
    register_build(app)
    app.add_typer(docker_app, name="docker")
