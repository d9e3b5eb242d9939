"""The entrypoint's own commands: ``run``, ``info``, ``prepare``, ``bake-tls``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flowrig import layout
from flowrig.cli.apps import command_group
from flowrig.cli.run import run

app = command_group(
    name="flowrig-entrypoint",
    help="Role dispatcher of a flowrig image: run | scheduler | worker ADDRESS | info.",
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
    out: Annotated[Path, typer.Option(help="Writes certs/ (ca.crt, tls.crt) and key/ (tls.key) here.")],
    mode: Annotated[str, typer.Option(help="baked or per-run (the TLS_MODE build argument).")] = layout.TLS_BAKED,
    nonce: Annotated[str, typer.Option(help="A value never used before (TLS_NONCE).")] = "",
) -> None:
    """Build time: install the given TLS files, or make a CA and leaf for this image.

    Made here, the CA's private key exists only in this process's memory: it is never
    written, so no layer of the image can hold it. ``--nonce`` is not used but is on
    the build step's command line: a new one makes Docker run the step again instead of
    taking an earlier build's certificates from its cache. ``per-run`` writes two
    empty directories.
    """
    from flowrig.errors import BadInput

    if mode not in layout.TLS_MODES:
        raise BadInput(f"TLS_MODE={mode!r} is not a TLS mode: use one of {', '.join(layout.TLS_MODES)}")
    names = (layout.CA_CERT, layout.LEAF_CERT, layout.LEAF_KEY)
    has_files = any((source / name).exists() for name in names)
    certs, key = out / "certs", out / "key"
    for directory in (certs, key):
        directory.mkdir(parents=True, exist_ok=True)
    if mode == layout.TLS_PER_RUN:
        if has_files:
            raise BadInput(
                "the context has tls/ files, but a per-run image carries no certificates: "
                "remove tls/ from the context, or build with TLS_MODE=baked"
            )
        print("TLS: none baked (per-run): each run delivers its own certificates to its roles")
        return
    if not has_files and not nonce.strip():
        raise BadInput(
            "a baked image without tls/ gets a CA of its own, made by a step Docker caches: pass "
            "--build-arg TLS_NONCE=<a value never used before> (flowrig build does), give "
            "certificates in tls/, or build with TLS_MODE=per-run"
        )
    from flowrig.certs import TLSMaterial

    material = TLSMaterial.from_dir(source) if has_files else TLSMaterial.ephemeral()
    paths = material.write_to_dir(out / "staging")
    for path in (paths.ca_cert, paths.cert):
        path.chmod(0o644)
        path.rename(certs / path.name)
    paths.key.rename(key / paths.key.name)
    (out / "staging").rmdir()
    origin = f"from {source}" if has_files else "made for this image (its CA key was not kept)"
    print(f"TLS files: {origin}; leaf valid until {material.not_after:%Y-%m-%d}")
