"""``flowrig aws``: what ``ecs``/``fargate``/``ec2`` runs left in AWS (tagged flowrig-run-id),
what each needs made once per account, and the IAM policy a runner of each needs.

``flowrig aws iam-policy --backend ecs|fargate|ec2`` and ``flowrig aws bootstrap --backend
ecs|fargate|ec2`` are the commands for every AWS backend (``ec2`` is no ECS backend, so its
policy and its one-time setup do not belong under ``flowrig ecs``). ``flowrig ecs
iam-policy`` and ``flowrig ecs bootstrap``, their older spellings, are hidden aliases
of ``--backend ecs`` that run :func:`iam_policy` and :func:`bootstrap` themselves.
The policies are rendered in :mod:`flowrig.backends.aws.runner_policy`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from flowrig.cli.apps import command_group

app = command_group(
    help="AWS resources of ecs/fargate/ec2 runs.",
)


#: Largest --older-than (about 19 years): beyond it the time arithmetic overflows.
_MAX_MINUTES = 1e7


@app.callback()
def aws() -> None:
    """AWS resources of ecs/fargate/ec2 runs (tagged flowrig-run-id)."""


def policy_account(account: Optional[str], partition: str) -> Any:
    """The :class:`~flowrig.backends.aws.names.Account` a policy is for: ``account`` when
    given, else the credentials' (one STS call).

    Raises
    ------
    BadInput
        ``account`` is not 12 digits.
    """
    from flowrig.backends.aws.names import Account
    from flowrig.errors import BadInput

    if account is None:
        from flowrig.backends.aws.session import session

        found = session().account()
        account, partition = found.account_id, found.partition
    if not (account.isdigit() and len(account) == 12):
        raise BadInput(f"--account {account!r} is not an AWS account id: use its 12 digits")
    return Account(partition, account)


def bootstrap_run_secret_reader(session: Any, account: Any) -> None:
    """Make (or bring up to date) the policy every ECS/Fargate run's execution role gets,
    say what was done, and what became of the shared role older bootstraps made."""
    from flowrig.backends.aws import bootstrap as aws_bootstrap

    arn, done = aws_bootstrap.ensure_run_secret_reader(session, account)
    typer.echo(f"policy {arn}: {_DONE[done]}")
    typer.echo("  every run's own execution role gets it: secretsmanager:GetSecretValue on that run's secret "
               "alone (named after the role's run, made by the role's owner)")
    legacy = aws_bootstrap.legacy_execution_role(session)
    if legacy:
        typer.echo(f"role {legacy}: made by an older bootstrap; runs no longer use it and no run's secret "
                   "names it; delete it once no task definition of yours does")


_DONE = {"created": "created", "updated": "exists, updated to this version's document",
         "unchanged": "exists, document checked"}


def bootstrap_instance_boundary(session: Any, account: Any) -> None:
    """Make (or bring up to date) the permissions boundary of ec2 runs' instance roles
    and say what was done."""
    from flowrig.backends.aws import bootstrap as aws_bootstrap

    arn, done = aws_bootstrap.ensure_instance_boundary(session, account)
    typer.echo(f"policy {arn}: {_DONE[done]}")
    typer.echo("  permissions boundary of ec2 runs' instance roles: secretsmanager:GetSecretValue on the role's own "
               "run's secret, kms:Decrypt through Secrets Manager, ECR pulls")


@app.command("bootstrap")
def bootstrap(
    backend: Annotated[str, typer.Option("--backend", help="ecs, fargate or ec2.")],
    region: Annotated[
        Optional[str], typer.Option(help="AWS region (default: AWS_REGION or the profile's).")
    ] = None,
) -> None:
    """Create, once per account, what BACKEND runs need (idempotent; prints what it creates).

    ecs/fargate: the customer-managed policy flowrig-run-secret-reader on /flowrig/,
    which every run's own execution role gets. ec2: the
    customer-managed policy flowrig-instance-boundary on /flowrig/, the permissions
    boundary every run's instance role is made with.
    """
    from flowrig.backends.aws.runner_policy import POLICY_BACKENDS
    from flowrig.backends.aws.session import session as aws_session
    from flowrig.errors import BadInput

    if backend not in POLICY_BACKENDS:
        raise BadInput(f"--backend {backend!r}: use one of {', '.join(POLICY_BACKENDS)}")
    session = aws_session(region)
    account = session.account()
    if backend == "ec2":
        bootstrap_instance_boundary(session, account)
    else:
        bootstrap_run_secret_reader(session, account)


@app.command("iam-policy")
def iam_policy(
    backend: Annotated[str, typer.Option("--backend", help="ecs, fargate or ec2.")],
    account: Annotated[
        Optional[str],
        typer.Option(help="12-digit account id the policy is for (default: the credentials' account)."),
    ] = None,
    partition: Annotated[str, typer.Option(help="aws, aws-cn or aws-us-gov.")] = "aws",
    deregister: Annotated[
        bool,
        typer.Option(
            "--deregister-task-definitions",
            help="ecs/fargate: let the runner deregister its runs' task definitions. IAM cannot limit that to "
            "its own: it may then deregister any task definition of the account.",
        ),
    ] = False,
    create_roles: Annotated[
        bool, typer.Option("--create-roles", hidden=True, help="Changes nothing: every run makes its own roles.")
    ] = False,
) -> None:
    """Print the least-privilege IAM policy a runner of BACKEND runs needs (JSON).

    Resources are scoped to flowrig's names (role/flowrig/*, flowrig/ secrets) and to
    the caller's own (the flowrig-owner tag, which IAM sets to the caller's id), so one
    runner cannot act on another's runs; ecs and fargate share one policy.
    """
    from flowrig.backends.aws.runner_policy import runner_policy

    policy = runner_policy(backend, policy_account(account, partition), deregister=deregister)
    typer.echo(json.dumps(policy, indent=2))


@app.command("leftovers")
def leftovers(
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            metavar="MIN",
            help="Only runs whose lease expired (or, without a lease, that were created) more than MIN "
            "minutes ago (default 10: two leases, so that a live run whose renewals failed for a "
            "while is not taken for a killed one).",
        ),
    ] = 10.0,
    remove: Annotated[bool, typer.Option("--remove", help="Remove what is listed, in dependency order.")] = False,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Only this run.")] = None,
    region: Annotated[
        Optional[str], typer.Option("--region", help="AWS region; default: AWS_REGION or the profile's.")
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """List the AWS resources of ecs/fargate/ec2 runs that are over, grouped by run.

    A run is over when its lease (renewed by its runner while it lives) expired, or,
    for a run without a lease, when it was created, more than --older-than minutes ago.
    """
    from datetime import datetime, timedelta, timezone

    from flowrig.backends.aws.leftovers import group_by_run, render_text, to_json
    from flowrig.backends.aws.names import CLEANUP_TIMEOUT
    from flowrig.backends.aws.remover import Remover
    from flowrig.backends.aws.session import session as aws_session
    from flowrig.backends.aws.sweep import find
    from flowrig.errors import BadInput, InfrastructureError

    if output not in ("text", "json"):
        raise BadInput(f"--output {output!r}: use text or json")
    if not 0 <= older_than < _MAX_MINUTES:
        raise BadInput(f"--older-than {older_than:g}: give minutes >= 0 (and less than {_MAX_MINUTES:g})")
    session = aws_session(region)
    runs = group_by_run(find(session), datetime.now(timezone.utc), timedelta(minutes=older_than))
    runs = [run for run in runs if run.over and (run_id is None or run.run_id == run_id)]
    if output == "json":
        print(json.dumps(to_json(runs), sort_keys=True))
    else:
        print(render_text(runs))
    if not remove:
        return
    remover = Remover(session, CLEANUP_TIMEOUT)
    failures: list[str] = []
    for run in runs:
        removed, failed = remover.remove(run)
        kept = f"; not removed: {', '.join(what for what, _ in failed)}" if failed else ""
        typer.echo(f"removed run {run.run_id}: {', '.join(removed) or 'nothing'}{kept}", err=True)
        failures.extend(f"run {run.run_id} {what}: {why}" for what, why in failed)
    if failures:
        more = f" (and {len(failures) - 1} more, named above)" if len(failures) > 1 else ""
        raise InfrastructureError(f"could not remove {failures[0]}{more}; run the command again")
