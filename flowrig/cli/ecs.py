"""``flowrig ecs``: task definitions for ECS/Fargate, and running them locally.

botocore and docker are imported inside the commands, so ``flowrig --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from flowrig.backends.aws.ecs import defaults
from flowrig.cli.apps import command_group

app = command_group(
    help="ECS/Fargate: render task definitions for the flowrig image, or run one with local Docker.",
)

_SIZE_HELP = "CPU units (1024 = 1 vCPU) / memory (MiB) of the {role} task (default: {default})."
_PROJECT_SIZE = "[cluster.options] {key}, else {value}"


@app.command("task-definitions")
def task_definitions_command(
    project_dir: Annotated[
        Optional[Path],
        typer.Argument(
            help="Flow project whose flowrig.toml gives worker threads, task sizes, roles, region, log group, "
            "and the workers' environment and secrets (the flags override it).",
            show_default=False,
        ),
    ] = None,
    image: Annotated[Optional[str], typer.Option("--image", help="Image every role runs (required).")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Write ROLE.json files here instead of printing to stdout."),
    ] = None,
    role: Annotated[
        Optional[list[str]],
        typer.Option("--role", help="runner, scheduler or worker (repeatable; default: all three)."),
    ] = None,
    project: Annotated[
        Optional[str],
        typer.Option(
            "--project", help="Name in families (flowrig-NAME-ROLE); default: the project's name, else the image's."
        ),
    ] = None,
    runner_cpu: Annotated[
        Optional[int], typer.Option(help=_SIZE_HELP.format(role="runner", default=defaults.RUNNER_CPU))
    ] = None,
    runner_memory: Annotated[
        Optional[int], typer.Option(help=_SIZE_HELP.format(role="runner", default=defaults.RUNNER_MEMORY))
    ] = None,
    scheduler_cpu: Annotated[
        Optional[int],
        typer.Option(help=_SIZE_HELP.format(role="scheduler", default=_PROJECT_SIZE.format(
            key="scheduler_cpu", value=defaults.SCHEDULER_CPU))),
    ] = None,
    scheduler_memory: Annotated[
        Optional[int],
        typer.Option(help=_SIZE_HELP.format(role="scheduler", default=_PROJECT_SIZE.format(
            key="scheduler_mem", value=defaults.SCHEDULER_MEMORY))),
    ] = None,
    worker_cpu: Annotated[
        Optional[int],
        typer.Option(help=_SIZE_HELP.format(role="worker", default=_PROJECT_SIZE.format(
            key="worker_cpu", value=defaults.WORKER_CPU))),
    ] = None,
    worker_memory: Annotated[
        Optional[int],
        typer.Option(help=_SIZE_HELP.format(role="worker", default=_PROJECT_SIZE.format(
            key="worker_mem", value=defaults.WORKER_MEMORY))),
    ] = None,
    worker_threads: Annotated[
        Optional[int], typer.Option(help="--nthreads of each worker (default: [cluster] worker_threads, else 1).")
    ] = None,
    execution_role_arn: Annotated[
        Optional[str],
        typer.Option(help="Role ECS uses to pull the image and write logs (required on Fargate).", show_default=False),
    ] = None,
    task_role_arn: Annotated[
        Optional[str],
        typer.Option(help="Role the containers act as (default: the project's task_role_arn, else none)."),
    ] = None,
    runner_task_role_arn: Annotated[
        Optional[str],
        typer.Option(help="The runner's own role, one holding `flowrig ecs iam-policy` (default: --task-role-arn)."),
    ] = None,
    log_group: Annotated[
        Optional[str],
        typer.Option(help=f"CloudWatch log group (default: {defaults.LOG_GROUP.format(name='NAME')})."),
    ] = None,
    create_log_group: Annotated[
        bool,
        typer.Option(help="Let ECS create the log group (the execution role needs logs:CreateLogGroup)."),
    ] = False,
    region: Annotated[
        Optional[str],
        typer.Option(help="AWS region (default: the project's region_name, else AWS_REGION or AWS_DEFAULT_REGION)."),
    ] = None,
    cpu_architecture: Annotated[
        Optional[str],
        typer.Option(help=f"X86_64 or ARM64, as the image was built (default: {defaults.CPU_ARCHITECTURE})."),
    ] = None,
    env: Annotated[
        Optional[list[str]],
        typer.Option("--env", help="NAME=VALUE for every container, over the project's environment (repeatable)."),
    ] = None,
    secret: Annotated[
        Optional[list[str]],
        typer.Option("--secret", help="NAME=ARN of a Secrets Manager secret or SSM parameter (repeatable)."),
    ] = None,
    tag: Annotated[
        Optional[list[str]], typer.Option("--tag", help="KEY=VALUE tag on every task definition (repeatable).")
    ] = None,
    allow_local_runner: Annotated[
        bool,
        typer.Option(
            "--allow-local-runner",
            help="Render a runner for a project whose backend is local: its whole cluster runs in that one task.",
        ),
    ] = False,
    register: Annotated[
        bool, typer.Option("--register", help="Register them with ECS and print ROLE<TAB>ARN lines.")
    ] = False,
) -> None:
    # long: typer reads the command's options from this signature (103 lines, one per
    # option); the body only builds the request, renders below and writes (46 lines).
    """Render task definitions for the runner, scheduler and worker roles.

    With PROJECT, its flowrig.toml gives what the flags do not. Each definition is
    checked against the ECS API model before anything is written or registered. Files
    are ready for: aws ecs register-task-definition --cli-input-json file://ROLE.json
    """
    from flowrig.backends.aws.ecs import definitions, taskdefs
    from flowrig.backends.aws.ecs.validate import parse_pairs

    request = definitions.TaskDefinitionRequest(
        image=image,
        roles=tuple(role) if role else None,
        name=project,
        sizes={
            "runner": (runner_cpu, runner_memory),
            "scheduler": (scheduler_cpu, scheduler_memory),
            "worker": (worker_cpu, worker_memory),
        },
        worker_threads=worker_threads,
        execution_role_arn=execution_role_arn,
        task_role_arn=task_role_arn,
        runner_task_role_arn=runner_task_role_arn,
        region=region,
        log_group=log_group,
        create_log_group=create_log_group,
        cpu_architecture=cpu_architecture,
        environment=parse_pairs("--env", env),
        secrets=parse_pairs("--secret", secret),
        tags=parse_pairs("--tag", tag),
        allow_local_runner=allow_local_runner,
    )
    loaded = None
    if project_dir is not None:
        from flowrig.project import load_project

        loaded = load_project(project_dir)
    settings, documents = definitions.render_project_task_definitions(request, loaded)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for each, params in documents.items():
            path = out / f"{each}.json"
            path.write_text(taskdefs.to_json(params))
            typer.echo(f"wrote {path}", err=True)
    elif not register:
        typer.echo(taskdefs.to_json(documents), nl=False)
    if register:
        from flowrig.backends.aws.ecs.register import register_task_definitions
        from flowrig.backends.aws.session import session

        arns = register_task_definitions(session(settings.region), documents)
        for each, arn in arns.items():
            typer.echo(f"{each}\t{arn}")


def _read_json(value: str, what: str) -> Any:
    """JSON text, or the path of a file holding it."""
    from flowrig.errors import BadInput

    text = value
    if not value.lstrip().startswith(("{", "[")):
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise BadInput(f"{what}: cannot read {value} ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInput(f"{what} is nested too deeply to be a task definition or overrides") from None


@app.command("run-local")
def run_local_command(
    task_definition: Annotated[
        str, typer.Argument(help="Task definition JSON file (register input or describe output).")
    ],
    overrides: Annotated[
        Optional[str],
        typer.Option(help="RunTask overrides: JSON text or a file (containerOverrides command/environment)."),
    ] = None,
    network: Annotated[
        Optional[str],
        typer.Option(
            help="Docker network to join, shared by invocations that must meet (created when missing, "
            f"then kept); default: one of this invocation's own ({defaults.RUN_LOCAL_NETWORK}-RUNID), "
            "removed at its end."
        ),
    ] = None,
    secrets_dir: Annotated[
        Optional[Path],
        typer.Option(help="One file per secret, named after its secret (or the last part of its parameter)."),
    ] = None,
    print_plan: Annotated[
        bool, typer.Option("--print-plan", help="Print the containers that would run, as JSON, and stop.")
    ] = False,
) -> None:
    """Run a task definition's containers with the local Docker engine.

    Containers answer to their ECS container names on the network (dask-scheduler resolves).
    A secret is read from SECRETS_DIR/NAME: NAME is a Secrets Manager secret's name or the
    last part of a parameter's; names leaving SECRETS_DIR ('..', '/...') are refused.
    Every container is removed at the end; the exit code is the first essential one's.

    Containers run read-only with no capabilities, no-new-privileges and a process limit, and never as root.
    """
    from flowrig.backends.aws.ecs import run_local, taskdoc

    document = _read_json(task_definition, "the task definition")
    from flowrig.errors import BadInput

    if not isinstance(document, dict):
        raise BadInput("the task definition must be a JSON object")
    definition = taskdoc.load_task_definition(document)
    override_document = _read_json(overrides, "--overrides") if overrides else None
    if override_document is not None and not isinstance(override_document, dict):
        raise BadInput("--overrides must be a JSON object")
    plans = run_local.plan_run(
        definition,
        taskdoc.load_overrides(override_document),
        run_id=run_local.new_run_id(),
        network=network,
    )
    if print_plan:
        typer.echo(run_local.plan_to_json(plans), nl=False)
        return
    code = run_local.run(plans, secrets_dir=secrets_dir)
    raise typer.Exit(code)


def _older_spelling(command: str, instead: str) -> None:
    """Say on stderr, once the command has done its work, what it is now called (an
    error stays one line)."""
    typer.echo(f"flowrig: 'flowrig ecs {command}' is 'flowrig aws {instead}'", err=True)


@app.command("bootstrap", hidden=True)
def bootstrap_command(
    region: Annotated[
        Optional[str], typer.Option(help="AWS region (default: AWS_REGION or the profile's).")
    ] = None,
) -> None:
    """Create, once per account, what ECS/Fargate runs need: `flowrig aws bootstrap --backend ecs`.

    The customer-managed policy flowrig-run-secret-reader on the /flowrig/ IAM path: each
    run makes its own execution role (only ECS tasks of this account may assume it,
    aws:SourceAccount) with AWS's managed execution policy and this one, which lets it
    read its own run's secret and no other. ec2 runs need `flowrig aws bootstrap
    --backend ec2`.
    """
    from flowrig.cli import aws

    aws.bootstrap(backend="ecs", region=region)
    _older_spelling("bootstrap", "bootstrap --backend ecs")


@app.command("iam-policy", hidden=True)
def iam_policy_command(
    account: Annotated[
        Optional[str],
        typer.Option(help="12-digit account id the policy is for (default: the credentials' account)."),
    ] = None,
    partition: Annotated[str, typer.Option(help="aws, aws-cn or aws-us-gov.")] = "aws",
    deregister: Annotated[
        bool,
        typer.Option(
            "--deregister-task-definitions",
            help="Let the runner deregister its runs' task definitions. IAM cannot limit that to its own: it "
            "may then deregister any task definition of the account.",
        ),
    ] = False,
    create_roles: Annotated[
        bool, typer.Option("--create-roles", hidden=True, help="Changes nothing: every run makes its own roles.")
    ] = False,
) -> None:
    """Print the least-privilege IAM policy a runner of ECS/Fargate runs needs (JSON):
    `flowrig aws iam-policy --backend ecs`."""
    from flowrig.cli import aws

    aws.iam_policy(backend="ecs", account=account, partition=partition, deregister=deregister,
                   create_roles=create_roles)
    _older_spelling("iam-policy", "iam-policy --backend ecs")
