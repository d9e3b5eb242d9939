"""The deployment ``flowrig deploy`` wants, as data: rendered from a project, its
image and the command line, compared with the server's, written as prefect.yaml.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flowrig import layout
from flowrig.errors import BadInput


class DeploymentSpec(BaseModel):
    """A Prefect deployment of a flowrig image, in the Prefect API's own terms.

    ``schedules`` holds canonical schedule data
    (:func:`flowrig.deploy.schedules.canonical`); ``paused`` ``None`` means "as it is"
    (a new deployment is active).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    flow_name: str
    name: str
    entrypoint: str
    #: Where the flow is in the image, as ``prefect deploy`` records it for an image
    #: that carries its code (the image's entry point runs the baked project anyway).
    pull_steps: list[dict[str, Any]] = Field(default_factory=lambda: [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(layout.IMAGE_PROJECT_DIR)}}
    ])
    path: str | None = None
    work_pool_name: str
    work_queue_name: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    parameter_openapi_schema: dict[str, Any] = Field(default_factory=dict)
    enforce_parameter_schema: bool = True
    schedules: list[dict[str, Any]] = Field(default_factory=list)
    paused: bool | None = None
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    version: str | None = None
    job_variables: dict[str, Any] = Field(default_factory=dict)

    @property
    def full_name(self) -> str:
        """``FLOW/DEPLOYMENT``, as Prefect names a deployment."""
        return f"{self.flow_name}/{self.name}"


def check_name(name: str) -> str:
    """A deployment name Prefect accepts and a ``FLOW/NAME`` lookup can find.

    Raises
    ------
    BadInput
        For an empty name or one holding ``/``, ``%``, ``&``, ``>`` or ``<``.
    """
    if not name.strip() or any(char in name for char in "/%&><"):
        raise BadInput(f"deployment name {name!r} is not valid: use a non-empty name without / % & > <")
    return name


def check_parameters(parameters: dict[str, Any], schema: dict[str, Any], flow_name: str, *,
                     require_all: bool) -> None:
    """Check a deployment's parameters against the flow's schema, as Prefect will
    before it creates each of the deployment's flow runs.

    Parameters
    ----------
    require_all
        Also require every parameter without a default: a scheduled run has no one to
        give it one.

    Raises
    ------
    BadInput
        One line naming the parameter: unknown, missing, or of the wrong type.
    """
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    properties = schema.get("properties") or {}
    unknown = sorted(set(parameters) - set(properties))
    if unknown:
        raise BadInput(
            f"unknown parameter {unknown[0]!r} for flow {flow_name!r}; it takes: "
            f"{', '.join(sorted(properties)) or 'no parameters'}"
        )
    if require_all:
        missing = [name for name in schema.get("required") or [] if name not in parameters]
        if missing:
            raise BadInput(
                f"flow {flow_name!r} requires parameter {missing[0]!r}, which scheduled runs would not get: "
                f"pass --param {missing[0]}=VALUE"
            )
    try:
        validate(parameters, schema, raise_on_error=True, ignore_required=True)
    except ValidationError as exc:
        message = " ".join(str(exc).split())
        raise BadInput(f"invalid parameter for flow {flow_name!r}: {message}") from None
