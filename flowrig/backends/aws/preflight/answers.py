"""One read-only call whose refusal is an answer, not an error: what a preflight check
does with AWS saying no (not checked, or failed), while an unreachable AWS stays exit 3."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from flowrig.backends.aws.session import aws_errors
from flowrig.errors import one_line


@dataclass(frozen=True)
class Refused:
    """AWS answered with an error: its code and message."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


def ask(call: Callable[[], Any], action: str) -> Any:
    """``call()``'s answer, or :class:`Refused` when AWS answered with an error, or with
    something botocore cannot read (an emulator without the API answers HTML).

    Raises
    ------
    InfrastructureError
        AWS (or the endpoint) did not answer.
    BadInput
        No credentials or region.
    """
    from botocore import exceptions as bx
    from botocore.parsers import ResponseParserError

    with aws_errors(action):
        try:
            return call()
        except ResponseParserError as exc:
            return Refused("UnreadableAnswer", one_line(str(exc), 120))
        except bx.ClientError as exc:
            error = exc.response.get("Error", {})
            return Refused(str(error.get("Code", "error")), one_line(str(error.get("Message", "")), 200))
