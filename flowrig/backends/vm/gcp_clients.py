"""The ``gcp`` backend's one boundary with Google's SDK: its clients, its errors as
flowrig's, and labels as Google allows them.

The API clients are made in :class:`GCPClients`: ``google.auth.default()`` and
googleapiclient's ``compute``, ``secretmanager``, ``iam`` and (for an image in Artifact
Registry) ``artifactregistry`` v1 from the discovery documents that ship with it (nothing
fetched, nothing cached), each request on its own HTTP connection (dask-cloudprovider's
``build_request``: httplib2 is not thread-safe, and the pool calls from threads). The
cloud itself is :mod:`.gcp_cloud`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from flowrig.errors import BadInput, InfrastructureError, one_line

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def http_status(exc: BaseException) -> int:
    """The HTTP status of an API error (0 when it carries none)."""
    return int(getattr(getattr(exc, "resp", None), "status", 0) or 0)


def gone(exc: BaseException) -> bool:
    """Whether an error says the resource does not exist (any more)."""
    return http_status(exc) == 404


def retryable(exc: BaseException) -> bool:
    """Whether an error says "not now": a conflict, throttling, a server error, or in use."""
    code = http_status(exc)
    in_use = "resourceInUseByAnotherResource" in str(exc) or "resourceNotReady" in str(exc)
    return code in (409, 429) or code >= 500 or (code == 400 and in_use)


def gcp_label(text: str) -> str:
    """``text`` as a label key or value: lower case, digits, ``_`` and ``-``, 63 at most."""
    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]


def gcp_labels(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags as labels; a key must start with a letter."""
    labels = {}
    for key, value in tags.items():
        name = gcp_label(key)
        labels[name if name[:1].isalpha() else gcp_label(f"k{name}")] = gcp_label(value)
    return labels


@contextmanager
def gcp_errors(action: str) -> Iterator[None]:
    """Google's errors while doing ``action`` as one-line flowrig errors."""
    from google.auth import exceptions as gx
    from googleapiclient.errors import HttpError

    try:
        yield
    except HttpError as exc:
        raise InfrastructureError(
            f"Google Cloud refused {action}: {http_status(exc)} {one_line(exc.reason or exc, 300)}"
        ) from None
    except gx.RefreshError as exc:
        raise BadInput(f"the Google credentials were refused while {action}: {one_line(exc, 200)}") from None
    except (gx.GoogleAuthError, OSError) as exc:
        raise InfrastructureError(f"cannot reach Google Cloud while {action}: {one_line(exc, 300)}") from None


class GCPClients:
    """Credentials, their project, and the API clients (the only place they are made)."""

    def __init__(self) -> None:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from googleapiclient.discovery import build

        try:
            self.credentials, self.project = google.auth.default(scopes=SCOPES)
        except DefaultCredentialsError as exc:
            raise BadInput(
                f"no usable Google credentials ({one_line(exc, 160)}): run gcloud auth application-default login "
                "or set GOOGLE_APPLICATION_CREDENTIALS"
            ) from None
        from dask_cloudprovider.gcp.utils import build_request

        def service(name: str) -> Any:
            return build(name, "v1", credentials=self.credentials, cache_discovery=False,
                         requestBuilder=build_request(self.credentials))

        self._service = service
        self.compute, self.secretmanager, self.iam = service("compute"), service("secretmanager"), service("iam")
        self._artifactregistry: Any = None

    @property
    def artifactregistry(self) -> Any:
        """Artifact Registry's client, made for the runs whose image is there."""
        if self._artifactregistry is None:
            self._artifactregistry = self._service("artifactregistry")
        return self._artifactregistry
