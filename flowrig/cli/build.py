"""``flowrig build PROJECT --tag TAG``: the image of a flow project.

The command parses and calls :func:`_build`; rendering and Docker live in
:mod:`flowrig.builder.context` and :mod:`flowrig.builder.build`, imported inside so
``flowrig --help`` stays fast.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowrig.builder.defaults import BASE_IMAGE
from flowrig.layout import TLS_BAKED


def register(app: typer.Typer) -> None:
    """Add the ``build`` command to a typer app."""
    app.command("build")(build_command)


def build_command(
    project: Annotated[Path, typer.Argument(help="Flow project directory (holds flowrig.toml).")],
    tag: Annotated[str, typer.Option("--tag", "-t", help="Image tag, e.g. my-flow:1.")],
    base_image: Annotated[
        Optional[str],
        typer.Option(
            "--base-image",
            help="Debian-based image whose python3 (3.11+) has venv "
            f"(default {BASE_IMAGE}).",
        ),
    ] = None,
    tls: Annotated[
        str,
        typer.Option(
            "--tls",
            help="baked: certificates and the leaf key in the image (--certs, else a new CA "
            "for this build); per-run: no key in the image, each run delivers its own.",
        ),
    ] = TLS_BAKED,
    certs: Annotated[
        Optional[Path],
        typer.Option(
            "--certs",
            help="Certificate directory to bake (--tls baked); only ca.crt, tls.crt and "
            "tls.key are taken. Without it the build makes a new CA and keeps no CA key.",
        ),
    ] = None,
    pip_ca: Annotated[
        Optional[Path],
        typer.Option(
            "--pip-ca",
            envvar="FLOWRIG_PIP_CA",
            help="CA bundle pip in the build trusts (a BuildKit secret; never in the image).",
        ),
    ] = None,
    pip_netrc: Annotated[
        Optional[Path],
        typer.Option(
            "--pip-netrc",
            envvar="FLOWRIG_PIP_NETRC",
            help="A .netrc with the credentials of the project's private package index (a BuildKit "
            "secret for pip; never in the image, a layer or the requirements).",
        ),
    ] = None,
    context_only: Annotated[
        Optional[Path],
        typer.Option(
            "--context-only",
            help="Write the build context to this new directory and print the docker "
            "build command instead of building.",
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Build every step again.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Do not stream Docker's output.")
    ] = False,
) -> None:
    """Build the image of a flow project: runner, scheduler and worker in one."""
    _build(project, tag, base_image, tls, certs, pip_ca, context_only, no_cache, quiet, pip_netrc)


def _build(
    project: Path,
    tag: str,
    base_image: str | None,
    tls: str,
    certs: Path | None,
    pip_ca: Path | None,
    context_only: Path | None,
    no_cache: bool,
    quiet: bool,
    pip_netrc: Path | None = None,
) -> None:
    from flowrig.builder.build import build, build_command
    from flowrig.builder.context import render_context, write_context
    from flowrig.errors import BadInput

    if pip_ca is not None and not pip_ca.is_file():
        raise BadInput(f"pip CA bundle {pip_ca} is not a file: pass an existing PEM bundle")
    if pip_netrc is not None and not pip_netrc.is_file():
        raise BadInput(f"--pip-netrc {pip_netrc} is not a file: pass a .netrc with the index's credentials")
    context = render_context(project, tls_dir=certs, base_image=base_image, tls_mode=tls)
    for path in context.skipped:
        typer.echo(f"warning: {path} holds credentials and was not copied into the image", err=True)
    for path in context.unscanned:
        typer.echo(
            f"warning: {path} is too large to be searched for credentials by value (it was searched "
            "for private keys): make sure it holds none",
            err=True,
        )
    if context_only is not None:
        directory = write_context(context, context_only)
        command = build_command(
            context, tag, directory, buildkit=True, pip_ca=pip_ca, no_cache=no_cache, pip_netrc=pip_netrc
        )
        nonce = ""
        if context.makes_its_own_ca:
            # Left to the shell, so every run of the printed command gets a new CA.
            nonce = " --build-arg TLS_NONCE=\"$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')\""
        typer.echo(f"DOCKER_BUILDKIT=1 {shlex.join(command[:-1])}{nonce} {shlex.quote(command[-1])}")
        return
    result = build(context, tag, pip_ca, quiet=quiet, no_cache=no_cache, pip_netrc=pip_netrc)
    builder = "BuildKit" if result.buildkit else "legacy builder"
    typer.echo(f"built {result.tag} ({result.image_id[:19]}) in {result.seconds:.1f} s with {builder}", err=True)
    typer.echo(result.tag)
