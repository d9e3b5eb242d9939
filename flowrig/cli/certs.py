"""``flowrig certs``: make and check the certificates a cluster's mutual TLS uses.

``cryptography`` is imported inside the commands, so ``flowrig --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowrig.certs import defaults
from flowrig.certs.keys import KeyType
from flowrig.cli.apps import command_group

app = command_group(
    help="Make and check the CA, certificate and key that secure a cluster (mutual TLS).",
)


@app.command("generate")
def generate_command(
    out: Annotated[
        Path,
        typer.Option("--out", help="Directory for ca.crt, ca.key, tls.crt and tls.key."),
    ],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="Extra DNS name or IP address for the certificate (repeatable); "
            f"always included: {', '.join(defaults.LEAF_HOSTS)}.",
        ),
    ] = None,
    days: Annotated[
        int,
        typer.Option(
            "--days", help=f"Validity of the certificate, in days (at most {defaults.MAX_LEAF_DAYS})."
        ),
    ] = defaults.LEAF_DAYS,
    ca_days: Annotated[
        int, typer.Option("--ca-days", help="Validity of the CA, in days.")
    ] = defaults.CA_DAYS,
    key_type: Annotated[
        KeyType, typer.Option("--key-type", help="Algorithm of the CA and certificate keys.")
    ] = KeyType.ECDSA_P256,
    force: Annotated[
        bool, typer.Option("--force", help="Replace files that already exist.")
    ] = False,
) -> None:
    """Make a new CA and the certificate every role presents; print the written paths."""
    from flowrig.certs.authority import generate

    paths = generate(
        out, hosts=host or (), days=days, ca_days=ca_days, force=force, key_type=key_type
    )
    for path in paths:
        typer.echo(str(path))
    typer.echo(
        f"{paths.ca_key} is the CA's private key: keep it outside build contexts and images; "
        "anyone holding it can join clusters that trust this CA.",
        err=True,
    )


@app.command("check")
def check_command(
    directory: Annotated[
        Path, typer.Argument(help="Directory holding ca.crt, tls.crt and tls.key.")
    ],
) -> None:
    """Exit 0 if the certificate is valid, matches its key, chains to ca.crt and meets the policy; else 2.

    Policy (run/build --certs too): a leaf, not the CA's key; serverAuth+clientAuth; <= 398 days; RSA 2048/P-256 up.
    """
    from flowrig.certs.validation import check

    report = check(directory)
    typer.echo(f"subject:   {report.subject}")
    typer.echo(f"expires:   {report.not_after:%Y-%m-%d %H:%M:%S} UTC")
    typer.echo(f"days left: {report.days_left}")
    typer.echo(f"hosts:     {', '.join(report.hosts)}")
    for warning in report.warnings:
        typer.echo(f"flowrig: warning: {warning}", err=True)
