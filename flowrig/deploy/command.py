"""``flowrig deploy``: from a project, its image and a command line to a deployment.

Order of work: everything that can be checked without the Prefect API is checked
first (the project, the flow's facts read from its source, the image and its manifest,
schedules, parameters, variables), so bad input never leaves half a deployment; then
the pool is read, the job variables made for its type, and the deployment written
(or prefect.yaml, with ``--write``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from flowrig.deploy import pool_templates, pools, schedules
from flowrig.deploy.image import ImageFacts, check_image_carries, inspect_image
from flowrig.deploy.spec import DeploymentSpec, check_name, check_parameters
from flowrig.errors import BadInput


@dataclass(frozen=True)
class EcsInputs:
    """Where and as what an ECS pool's worker starts the runner task (``None``: from
    the project's ``[cluster.options]``, else the default)."""

    region: str | None = None
    execution_role_arn: str | None = None
    task_role_arn: str | None = None
    cpu: int | None = None
    memory: int | None = None
    cluster: str | None = None
    vpc: str | None = None
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    public_ip: bool | None = None
    launch_type: str = "FARGATE"
    log_group: str | None = None
    secrets: Mapping[str, str] = field(default_factory=dict)
    allow_local_runner: bool = False


@dataclass(frozen=True)
class DeployInputs:
    """What ``flowrig deploy`` was given on its command line."""

    project_dir: Path
    image: str
    pool: str
    name: str | None = None
    params: tuple[str, ...] = ()
    params_file: Path | None = None
    cron: tuple[str, ...] = ()
    interval: tuple[str, ...] = ()
    rrule: tuple[str, ...] = ()
    timezone: str | None = None
    anchor_date: str | None = None
    paused: bool | None = None
    tags: tuple[str, ...] = ()
    description: str | None = None
    version: str | None = None
    work_queue: str | None = None
    pull_policy: str = pools.DEFAULT_PULL_POLICY
    network: str | None = None
    env: tuple[str, ...] = ()
    pass_env: tuple[str, ...] = ()
    job_variables: tuple[str, ...] = ()
    ecs: EcsInputs = field(default_factory=EcsInputs)
    write: Path | None = None
    pool_type: str | None = None


def _pairs(flag: str, items: tuple[str, ...]) -> dict[str, str]:
    from flowrig.backends.aws.ecs.validate import parse_pairs

    return parse_pairs(flag, items)


def _env(inputs: DeployInputs) -> dict[str, str]:
    from flowrig.common.environ import check_env_name
    from flowrig.project.secret_rules import secret_looking, value_secret

    env = _pairs("--env", inputs.env)
    for name in [*env, *inputs.pass_env]:
        check_env_name("--env", name)
    for name, value in env.items():
        if secret_looking(name) or value_secret(value, name) is not None:
            raise BadInput(
                f"--env {name} looks like a secret, and a deployment's variables are readable by anyone who may "
                f"read the deployment: on an ecs pool pass --secret {name}=ARN; on a process pool set it in the "
                f"worker's environment and pass --pass-env {name}"
            )
    return env


def _job_variable_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--job-variable {item!r} is not KEY=VALUE (the value is JSON when it parses)")
        try:
            overrides[key.strip()] = json.loads(raw)
        except ValueError:
            overrides[key.strip()] = raw
    return overrides


