"""A flow run a Prefect worker started the image for (``PREFECT__FLOW_RUN_ID``): what it
asks for, and the refusal of one that is not the image's flow.

An image carries one project. A deployment that names another flow or entry point
(``other.py:other``) pointed at it would otherwise run the image's own flow under the
other deployment's name and report Completed. Such a flow run is marked Failed in the
API with one line naming both flows, and the run ends with exit 2 before any cluster
starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowrig.errors import BadInput, one_line


@dataclass(frozen=True)
class FlowRunRequest:
    """What a flow run, its flow and its deployment ask the image to run.

    Parameters
    ----------
    flow_run_id
        The flow run's id.
    parameters
        The flow run's parameters.
    flow_name
        The name of the flow the flow run belongs to.
    deployment
        ``FLOW/DEPLOYMENT`` of its deployment, when it has one.
    entrypoint
        The deployment's entry point (``path:function``), when it names one.
    """

    flow_run_id: str
    parameters: dict[str, Any] = field(default_factory=dict)
    flow_name: str | None = None
    deployment: str | None = None
    entrypoint: str | None = None


def read_flow_run(flow_run_id: str) -> FlowRunRequest:
    """Read a flow run, its flow and its deployment from the configured Prefect API.

    Raises
    ------
    BadInput
        When the API cannot give them (an unknown id, a wrong ``PREFECT_API_URL``).
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(flow_run_id)
            flow = client.read_flow(flow_run.flow_id)
            deployment = client.read_deployment(flow_run.deployment_id) if flow_run.deployment_id else None
        except Exception as exc:
            raise BadInput(f"cannot read flow run {flow_run_id} from the Prefect API: {one_line(exc)}") from None
    return FlowRunRequest(
        flow_run_id=flow_run_id,
        parameters=dict(flow_run.parameters or {}),
        flow_name=flow.name,
        deployment=f"{flow.name}/{deployment.name}" if deployment is not None else None,
        entrypoint=deployment.entrypoint if deployment is not None else None,
    )


def mismatch(request: FlowRunRequest, flow_name: str, entrypoint: str) -> str | None:
    """Why the image's flow (``flow_name``, ``entrypoint``) is not the one ``request``
    asks for, as one line; ``None`` when it is."""
    from flowrig.project.flow_facts import same_entrypoint

    if request.flow_name in (None, flow_name) and same_entrypoint(request.entrypoint, entrypoint):
        return None
    asked = f"flow {request.flow_name!r}" + (f" ({request.entrypoint})" if request.entrypoint else "")
    of = f" of deployment {request.deployment}" if request.deployment else ""
    return (
        f"flow run {request.flow_run_id}{of} is for {asked}, but this image runs flow {flow_name!r} "
        f"({entrypoint}): point the deployment at the image built from its flow, or deploy this image with "
        "flowrig deploy"
    )


def refuse_other_flow(request: FlowRunRequest, flow_name: str, entrypoint: str) -> None:
    """Mark the flow run Failed and raise, when it is not for the image's flow.

    Raises
    ------
    BadInput
        With the reason the flow run now holds as its state message.
    """
    reason = mismatch(request, flow_name, entrypoint)
    if reason is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    try:
        with get_client(sync_client=True) as client:
            # Forced: the worker left it Pending, and no engine will ever run it.
            client.set_flow_run_state(request.flow_run_id, Failed(message=reason), force=True)
    except Exception as exc:
        raise BadInput(f"{reason} (marking it Failed failed too: {one_line(exc)})") from None
    raise BadInput(reason)
