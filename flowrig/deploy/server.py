"""Make a Prefect server hold a :class:`~flowrig.deploy.spec.DeploymentSpec`, writing
only what differs.

The deployment is read first; a field is written only when the server's value is not
the wanted one, and schedules are matched one by one (kept, added, removed), so a
second deploy with the same inputs writes nothing and the runs a schedule already
planned stay as they are. Every error the API gives is one line: an unknown pool or a
refused deployment is bad input, an API that cannot be reached infrastructure.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from flowrig.deploy import schedules as schedule_mod
from flowrig.deploy.spec import DeploymentSpec
from flowrig.errors import BadInput, InfrastructureError, one_line

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

#: Fields compared and written as they are (schedules and ``paused`` have rules of their own).
PLAIN_FIELDS = (
    "version", "description", "parameters", "tags", "work_pool_name", "path", "entrypoint",
    "job_variables", "parameter_openapi_schema", "enforce_parameter_schema", "pull_steps",
)


@dataclass(frozen=True)
class ApplyResult:
    """What :func:`apply` did: ``created``, ``updated`` (with the fields it wrote) or
    ``unchanged``."""

    action: str
    deployment_id: str
    changed: tuple[str, ...] = ()
    schedules: tuple[str, ...] = field(default=())


def api_url() -> str:
    """The Prefect API deployments go to.

    Raises
    ------
    BadInput
        When none is configured: a deployment on a temporary server would be gone with it.
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise BadInput("no Prefect API to deploy to: set PREFECT_API_URL to your Prefect server's API URL")
    return str(url)


@contextlib.contextmanager
def api_errors(url: str, doing: str) -> Iterator[None]:
    """Turn what the Prefect client raises into one line and an exit code."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        yield
    except PrefectHTTPStatusError as exc:
        status = exc.response.status_code
        try:
            detail = exc.response.json().get("detail", exc.response.text)
        except ValueError:
            detail = exc.response.text
        detail = one_line(detail if isinstance(detail, str) else json.dumps(detail))
        if status in (401, 403):
            raise BadInput(
                f"the Prefect API at {url} refused the credentials while {doing}: set PREFECT_API_KEY or "
                "PREFECT_API_AUTH_STRING"
            ) from None
        if status in (400, 404, 409, 422):
            raise BadInput(f"the Prefect API at {url} refused {doing}: {detail}") from None
        raise InfrastructureError(f"the Prefect API at {url} failed while {doing} (HTTP {status}): {detail}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise InfrastructureError(
            f"cannot reach the Prefect API at {url} ({one_line(exc)}): start it, or fix PREFECT_API_URL"
        ) from None


def read_pool(client: "SyncPrefectClient", name: str, url: str) -> Any:
    """The work pool ``name``.

    Raises
    ------
    BadInput
        When the server has no such pool (with the command that makes one).
    """
    from prefect.exceptions import ObjectNotFound

    try:
        with api_errors(url, f"reading work pool {name!r}"):
            return client.read_work_pool(name)
    except ObjectNotFound:
        raise BadInput(
            f"work pool {name!r} does not exist on {url}: create it with prefect work-pool create {name} "
            f"--type TYPE --base-job-template FILE (flowrig deploy --pool-template TYPE > FILE)"
        ) from None


def _read_existing(client: "SyncPrefectClient", spec: DeploymentSpec, url: str) -> Any | None:
    from prefect.exceptions import ObjectNotFound

    try:
        with api_errors(url, f"reading deployment {spec.full_name}"):
            return client.read_deployment_by_name(spec.full_name)
    except ObjectNotFound:
        return None


def _wanted_value(spec: DeploymentSpec, name: str) -> Any:
    value = getattr(spec, name)
    # The API stores a missing description of a new deployment as the text "None":
    # flowrig sends an empty one, and reads both as none.
    if name == "description":
        return value or ""
    return _without_empty_definitions(value) if name == "parameter_openapi_schema" else value


def _without_empty_definitions(schema: Any) -> Any:
    """A parameter schema without an empty ``definitions``, which Prefect writes or not
    depending on how the schema was made."""
    if isinstance(schema, dict) and not schema.get("definitions"):
        return {key: value for key, value in schema.items() if key != "definitions"}
    return schema


def _existing_value(existing: Any, name: str) -> Any:
    value = getattr(existing, name)
    if name == "description":
        return "" if value in (None, "None") else value
    if name == "parameter_openapi_schema" and value is not None and not isinstance(value, dict):
        value = value.model_dump() if hasattr(value, "model_dump") else dict(value)
    if name in ("parameters", "job_variables", "parameter_openapi_schema") and value is None:
        return {}
    if name == "parameter_openapi_schema":
        return _without_empty_definitions(value)
    if name == "tags":
        return list(value or [])
    return value


def _normal(value: Any) -> Any:
    """A value as JSON would carry it, so that tuples and lists, ints and floats compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def changed_fields(spec: DeploymentSpec, existing: Any) -> list[str]:
    """The fields of ``spec`` the server's deployment ``existing`` does not hold (pure)."""
    changed = [
        name for name in PLAIN_FIELDS if _normal(_wanted_value(spec, name)) != _normal(_existing_value(existing, name))
    ]
    if spec.work_queue_name is not None and spec.work_queue_name != existing.work_queue_name:
        changed.append("work_queue_name")
    if spec.paused is not None and bool(spec.paused) != bool(existing.paused):
        changed.append("paused")
    return changed


