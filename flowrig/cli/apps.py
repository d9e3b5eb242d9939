"""How every command group of flowrig is made, so that all of them behave alike.

Help is printed as written: rich markup is off, since help texts name flowrig.toml's
tables (``[run] timeout``, ``[cluster] image``) and optional arguments (``[dask
args]``) in brackets, which rich would take for markup and drop.
"""

from __future__ import annotations

from typing import Any

import typer


def command_group(**kwargs: Any) -> typer.Typer:
    """A ``typer.Typer`` with flowrig's settings; ``kwargs`` as for ``typer.Typer``."""
    settings: dict[str, Any] = {
        "rich_markup_mode": None,
        "add_completion": False,
        "pretty_exceptions_enable": False,
        "no_args_is_help": True,
    }
    settings.update(kwargs)
    return typer.Typer(**settings)
