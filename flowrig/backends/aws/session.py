"""AWS sessions of flowrig's own AWS code (botocore): clients with bounded retries, the
caller's account and id, and botocore's errors as one-line flowrig errors.

botocore honours ``AWS_ENDPOINT_URL`` and the usual credential chain, so the same code
talks to AWS or to a local emulator. botocore rather than boto3: it is what
dask-cloudprovider's aiobotocore pins, and boto3 adds nothing flowrig uses.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from flowrig.backends.aws.names import Account, check_owner
from flowrig.errors import BadInput, InfrastructureError, one_line

#: Attempts and connect timeout (seconds) of every AWS call flowrig makes itself
#: (botocore's standard retries: exponential backoff with full jitter, throttling
#: included); an unreachable endpoint fails in seconds instead of retrying for minutes.
#: ``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE`` (``adaptive``) override them.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT = 10


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore's errors raised while doing ``action`` into flowrig errors.

    Missing credentials or region and invalid parameters are :class:`BadInput` (exit 2);
    an unreachable endpoint, a timeout or a refusal by AWS is
    :class:`InfrastructureError` (exit 3). Each message is one line.
    """
    from botocore import exceptions as bx

    try:
        yield
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise BadInput(
            f"no usable AWS credentials while {action} ({one_line(exc)}): set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        ) from None
    except bx.NoRegionError:
        raise BadInput(f"no AWS region while {action}: pass --region or set AWS_REGION") from None
    except bx.ParamValidationError as exc:
        raise BadInput(f"invalid AWS parameters while {action}: {one_line(exc)}") from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
        raise InfrastructureError(f"cannot reach AWS while {action}: {one_line(exc)}") from None
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "error")), str(error.get("Message", exc))
        # Some endpoints answer a JSON API with an XML error body, which botocore keeps whole.
        xml = re.search(r"<Code>(.*?)</Code>.*?<Message>(.*?)</Message>", message, re.DOTALL)
        if xml:
            code, message = xml.groups()
        raise InfrastructureError(f"AWS refused {action}: {code}: {one_line(message)}") from None
    except bx.BotoCoreError as exc:
        raise InfrastructureError(f"AWS call failed while {action}: {one_line(exc)}") from None


class Session:
    """A region, credentials and the clients made from them (one client per service).

    Parameters
    ----------
    region
        The AWS region; default: the usual configuration (``AWS_REGION``, profile).
    access_key_id, secret_access_key
        Credentials; default: botocore's usual chain (environment, profile, role).
    """

    def __init__(
        self, region: str | None = None, *, access_key_id: str | None = None, secret_access_key: str | None = None
    ) -> None:
        try:
            import botocore.session
        except ImportError:
            raise BadInput("AWS support needs botocore: pip install 'flowrig[aws]'") from None
        with aws_errors("loading the AWS configuration"):
            self._session = botocore.session.get_session()
            if access_key_id and secret_access_key:
                self._session.set_credentials(access_key_id, secret_access_key)
            self.region_name = region or self._session.get_config_variable("region")
            if not self.region_name:
                raise BadInput("no AWS region: pass --region or set AWS_REGION")
            if self._session.get_credentials() is None:
                raise BadInput(
                    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                    "or AWS_PROFILE"
                )
        self._clients: dict[str, Any] = {}
        self._caller: Caller | None = None

    def client(self, service: str) -> Any:
        """A client with few retries and a short connect timeout, made once per service."""
        if service not in self._clients:
            from botocore.config import Config

            config = Config(
                retries={
                    "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS") or MAX_ATTEMPTS),
                    "mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                },
                connect_timeout=CONNECT_TIMEOUT,
            )
            self._clients[service] = self._session.create_client(
                service, region_name=self.region_name, config=config
            )
        return self._clients[service]

    @property
    def partition(self) -> str:
        """The region's partition (``aws``, ``aws-cn``, ``aws-us-gov``), for ARNs."""
        return self._session.get_partition_for_region(self.region_name)

    def caller(self) -> "Caller":
        """Who the credentials are: their account and IAM's id of the caller (one STS
        call, made once per session).

        Raises
        ------
        BadInput
            When the caller's id cannot be a tag value (see :func:`~flowrig.backends.aws.policies.check_owner`).
        """
        if self._caller is None:
            with aws_errors("asking AWS who the credentials belong to"):
                found = self.client("sts").get_caller_identity()
            try:
                user_id = check_owner(str(found["UserId"]))
            except ValueError as exc:
                raise BadInput(str(exc)) from None
            self._caller = Caller(Account(self.partition, str(found["Account"])), user_id)
        return self._caller

    def account(self) -> Account:
        """The partition and the account the credentials belong to."""
        return self.caller().account


@dataclass(frozen=True)
class Caller:
    """The account of the credentials, and the caller's id as IAM's ``aws:userid``
    gives it: the owner tag of everything the caller makes."""

    account: Account
    user_id: str


def no_such_entity(exc: Exception) -> bool:
    return getattr(exc, "response", {}).get("Error", {}).get("Code") == "NoSuchEntity"


def denied(exc: Exception) -> bool:
    """Whether AWS refused a call for want of a permission."""
    error = getattr(exc, "response", {}).get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    return code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403") or (
        "not authorized to perform" in message
    )


def session(region: str | None = None, **credentials: str | None) -> Session:
    """A :class:`Session`, its region and credentials checked before any call is made.

    Raises
    ------
    BadInput
        When botocore is missing, or no region or credentials are configured.
    """
    return Session(region, **credentials)