def _schedule_changes(spec: DeploymentSpec, existing_schedules: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """(existing schedules to remove, wanted schedules to add); an inactive one that is
    wanted counts as removed and added again."""
    wanted = [_normal(s) for s in spec.schedules]
    remove: list[Any] = []
    for schedule in existing_schedules:
        data = _normal(schedule_mod.canonical(schedule.schedule))
        if data in wanted and schedule.active and not schedule.parameters:
            wanted.remove(data)
        else:
            remove.append(schedule)
    return remove, wanted


def apply(client: "SyncPrefectClient", spec: DeploymentSpec, url: str) -> ApplyResult:
    """Create the deployment, or update what differs, or nothing.

    Raises
    ------
    BadInput
        When the API refuses the deployment (its job variables do not fit the pool's
        template, say).
    flowrig.errors.InfrastructureError
        When the API cannot be reached or fails.
    """
    from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentUpdate

    described = tuple(schedule_mod.describe(schedule_mod.from_canonical(s)) for s in spec.schedules)
    existing = _read_existing(client, spec, url)
    if existing is None:
        with api_errors(url, f"creating deployment {spec.full_name}"):
            flow_id = client.create_flow_from_name(spec.flow_name)
            deployment_id = client.create_deployment(
                flow_id=flow_id,
                name=spec.name,
                version=spec.version,
                schedules=[
                    DeploymentScheduleCreate(schedule=schedule_mod.from_canonical(s), active=True)
                    for s in spec.schedules
                ],
                parameters=spec.parameters,
                description=_wanted_value(spec, "description"),
                work_queue_name=spec.work_queue_name,
                work_pool_name=spec.work_pool_name,
                tags=spec.tags,
                path=spec.path,
                entrypoint=spec.entrypoint,
                pull_steps=spec.pull_steps,
                parameter_openapi_schema=_wanted_value(spec, "parameter_openapi_schema"),
                paused=bool(spec.paused),
                enforce_parameter_schema=spec.enforce_parameter_schema,
                job_variables=spec.job_variables,
            )
        return ApplyResult("created", str(deployment_id), schedules=described)
    changed = changed_fields(spec, existing)
    remove, add = _schedule_changes(spec, list(existing.schedules or []))
    with api_errors(url, f"updating deployment {spec.full_name}"):
        if changed:
            update = DeploymentUpdate(**{name: _wanted_value(spec, name) for name in changed})
            client.update_deployment(existing.id, update)
        for schedule in remove:
            client.delete_deployment_schedule(existing.id, schedule.id)
        if add:
            client.create_deployment_schedules(existing.id, [(schedule_mod.from_canonical(s), True) for s in add])
    if remove or add:
        changed.append("schedules")
    return ApplyResult("updated" if changed else "unchanged", str(existing.id), tuple(changed), described)
