"""The entrypoint's own commands: ``run``, ``info``, ``prepare``, ``bake-tls``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowrig import layout
from flowrig.cli.run import run

app = typer.Typer(
    name="flowrig-entrypoint",
    help="Role dispatcher of a flowrig image: run | scheduler | worker ADDRESS | info.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
)
app.command("run")(run)


@app.command("info")
def info() -> None:
    """Print the image's manifest, package versions and certificate expiry as JSON."""
    from flowrig.entrypoint.describe import describe_image

    print(json.dumps(describe_image(), indent=2, sort_keys=True, default=str))


@app.command("prepare")
def prepare() -> None:
    """Build time: create the migrated Prefect database template runs copy."""
    from flowrig.api import ensure_template

    print(f"prefect database template: {ensure_template()}")


@app.command("bake-tls")
def bake_tls(
    source: Annotated[Path, typer.Argument(help="Directory that may hold ca.crt, tls.crt, tls.key.")],
    dest: Annotated[Path, typer.Option(help="Where the image keeps its TLS files.")] = layout.IMAGE_TLS_DIR,
    owner: Annotated[Optional[str], typer.Option(help="User that must own the key (the runtime user).")] = None,
) -> None:
    """Build time: install the given TLS files, or make an image-local CA and leaf.

    Made here, the CA's private key exists only in this process's memory: it is
    never written, so no layer of the image can hold it.
    """
    from flowrig.certs import TLSMaterial

    has_files = any((source / name).exists() for name in (layout.CA_CERT, layout.LEAF_CERT, layout.LEAF_KEY))
    material = TLSMaterial.from_dir(source) if has_files else TLSMaterial.ephemeral()
    paths = material.write_to_dir(dest)
    if owner:
        import pwd

        entry = pwd.getpwnam(owner)
        for path in (dest, *paths):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    origin = f"from {source}" if has_files else "made for this image (its CA key was not kept)"
    print(f"TLS files in {dest}: {origin}; leaf valid until {material.not_after:%Y-%m-%d}")