def _ecs_runner(inputs: DeployInputs, project: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runner's task definition and the network settings of its task."""
    from flowrig.backends.aws.ecs import definitions, taskdefs, validate

    ecs = inputs.ecs
    request = definitions.TaskDefinitionRequest(
        image=inputs.image,
        roles=("runner",),
        sizes={"runner": (ecs.cpu, ecs.memory)},
        execution_role_arn=ecs.execution_role_arn,
        runner_task_role_arn=ecs.task_role_arn,
        region=ecs.region,
        log_group=ecs.log_group,
        secrets=dict(ecs.secrets),
        allow_local_runner=ecs.allow_local_runner,
        runner_role_flag="--task-role-arn",
        local_runner_fix="deploy it to a process or docker pool, ",
    )
    settings, _ = definitions.task_definition_settings(request, project)
    runner = taskdefs.render_task_definition("runner", settings)
    validate.check_task_definition(runner)
    options = definitions.project_options(project)
    given = options.given() if options else {}
    network = {
        "cluster": ecs.cluster or given.get("cluster_arn"),
        "vpc": ecs.vpc or (given.get("vpc") if given.get("vpc") != "default" else None),
        "subnets": tuple(ecs.subnets or given.get("subnets") or ()),
        "security_groups": tuple(ecs.security_groups or given.get("security_groups") or ()),
        # Private unless asked: the project's own rule for its tasks (fargate_use_private_ip).
        "public_ip": ecs.public_ip if ecs.public_ip is not None else not given.get("fargate_use_private_ip", True),
    }
    return runner, network


@dataclass(frozen=True)
class Prepared:
    """Everything checked before the Prefect API is asked anything."""

    project: Any
    flow: Any
    image: ImageFacts
    schedules: list[Any]
    parameters: dict[str, Any]
    env: dict[str, str]


def prepare(inputs: DeployInputs) -> Prepared:
    """Check the project, its flow, the image, schedules, parameters and variables.

    Raises
    ------
    BadInput
        For the first of them that is wrong.
    """
    from flowrig.project import load_project
    from flowrig.project import parameters as params_mod
    from flowrig.project.flow_facts import read_flow_facts

    project = load_project(inputs.project_dir)
    flow = read_flow_facts(project)
    if inputs.name is not None:
        check_name(inputs.name)
    pools.check_pull_policy(inputs.pull_policy)
    found = schedules.build_schedules(inputs.cron, inputs.interval, inputs.rrule, inputs.timezone, inputs.anchor_date)
    # Only the command line's parameters: a deployment never takes FLOWRIG_PARAMETERS of the shell.
    parameters = params_mod.gather(inputs.params, inputs.params_file, environ={})
    check_parameters(parameters, dict(flow.parameter_schema), flow.name, require_all=bool(found))
    env = _env(inputs)
    image = inspect_image(inputs.image)
    check_image_carries(image, flow, project.name)
    return Prepared(project, flow, image, found, parameters, env)


def render_spec(inputs: DeployInputs, ready: Prepared, pool_type: str, template: Mapping[str, Any]) -> DeploymentSpec:
    """The deployment for a pool of ``pool_type`` whose base job template is ``template``."""
    pools.check_pool_type(pool_type)
    job = pools.JobInputs(image=inputs.image, pull_policy=inputs.pull_policy, network=inputs.network, env=ready.env,
                          pass_env=inputs.pass_env, ecs_launch_type=inputs.ecs.launch_type)
    if pool_type == "ecs":
        runner, network = _ecs_runner(inputs, ready.project)
        job = dataclasses.replace(
            job, ecs_runner=runner, ecs_cluster=network["cluster"], ecs_vpc=network["vpc"],
            ecs_subnets=network["subnets"], ecs_security_groups=network["security_groups"],
            ecs_public_ip=network["public_ip"],
        )
    variables = pools.job_variables(pool_type, job)
    variables.update(_job_variable_overrides(inputs.job_variables))
    pools.check_job_variables(inputs.pool, pool_type, variables, template)
    flow = ready.flow
    return DeploymentSpec(
        flow_name=flow.name,
        name=inputs.name or flow.name,
        entrypoint=flow.entrypoint,
        work_pool_name=inputs.pool,
        work_queue_name=inputs.work_queue,
        parameters=ready.parameters,
        parameter_openapi_schema=dict(flow.parameter_schema),
        schedules=[schedules.canonical(s) for s in ready.schedules],
        paused=inputs.paused,
        tags=sorted(set(inputs.tags)),
        description=inputs.description if inputs.description is not None else flow.description,
        version=inputs.version if inputs.version is not None else flow.version,
        job_variables=variables,
    )


def deploy(inputs: DeployInputs) -> dict[str, Any]:
    """Create or update the deployment (or write prefect.yaml); what was done, as data.

    Returns
    -------
    dict
        ``action`` (``created``, ``updated``, ``unchanged``; ``written`` for
        ``--write``), ``deployment``, ``deployment_id``, ``changed``, ``work_pool``,
        ``image``, ``schedules``, ``api_url``, ``file``.

    Raises
    ------
    BadInput
        Bad project, flow, image, schedule, parameter, variable, unknown pool or a pool
        of another type, or a deployment the API refuses.
    flowrig.errors.InfrastructureError
        Docker or the Prefect API cannot be reached.
    """
    ready = prepare(inputs)
    report: dict[str, Any] = {"image": ready.image.as_dict(), "work_pool": {"name": inputs.pool}}
    if inputs.write is not None and inputs.pool_type is not None:
        pool_type = pools.check_pool_type(inputs.pool_type)
        spec = render_spec(inputs, ready, pool_type, pool_templates.pool_template(pool_type))
        return _write_yaml(inputs, ready, spec, report, pool_type)
    from prefect.client.orchestration import get_client

    from flowrig.deploy import server

    url = server.api_url()
    with contextlib.ExitStack() as stack:
        with server.api_errors(url, "connecting"):
            client = stack.enter_context(get_client(sync_client=True))
        pool = server.read_pool(client, inputs.pool, url)
        pool_type = pools.check_pool_type(str(pool.type))
        if inputs.pool_type is not None and inputs.pool_type != pool_type:
            raise BadInput(f"work pool {inputs.pool!r} is of type {pool_type}, not {inputs.pool_type}")
        spec = render_spec(inputs, ready, pool_type, pool.base_job_template or {})
        if inputs.write is not None:
            return _write_yaml(inputs, ready, spec, report, pool_type)
        result = server.apply(client, spec, url)
    report.update(
        action=result.action,
        deployment=spec.full_name,
        deployment_id=result.deployment_id,
        changed=list(result.changed),
        schedules=list(result.schedules),
        paused=spec.paused,
        api_url=url,
    )
    report["work_pool"]["type"] = pool_type
    return report


def _write_yaml(inputs: DeployInputs, ready: Prepared, spec: DeploymentSpec, report: dict[str, Any],
                pool_type: str) -> dict[str, Any]:
    from flowrig.deploy import prefect_yaml

    assert inputs.write is not None
    changed = prefect_yaml.write(spec, inputs.write, ready.project.root, ready.project.name, ready.project.flow_path)
    report.update(
        action="written" if changed else "unchanged",
        deployment=spec.full_name,
        file=str(inputs.write),
        schedules=[schedules.describe(schedules.from_canonical(s)) for s in spec.schedules],
    )
    report["work_pool"]["type"] = pool_type
    return report


def describe_report(report: Mapping[str, Any]) -> str:
    """The one line ``flowrig deploy`` prints without ``--output json``."""
    action, name = report["action"], report["deployment"]
    pool = report["work_pool"]
    where = f"on work pool {pool['name']} ({pool.get('type')})"
    count = len(report.get("schedules") or [])
    timing = f"{count} schedule{'s' if count != 1 else ''}" + (", paused" if report.get("paused") else "")
    if "file" in report:
        if action == "unchanged":
            return f"{report['file']} holds deployment {name} already: nothing written"
        return f"wrote deployment {name} {where} to {report['file']} ({timing})"
    if action == "unchanged":
        return f"deployment {name} {where} is up to date: nothing written"
    if action == "created":
        return f"created deployment {name} {where}: image {report['image']['reference']}, {timing}"
    return f"updated deployment {name} {where}: {', '.join(report['changed'])}"
