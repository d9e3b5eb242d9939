"""``flowrig ecs task-definitions --register``: the project's task definitions, registered."""

from __future__ import annotations

from typing import Any, Mapping

from flowrig.backends.aws.session import Session, aws_errors


def register_task_definitions(
    aws: Session, task_definitions: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """Register each task definition; return ``role -> taskDefinitionArn``."""
    ecs = aws.client("ecs")
    arns = {}
    for role, params in task_definitions.items():
        with aws_errors(f"registering the {role} task definition"):
            response = ecs.register_task_definition(**params)
        arns[role] = response["taskDefinition"]["taskDefinitionArn"]
    return arns
