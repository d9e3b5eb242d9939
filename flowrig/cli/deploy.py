"""``flowrig deploy PROJECT --image TAG --pool NAME``: the Prefect deployment of a
project's flow for its image, and ``flowrig deploy --pool-template TYPE``.

The command parses and calls :func:`flowrig.deploy.deploy` (or
:func:`flowrig.deploy.pool_template`); Prefect is imported there, not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

_SCHEDULES = "Schedules"
_JOB = "The runner's job"
_ECS = "ECS pools (default: the project's [cluster.options])"


def deploy_command(
    project: Annotated[
        Optional[Path], typer.Argument(help="Flow project directory (holds flowrig.toml).", show_default=False)
    ] = None,
    image: Annotated[
        Optional[str], typer.Option("--image", help="The project's image (flowrig build PROJECT --tag TAG).")
    ] = None,
    pool: Annotated[Optional[str], typer.Option("--pool", help="Work pool of type process, docker or ecs.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Deployment name (default: the flow's name).")] = None,
    param: Annotated[
        Optional[list[str]], typer.Option("--param", help="k=v parameter of the deployment's runs (repeatable).")
    ] = None,
    params_file: Annotated[Optional[Path], typer.Option("--params-file", help="JSON object of parameters.")] = None,
    cron: Annotated[
        Optional[list[str]], typer.Option("--cron", help="Cron schedule, e.g. '0 6 * * *' (repeatable).",
                                          rich_help_panel=_SCHEDULES)
    ] = None,
    interval: Annotated[
        Optional[list[str]], typer.Option("--interval", help="Interval schedule: seconds or 15m, 2h, 1d (repeatable).",
                                          rich_help_panel=_SCHEDULES)
    ] = None,
    rrule: Annotated[
        Optional[list[str]], typer.Option("--rrule", help="RFC 5545 rule, e.g. 'FREQ=DAILY;BYHOUR=6' (repeatable).",
                                          rich_help_panel=_SCHEDULES)
    ] = None,
    timezone: Annotated[
        Optional[str], typer.Option("--timezone", help="IANA time zone of every schedule (default: UTC).",
                                    rich_help_panel=_SCHEDULES)
    ] = None,
    anchor_date: Annotated[
        Optional[str], typer.Option("--anchor-date", help="Start of intervals (ISO; default 2020-01-01T00:00).",
                                    rich_help_panel=_SCHEDULES)
    ] = None,
    paused: Annotated[
        Optional[bool], typer.Option("--paused/--active", help="Pause or resume the deployment (default: a new one "
                                     "is active, an existing one stays as it is).", rich_help_panel=_SCHEDULES)
    ] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Deployment tag (repeatable).")] = None,
    description: Annotated[
        Optional[str], typer.Option("--description", help="Default: the flow's docstring.")
    ] = None,
    version: Annotated[
        Optional[str], typer.Option("--version", help="Deployment version (default: @flow(version=...)).")
    ] = None,
    work_queue: Annotated[Optional[str], typer.Option("--work-queue", help="Queue of the pool.")] = None,
    pull_policy: Annotated[
        str, typer.Option("--pull-policy", help="IfNotPresent, Always or Never (process and docker pools).",
                          rich_help_panel=_JOB)
    ] = "IfNotPresent",
    network: Annotated[
        Optional[str], typer.Option("--network", help="Docker network of the runner container (process pools: "
                                    "default host, to reach the API as the worker does).", rich_help_panel=_JOB)
    ] = None,
    env: Annotated[
        Optional[list[str]], typer.Option("--env", help="NAME=VALUE of the runner (repeatable; no secrets).",
                                          rich_help_panel=_JOB)
    ] = None,
    pass_env: Annotated[
        Optional[list[str]], typer.Option("--pass-env", help="NAME of a process worker's variable its container gets "
                                          "(repeatable).", rich_help_panel=_JOB)
    ] = None,
    job_variable: Annotated[
        Optional[list[str]], typer.Option("--job-variable", help="KEY=VALUE (JSON) job variable over flowrig's "
                                          "(repeatable).", rich_help_panel=_JOB)
    ] = None,
    region: Annotated[Optional[str], typer.Option("--region", help="AWS region (or AWS_REGION).",
                                                  rich_help_panel=_ECS)] = None,
    execution_role_arn: Annotated[
        Optional[str], typer.Option("--execution-role-arn", help="Pulls the image, writes the logs.",
                                    rich_help_panel=_ECS)
    ] = None,
    task_role_arn: Annotated[
        Optional[str], typer.Option("--task-role-arn", help="The runner's role (ecs/fargate projects: one holding "
                                    "`flowrig aws iam-policy --backend ecs`).", rich_help_panel=_ECS)
    ] = None,
    runner_cpu: Annotated[Optional[int], typer.Option("--runner-cpu", help="CPU units of the runner task.",
                                                      rich_help_panel=_ECS)] = None,
    runner_memory: Annotated[Optional[int], typer.Option("--runner-memory", help="Memory (MiB) of the runner task.",
                                                         rich_help_panel=_ECS)] = None,
    ecs_cluster: Annotated[Optional[str], typer.Option("--ecs-cluster", help="Cluster the runner task starts in.",
                                                       rich_help_panel=_ECS)] = None,
    vpc: Annotated[Optional[str], typer.Option("--vpc", help="VPC of the runner task.", rich_help_panel=_ECS)] = None,
    subnet: Annotated[Optional[list[str]], typer.Option("--subnet", help="Subnet of the runner task (repeatable).",
                                                        rich_help_panel=_ECS)] = None,
    security_group: Annotated[
        Optional[list[str]], typer.Option("--security-group", help="Security group of the runner task (repeatable).",
                                          rich_help_panel=_ECS)
    ] = None,
    launch_type: Annotated[
        str, typer.Option("--launch-type", help="FARGATE, FARGATE_SPOT, EC2 or EXTERNAL.", rich_help_panel=_ECS)
    ] = "FARGATE",
    public_ip: Annotated[
        Optional[bool], typer.Option("--public-ip/--private-ip", help="Give the runner task a public address.",
                                     rich_help_panel=_ECS)
    ] = None,
    secret: Annotated[
        Optional[list[str]], typer.Option("--secret", help="NAME=ARN the runner gets from ECS (repeatable).",
                                          rich_help_panel=_ECS)
    ] = None,
    allow_local_runner: Annotated[
        bool, typer.Option("--allow-local-runner", help="Deploy a project whose backend is local to an ECS pool: "
                           "its whole cluster runs in the runner task.", rich_help_panel=_ECS)
    ] = False,
    write: Annotated[
        Optional[Path], typer.Option("--write", help="Write (or update the entry of) this prefect.yaml instead of "
                                     "deploying.")
    ] = None,
    pool_type: Annotated[
        Optional[str], typer.Option("--pool-type", help="The pool's type, so that --write needs no Prefect API.")
    ] = None,
    pool_template: Annotated[
        Optional[str], typer.Option("--pool-template", help="Print the base job template of a pool of this type "
                                    "(process, docker, ecs) and stop.")
    ] = None,
    output: Annotated[str, typer.Option("--output", help="text or json.")] = "text",
) -> None:
    # long: typer reads the command's options from this signature (116 lines, one per
    # option, in help panels); the body that uses them is 61 lines.
    """Create or update the Prefect deployment of PROJECT's flow for its image.

    A second call with the same inputs writes nothing and says so. The flow is never
    imported: its name, parameters and docstring are read from its source and checked
    against the image's manifest.
    """
    from flowrig.errors import BadInput

    if output not in ("text", "json"):
        raise BadInput(f"--output {output!r}: use text or json")
    if pool_template is not None:
        from flowrig.deploy import pool_template as render

        typer.echo(json.dumps(render(pool_template), indent=2, sort_keys=True))
        return
    missing = [flag for flag, value in (("PROJECT", project), ("--image", image), ("--pool", pool)) if not value]
    if missing:
        raise BadInput(f"flowrig deploy needs {', '.join(missing)}: flowrig deploy PROJECT --image TAG --pool NAME")
    assert project is not None and image is not None and pool is not None
    from flowrig.backends.aws.ecs.validate import parse_pairs
    from flowrig.deploy import DeployInputs, EcsInputs, deploy, describe_report

    inputs = DeployInputs(
        project_dir=project,
        image=image,
        pool=pool,
        name=name,
        params=tuple(param or ()),
        params_file=params_file,
        cron=tuple(cron or ()),
        interval=tuple(interval or ()),
        rrule=tuple(rrule or ()),
        timezone=timezone,
        anchor_date=anchor_date,
        paused=paused,
        tags=tuple(tag or ()),
        description=description,
        version=version,
        work_queue=work_queue,
        pull_policy=pull_policy,
        network=network,
        env=tuple(env or ()),
        pass_env=tuple(pass_env or ()),
        job_variables=tuple(job_variable or ()),
        ecs=EcsInputs(
            region=region,
            execution_role_arn=execution_role_arn,
            task_role_arn=task_role_arn,
            cpu=runner_cpu,
            memory=runner_memory,
            cluster=ecs_cluster,
            vpc=vpc,
            subnets=tuple(subnet or ()),
            security_groups=tuple(security_group or ()),
            public_ip=public_ip,
            launch_type=launch_type,
            secrets=parse_pairs("--secret", secret),
            allow_local_runner=allow_local_runner,
        ),
        write=write,
        pool_type=pool_type,
    )
    report = deploy(inputs)
    if output == "json":
        typer.echo(json.dumps(report, sort_keys=True))
    else:
        typer.echo(describe_report(report))
