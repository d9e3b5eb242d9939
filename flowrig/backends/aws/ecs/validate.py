"""Checks on ECS inputs, run before anything is written or sent to AWS.

Fargate accepts only some CPU/memory pairs, and AWS reports a wrong one only at
registration time; a task definition that does not match the ECS API is caught here
against botocore's own service model, so a bad file is never written.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

from flowrig.common.environ import check_env_name
from flowrig.errors import BadInput
from flowrig.project.secret_rules import secret_looking, value_secret

if TYPE_CHECKING:
    from flowrig.backends.aws.ecs.options import ECSOptions
    from flowrig.backends.markets import SpotSetting

#: The roles a task definition can be rendered for.
ROLES = ("runner", "scheduler", "worker")


def _steps(first: int, last: int, step: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1, step))


#: Fargate (Linux) task sizes: CPU units -> the memory values (MiB) allowed with it.
#: https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html
FARGATE_MEMORY: Mapping[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: _steps(1024, 4096, 1024),
    1024: _steps(2048, 8192, 1024),
    2048: _steps(4096, 16384, 1024),
    4096: _steps(8192, 30720, 1024),
    8192: _steps(16384, 61440, 4096),
    16384: _steps(32768, 122880, 8192),
}

#: Family names: up to 255 letters, digits, hyphens and underscores (ECS's rule).
_FAMILY = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
#: Secret and environment names as ECS and shells accept them.


def check_role(role: str) -> str:
    """Return ``role`` when it is one of :data:`ROLES`.

    Raises
    ------
    BadInput
        For any other name.
    """
    if role not in ROLES:
        raise BadInput(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


def check_fargate_size(role: str, cpu: int, memory: int) -> None:
    """Check that ``cpu`` and ``memory`` form a task size Fargate accepts.

    Raises
    ------
    BadInput
        Naming the valid CPU values, or the valid memory values for ``cpu``.
    """
    if cpu not in FARGATE_MEMORY:
        valid = ", ".join(str(value) for value in FARGATE_MEMORY)
        raise BadInput(f"{role} cpu {cpu} is not a Fargate size: use one of {valid} (CPU units)")
    allowed = FARGATE_MEMORY[cpu]
    if memory not in allowed:
        valid = ", ".join(str(value) for value in allowed)
        raise BadInput(
            f"{role} memory {memory} MiB does not go with cpu {cpu} on Fargate: "
            f"use one of {valid} (MiB)"
        )


def check_family(family: str) -> str:
    """Return ``family`` when ECS accepts it as a task definition family.

    Raises
    ------
    BadInput
        When it has characters other than letters, digits, ``-`` and ``_`` or is too long.
    """
    if not _FAMILY.match(family):
        raise BadInput(
            f"task definition family {family!r} is not valid: use up to 255 letters, "
            "digits, '-' and '_' (set --project to change it)"
        )
    return family


def check_role_arn(option: str, arn: str | None) -> str | None:
    """Return ``arn`` when it looks like an IAM role ARN (or is ``None``).

    Raises
    ------
    BadInput
        Naming ``option`` and the expected form.
    """
    if arn is not None and not _ROLE_ARN.match(arn):
        raise BadInput(f"{option} {arn!r} is not an IAM role ARN: use arn:aws:iam::ACCOUNT:role/NAME")
    return arn


def check_user_environment(
    environment: Mapping[str, str], secrets: Mapping[str, str], allowed: frozenset[str] = frozenset()
) -> None:
    """Check the ``environment`` and ``secrets`` options of the ECS backends.

    Plain values are visible to anyone who may describe the task definition, so a
    variable whose name or value says it is secret is refused with the way to pass it
    instead, unless ``allowed`` (``[build] allow_environment``) names it.

    Raises
    ------
    BadInput
        A name that is not a variable name, a secret-looking plain variable, or a
        ``secrets`` value that is not a Secrets Manager or SSM ARN.
    """
    for name in [*environment, *secrets]:
        check_env_name("variable", name)
    for name, value in environment.items():
        # The rules flowrig.toml's options are checked with, so that no variable passes
        # one check and fails the other.
        if name not in allowed and (secret_looking(name) or value_secret(str(value), name) is not None):
            raise BadInput(
                f"environment variable {name} looks like a secret (by its name or value), and plain values are "
                f"readable by anyone who may describe the task definition: store it in Secrets Manager and set "
                f'secrets = {{ {name} = "arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME" }} in [cluster.options]'
            )
    for name, value_from in secrets.items():
        if not re.match(r"^arn:aws[a-z-]*:(secretsmanager|ssm):", value_from):
            raise BadInput(
                f"secrets.{name} = {value_from!r} is not a Secrets Manager or SSM parameter ARN: "
                "use arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME or arn:aws:ssm:REGION:ACCOUNT:parameter/NAME"
            )


def check_spot(options: "ECSOptions", fargate_workers: bool) -> "SpotSetting":
    """The workers' ``spot`` setting, checked with what it depends on; the scheduler is
    never on Spot.

    Raises
    ------
    BadInput
        Both ``spot`` and ``fargate_spot`` set; Spot for workers not on Fargate without
        ``spot_capacity_provider``; a
        launch type or capacity provider strategy in ``worker_task_kwargs`` beside
        ``spot``; Fargate Spot named in ``scheduler_task_kwargs``.
    """
    spot = options.worker_spot()
    strategy = options.scheduler_task_kwargs.get("capacityProviderStrategy")
    if "FARGATE_SPOT" in str(strategy) or options.scheduler_task_kwargs.get("launchType") == "FARGATE_SPOT":
        raise BadInput(
            "scheduler_task_kwargs puts the scheduler on Fargate Spot, and losing the scheduler ends the run: "
            "drop capacityProviderStrategy from scheduler_task_kwargs (spot applies to workers only)"
        )
    if not spot:
        return spot
    if not fargate_workers and not options.spot_capacity_provider:
        key = "spot" if "spot" in options.model_fields_set else "fargate_spot"
        value = "true" if spot is True else '"fallback"'
        raise BadInput(
            f"{key} = {value} asks for Spot workers, which run on the cluster's own capacity here "
            f"(fargate_workers = false): set spot_capacity_provider to a capacity provider of Spot instances, "
            f"set fargate_workers = true for Fargate Spot, or drop {key}"
        )
    given = sorted(set(options.worker_task_kwargs) & {"launchType", "capacityProviderStrategy"})
    if given:
        raise BadInput(
            f"worker_task_kwargs sets {' and '.join(given)}, which spot decides: drop {' and '.join(given)} "
            "from worker_task_kwargs, or drop spot"
        )
    return spot


def parse_pairs(kind: str, pairs: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """Parse ``NAME=VALUE`` command line items into a dict (later items win).

    Raises
    ------
    BadInput
        For an item without ``=`` or with an empty name.
    """
    result: dict[str, str] = {}
    for item in pairs or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BadInput(f"{kind} {item!r} is not NAME=VALUE")
        result[name] = value
    return result


def _shape(operation: str, member: str | None = None) -> Any:
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model(operation).input_shape
    return shape.members[member] if member else shape


def _check(params: Mapping[str, Any], shape: Any, what: str) -> None:
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(dict(params), shape)
    if report.has_errors():
        # The report has one line per problem; a user gets them on one line.
        problems = "; ".join(
            line.strip() for line in report.generate_report().splitlines() if line.strip()
        )
        raise BadInput(f"{what} does not match the ECS API: {problems}")


def check_task_definition(params: Mapping[str, Any]) -> None:
    """Validate ``RegisterTaskDefinition`` parameters against botocore's ECS model.

    Raises
    ------
    BadInput
        With every mismatch (unknown key, wrong type, missing required key) on one line.
    """
    _check(params, _shape("RegisterTaskDefinition"), f"task definition {params.get('family')!r}")


def check_task_overrides(overrides: Mapping[str, Any]) -> None:
    """Validate a ``RunTask`` ``overrides`` object against botocore's ECS model.

    Raises
    ------
    BadInput
        With every mismatch on one line.
    """
    _check(overrides, _shape("RunTask", "overrides"), "the task overrides")


def check_run_task(params: Mapping[str, Any]) -> None:
    """Validate ``RunTask`` parameters against botocore's ECS model.

    Raises
    ------
    BadInput
        With every mismatch on one line.
    """
    _check(params, _shape("RunTask"), "the RunTask request")
