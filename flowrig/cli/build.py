"""``flowrig build PROJECT --tag TAG``: the image of a flow project.

The command parses and calls :func:`_build`; rendering and Docker live in
:mod:`flowrig.builder.context` and :mod:`flowrig.builder.build`, imported inside so
``flowrig --help`` stays fast.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from flowrig.builder.defaults import BASE_IMAGE
from flowrig.layout import TLS_BAKED

if TYPE_CHECKING:
    from typing import Callable

    from flowrig.builder.build import BuildResult

#: ``--push``, declared apart: the command's signature is long enough.
PushOption = Annotated[
    bool,
    typer.Option(
        "--push",
        help="Push the image to the registry its --tag names. With several platforms and no containerd "
        "image store, each platform is built and pushed as TAG-ARCH, then an image index TAG naming them "
        "is made in the registry.",
    ),
]


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
            help="CA bundle pip in the build trusts (read by a build stage only; never in the image).",
        ),
    ] = None,
    pip_netrc: Annotated[
        Optional[Path],
        typer.Option(
            "--pip-netrc",
            envvar="FLOWRIG_PIP_NETRC",
            help="A .netrc with the credentials of the project's private package index (a BuildKit "
            "secret for pip; never in the image, a layer or the requirements). Needs BuildKit.",
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
    platform: Annotated[
        Optional[str],
        typer.Option(
            "--platform",
            help="Build for linux/amd64 or linux/arm64 (Graviton), or both, comma-separated (needs BuildKit; "
            "another architecture than the engine's runs emulated, with qemu's binfmt handlers; both need the "
            "containerd image store, or --push). Default: the engine's. The image's label "
            "org.flowrig.architecture names it.",
        ),
    ] = None,
    gpu: Annotated[
        Optional[str],
        typer.Option(
            "--gpu",
            help="Install a GPU runtime's wheels into the image (cuda12: nvidia-cuda-runtime-cu12 and "
            "nvidia-ml-py); the NVIDIA driver comes from the host. Label org.flowrig.gpu.",
        ),
    ] = None,
    push: PushOption = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Build every step again.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not stream Docker's output.")] = False,
) -> None:
    """Build the image of a flow project: runner, scheduler and worker in one."""
    _build(project, tag, base_image, tls, certs, pip_ca, context_only, no_cache, quiet, pip_netrc,
           platform=platform, gpu=gpu, push=push)


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
    *,
    platform: str | None = None,
    gpu: str | None = None,
    push: bool = False,
) -> None:
    from flowrig.builder.build import add_pip_ca, add_pip_netrc_mount, build, build_command
    from flowrig.builder.context import render_context, write_context
    from flowrig.errors import BadInput

    if pip_ca is not None and not pip_ca.is_file():
        raise BadInput(f"pip CA bundle {pip_ca} is not a file: pass an existing PEM bundle")
    if pip_netrc is not None and not pip_netrc.is_file():
        raise BadInput(f"--pip-netrc {pip_netrc} is not a file: pass a .netrc with the index's credentials")
    from flowrig.builder.platforms import gpu_requirements, parse_platforms

    platforms = parse_platforms(platform)
    gpu_requirements(gpu)
    if push and context_only is not None:
        raise BadInput("--push builds and pushes, --context-only writes the context without building: use one")
    context = render_context(project, tls_dir=certs, base_image=base_image, tls_mode=tls,
                             platform=",".join(platforms) or None, gpu=gpu)
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
        if pip_ca is not None:
            add_pip_ca(directory, pip_ca)
        if pip_netrc is None:
            # Without --progress: the command works with BuildKit and the legacy builder alike
            # (--platform is BuildKit's: the printed command needs it then).
            command = build_command(context, tag, directory, buildkit=bool(platforms), no_cache=no_cache,
                                    multi_platform=True)
        else:
            # A .netrc reaches the build only as a BuildKit secret the Dockerfile mounts.
            add_pip_netrc_mount(directory)
            command = build_command(
                context, tag, directory, buildkit=True, no_cache=no_cache, pip_netrc=pip_netrc.resolve(),
                multi_platform=True,
            )
        nonce = ""
        if context.makes_its_own_ca:
            # Left to the shell, so every run of the printed command gets a new CA.
            nonce = " --build-arg TLS_NONCE=\"$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')\""
        switch = "" if pip_netrc is None and not platforms else "DOCKER_BUILDKIT=1 "
        typer.echo(f"{switch}{shlex.join(command[:-1])}{nonce} {shlex.quote(command[-1])}")
        return

    def build_one(one: str | None, into: str) -> None:
        part = context if one is None else render_context(
            project, tls_dir=certs, base_image=base_image, tls_mode=tls, platform=one, gpu=gpu)
        _report(build(part, into, pip_ca, quiet=quiet, no_cache=no_cache, pip_netrc=pip_netrc))

    if push:
        _build_and_push(tag, platforms, build_one)
    else:
        build_one(None, tag)
    typer.echo(tag)


def _build_and_push(tag: str, platforms: tuple[str, ...], build_one: "Callable[[str | None, str], None]") -> None:
    """Build and push ``tag``: with several platforms on an engine that keeps one per tag,
    each as ``TAG-ARCH``, then the index ``tag`` of them in the registry."""
    from flowrig.builder import publish

    publish.reference(tag)  # a tag without a registry is refused before anything is built
    if len(platforms) > 1 and not _holds_several_platforms():
        members = publish.build_each_and_index(_client(), tag, platforms, build_one)
        typer.echo(f"pushed {tag}: an image index of {', '.join(members)}", err=True)
        return
    build_one(None, tag)
    publish.push(_client(), tag)
    typer.echo(f"pushed {tag}", err=True)


def _client() -> str:
    from flowrig.builder.build import detect_client

    return detect_client().path


def _holds_several_platforms() -> bool:
    """Whether the engine keeps an image of several platforms under one tag (containerd store)."""
    from flowrig.builder.platforms import containerd_store

    return containerd_store(_client())


def _report(result: "BuildResult") -> None:
    builder = "BuildKit" if result.buildkit else "legacy builder"
    typer.echo(f"built {result.tag} ({result.image_id[:19]}) in {result.seconds:.1f} s with {builder}", err=True)
