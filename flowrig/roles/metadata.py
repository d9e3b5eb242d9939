"""Interruption notices read from the cloud's metadata service, for a worker's drain.

A Spot or preemptible worker is told that it will be taken back, and when, by its
platform. The drain supervisor (:mod:`flowrig.roles.drain`) watches the one its
environment names (``FLOWRIG_SPOT_NOTICE``) in a thread of its own:

``ecs``
    The task metadata endpoint v4 (``$ECS_CONTAINER_METADATA_URI_V4/task``): a task's
    ``DesiredStatus`` turns ``STOPPED`` when ECS stops it, Fargate Spot's two-minute
    notice included (SIGTERM comes at the same time; whichever is first counts).
``ec2``
    IMDSv2: a token (``PUT /latest/api/token``), then
    ``GET /latest/meta-data/spot/instance-action``, 404 until it holds
    ``{"action": "terminate" | "stop", "time": "2026-12-07T03:00:00Z"}``. The endpoint is
    ``$AWS_EC2_METADATA_SERVICE_ENDPOINT`` (botocore's name) or ``http://169.254.169.254``.
``gcp``
    ``/computeMetadata/v1/instance/preempted`` (``Metadata-Flavor: Google``) turns
    ``TRUE`` about 30 s before the VM stops; read with ``wait_for_change``. The host is
    ``$GCE_METADATA_HOST`` or ``metadata.google.internal``.
``azure``
    Scheduled events (``/metadata/scheduledevents``, ``Metadata: true``): an event of
    type ``Preempt`` for this VM, which goes at its ``NotBefore``. The endpoint is
    ``$FLOWRIG_AZURE_METADATA`` or ``http://169.254.169.254``.

Watching is never fatal: an endpoint that does not answer is asked again, and SIGTERM
still starts a drain. Requests go straight to the endpoint: never through an HTTP
proxy of the environment (which would get the IMDS token) and never after a redirect;
answers are read up to :data:`MAX_BYTES`, and a notice's deadline is kept within
:data:`LONGEST_NOTICE` seconds, whatever the endpoint says.

May import: the standard library only.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Mapping

#: The notice kinds ``FLOWRIG_SPOT_NOTICE`` takes.
KINDS = ("ecs", "ec2", "gcp", "azure")
#: Seconds between two questions to a metadata endpoint.
POLL_SECONDS = 5.0
#: Seconds one request may take (a GCP ``wait_for_change`` waits longer, below).
REQUEST_TIMEOUT = 2.0
#: Seconds a GCP ``wait_for_change`` request waits for a change.
GCP_WAIT_SECONDS = 60
#: Seconds kept between a notice's deadline and the platform's kill.
KILL_MARGIN = 10.0
#: Seconds of a GCP preemption notice (it carries no time): 30 s, less a margin.
GCP_NOTICE_SECONDS = 25.0
#: The longest notice believed: Spot gives two minutes.
LONGEST_NOTICE = 120.0
#: The most bytes read from one answer.
MAX_BYTES = 64 * 1024
#: IMDSv2 token lifetime asked for.
TOKEN_TTL = 21600

EC2_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
GCP_HOST_ENV = "GCE_METADATA_HOST"
AZURE_ENDPOINT_ENV = "FLOWRIG_AZURE_METADATA"
ECS_ENDPOINT_ENV = "ECS_CONTAINER_METADATA_URI_V4"
_LINK_LOCAL = "http://169.254.169.254"

#: Called with the notice's source and its deadline (``time.monotonic()``; ``None``:
#: the supervisor's own budget from now).
Notify = Callable[[str, "float | None"], None]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # a metadata service never redirects: a redirect is an error


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _request(url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None,
             timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
    """``(status, body)`` of one request; ``(0, b"")`` when nothing answered."""
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(req, timeout=timeout) as answer:
            return answer.status, answer.read(MAX_BYTES)
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, ValueError):
        return 0, b""


def deadline_at(when: datetime, *, now: float | None = None, wall: float | None = None) -> float:
    """The ``time.monotonic()`` deadline for a notice that the platform acts on at
    ``when``: :data:`KILL_MARGIN` before it, and never more than :data:`LONGEST_NOTICE`
    seconds away, nor in the past."""
    now = time.monotonic() if now is None else now
    wall = time.time() if wall is None else wall
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    left = when.timestamp() - wall - KILL_MARGIN
    return now + min(max(left, 0.0), LONGEST_NOTICE)


# --- one check per platform: a notice (source, deadline) or None ----------------------


def check_ecs(environ: Mapping[str, str], state: dict) -> tuple[str, float | None] | None:
    base = environ.get(ECS_ENDPOINT_ENV)
    if not base:
        return None
    status, body = _request(base.rstrip("/") + "/task")
    task = _json(body) if status == 200 else None
    if isinstance(task, dict) and task.get("DesiredStatus") == "STOPPED":
        return "the ECS task is stopping (DesiredStatus STOPPED)", None
    return None


def check_ec2(environ: Mapping[str, str], state: dict) -> tuple[str, float | None] | None:
    base = (environ.get(EC2_ENDPOINT_ENV) or _LINK_LOCAL).rstrip("/")
    for _ in range(2):
        if not state.get("token"):
            status, body = _request(base + "/latest/api/token", method="PUT",
                                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)})
            if status != 200 or not body:
                return None
            state["token"] = body.decode("ascii", "replace").strip()
        status, body = _request(base + "/latest/meta-data/spot/instance-action",
                                headers={"X-aws-ec2-metadata-token": state["token"]})
        if status == 401:  # the token expired: one more with a new one
            state.pop("token", None)
            continue
        action = _json(body) if status == 200 else None
        if isinstance(action, dict) and action.get("action") in ("terminate", "stop", "hibernate"):
            when = _iso(action.get("time"))
            deadline = deadline_at(when) if when else None
            return f"an EC2 Spot interruption ({action['action']})", deadline
        return None
    return None


def check_gcp(environ: Mapping[str, str], state: dict) -> tuple[str, float | None] | None:
    host = environ.get(GCP_HOST_ENV) or "metadata.google.internal"
    url = f"http://{host}/computeMetadata/v1/instance/preempted"
    wait = state.get("waited", False)
    if wait:
        url += f"?wait_for_change=true&timeout_sec={GCP_WAIT_SECONDS}"
    status, body = _request(url, headers={"Metadata-Flavor": "Google"},
                            timeout=GCP_WAIT_SECONDS + REQUEST_TIMEOUT if wait else REQUEST_TIMEOUT)
    state["waited"] = status == 200
    if status == 200 and body.strip().upper() == b"TRUE":
        return "a GCP preemption", time.monotonic() + GCP_NOTICE_SECONDS
    return None


def check_azure(environ: Mapping[str, str], state: dict) -> tuple[str, float | None] | None:
    base = (environ.get(AZURE_ENDPOINT_ENV) or _LINK_LOCAL).rstrip("/")
    headers = {"Metadata": "true"}
    if "vm" not in state:
        status, body = _request(base + "/metadata/instance/compute/name?api-version=2021-02-01&format=text",
                                headers=headers)
        state["vm"] = body.decode("utf-8", "replace").strip() if status == 200 else ""
    status, body = _request(base + "/metadata/scheduledevents?api-version=2020-07-01", headers=headers)
    document = _json(body) if status == 200 else None
    events = document.get("Events") if isinstance(document, dict) else None
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or event.get("EventType") != "Preempt":
            continue
        resources = event.get("Resources")
        if state["vm"] and isinstance(resources, list) and resources and state["vm"] not in resources:
            continue  # another VM's
        when = _rfc1123(event.get("NotBefore"))
        return "an Azure Spot eviction (Preempt)", deadline_at(when) if when else None
    return None


CHECKS = {"ecs": check_ecs, "ec2": check_ec2, "gcp": check_gcp, "azure": check_azure}


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _iso(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _rfc1123(text: object) -> datetime | None:
    try:
        return parsedate_to_datetime(str(text))
    except (TypeError, ValueError, IndexError):
        return None


def watch(kind: str, environ: Mapping[str, str], notify: Notify, *, interval: float = POLL_SECONDS,
          stop: threading.Event | None = None) -> threading.Thread | None:
    """Watch the ``kind`` metadata for a notice in a daemon thread; call ``notify`` once.

    An unknown ``kind`` is said on stderr and watched for by nobody (SIGTERM still
    drains). Returns the thread (``None`` for an unknown kind).
    """
    check = CHECKS.get(kind.strip().lower())
    if check is None:
        import sys

        print(f"flowrig-drain: FLOWRIG_SPOT_NOTICE={kind!r} is not one of {', '.join(KINDS)}: "
              "only SIGTERM starts a drain", file=sys.stderr, flush=True)
        return None
    stop = stop or threading.Event()

    def run() -> None:
        state: dict = {}
        while not stop.is_set():
            try:
                found = check(environ, state)
            except Exception:  # never fatal: asked again
                found = None
            if found is not None:
                notify(*found)
                return
            stop.wait(interval)

    thread = threading.Thread(target=run, name=f"flowrig-notice-{kind}", daemon=True)
    thread.start()
    return thread
