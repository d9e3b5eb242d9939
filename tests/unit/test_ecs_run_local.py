"""``flowrig ecs run-local``: the run plan as data (no Docker): task definitions and RunTask
overrides become container plans, bad input is refused, secrets are read safely before
anything starts. The replay on real containers: tests/e2e/docker/test_ecs_run_local.py.
"""

from __future__ import annotations

import pytest

from flowrig.backends.aws.ecs import defaults as ecs_defaults
from flowrig.backends.aws.ecs import run_local, taskdefs, taskdoc
from flowrig.errors import BadInput

EXEC_ROLE = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prefect-api-key"


def rendered(role: str, **changes) -> dict:
    values = dict(image="seed:1", name="seed", region="us-east-1", log_group="/flowrig/seed",
                  execution_role_arn=EXEC_ROLE, environment={"A": "task", "B": "task"},
                  secrets={"PREFECT_API_KEY": SECRET_ARN})
    values.update(changes)
    return taskdefs.render_task_definition(role, taskdefs.TaskDefinitionSettings(**values))


# --- the plan (pure) -------------------------------------------------------------
def test_plan_follows_the_task_definition():
    [plan] = run_local.plan_run(rendered("scheduler"), run_id="r1", network="net1")
    assert plan.name == "dask-scheduler-r1"
    assert plan.container == "dask-scheduler"
    assert plan.image == "seed:1"
    assert plan.command == tuple(taskdefs.scheduler_command())
    assert plan.entrypoint is None  # the image's own entry point
    assert plan.environment == {"A": "task", "B": "task"}
    assert plan.secrets == {"PREFECT_API_KEY": "prefect-api-key"}
    assert plan.init is True and plan.essential is True
    assert plan.network == "net1"
    assert plan.memory_mib == 2048
    assert plan.labels == {run_local.LABEL_RUN: "r1", run_local.LABEL_FAMILY: "flowrig-seed-scheduler",
                           run_local.LABEL_CONTAINER: "dask-scheduler"}


def test_overrides_replace_the_command_and_add_environment_as_runtask_does():
    overrides = {"containerOverrides": [{
        "name": "dask-worker",
        "command": ["dask-worker", "tls://dask-scheduler:8786", "--name", "0"],
        "environment": [{"name": "B", "value": "override"}, {"name": "C", "value": "new"}],
    }]}
    [plan] = run_local.plan_run(rendered("worker"), taskdoc.load_overrides(overrides), run_id="r2")
    assert plan.command == ("dask-worker", "tls://dask-scheduler:8786", "--name", "0")
    assert plan.environment == {"A": "task", "B": "override", "C": "new"}
    # No network named: one of this invocation's own.
    assert plan.network == f"{ecs_defaults.RUN_LOCAL_NETWORK}-r2" == run_local.invocation_network("r2")
    # Environment alone leaves the task definition's command in place.
    only_env = {"containerOverrides": [{"name": "dask-worker", "environment": [{"name": "A", "value": "x"}]}]}
    [plan] = run_local.plan_run(rendered("worker"), only_env, run_id="r3")
    assert plan.command == tuple(taskdefs.worker_command())
    assert plan.environment["A"] == "x"


def test_whole_runtask_requests_and_described_definitions_are_accepted():
    definition = taskdoc.load_task_definition({"taskDefinition": rendered("runner"), "tags": []})
    request = {"cluster": "c", "taskDefinition": "t", "overrides": {
        "containerOverrides": [{"name": "flowrig-runner", "command": ["run", "--output", "json"]}]}}
    [plan] = run_local.plan_run(definition, taskdoc.load_overrides(request), run_id="r4")
    assert plan.command == ("run", "--output", "json")
    assert plan.container == "flowrig-runner"


def test_several_containers_and_non_essential_ones():
    definition = rendered("worker")
    sidecar = {"name": "sidecar", "image": "busybox:1", "essential": False, "entryPoint": ["sh", "-c"],
               "command": ["sleep 1"], "user": "1000", "workingDirectory": "/tmp"}
    definition["containerDefinitions"].append(sidecar)
    worker, side = run_local.plan_run(definition, run_id="r5")
    assert (worker.essential, side.essential) == (True, False)
    assert side.entrypoint == ("sh", "-c") and side.user == "1000" and side.working_dir == "/tmp"
    assert side.init is False and side.secrets == {}
    assert side.memory_mib == 4096  # the task's memory when the container sets none


@pytest.mark.parametrize(
    "definition, overrides, words",
    [
        ("worker", {"containerOverrides": [{"name": "dask-scheduler", "command": ["x"]}]},
         "dask-scheduler that the task definition does not have"),
        ("worker", {"containerOverrides": [{"name": "dask-worker", "command": "not a list"}]},
         "does not match the ECS API"),
        ("worker", {"containerOverrides": [{"name": "dask-worker", "commands": ["x"]}]}, "commands"),
    ],
)
def test_bad_overrides_are_bad_input(definition, overrides, words):
    with pytest.raises(BadInput) as info:
        run_local.plan_run(rendered(definition), taskdoc.load_overrides(overrides), run_id="x")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_bad_task_definitions_are_bad_input():
    with pytest.raises(BadInput, match="no containerDefinitions"):
        taskdoc.load_task_definition({"family": "f"})
    with pytest.raises(BadInput, match="name and an image"):
        taskdoc.load_task_definition({"containerDefinitions": [{"name": "x"}]})
    lonely = rendered("worker")
    lonely["containerDefinitions"][0]["essential"] = False
    with pytest.raises(BadInput, match="no essential container"):
        run_local.plan_run(lonely, run_id="x")


TRAVERSALS = [
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:/etc/passwd",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:../../x",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:team/../../x",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:./x",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:a//b",
    "arn:aws:ssm:us-east-1:123456789012:parameter/..",
    "..",
]


@pytest.mark.parametrize("value_from", TRAVERSALS)
def test_secret_names_that_leave_the_secrets_dir_are_refused(value_from):
    with pytest.raises(BadInput) as info:
        taskdoc.secret_file_name(value_from)
    assert "not a file inside --secrets-dir" in str(info.value) and "\n" not in str(info.value)


def test_a_link_out_of_the_secrets_dir_is_refused(tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (tmp_path / "outside").write_text("not yours\n")
    (secrets_dir / "token").symlink_to(tmp_path / "outside")
    [plan] = run_local.plan_run(rendered("runner", secrets={"T": "/ci/token"}), run_id="r7")
    with pytest.raises(BadInput, match="outside --secrets-dir"):
        run_local.read_secrets([plan], secrets_dir)
    # A subdirectory of a Secrets Manager name is fine.
    (secrets_dir / "team").mkdir()
    (secrets_dir / "team" / "token").write_text("ok\n")
    [plan] = run_local.plan_run(rendered("runner", secrets={
        "T": "arn:aws:secretsmanager:us-east-1:123456789012:secret:team/token"}), run_id="r8")
    assert run_local.read_secrets([plan], secrets_dir) == {plan.name: {"T": "ok"}}


def test_secrets_are_read_before_anything_starts(tmp_path):
    [plan] = run_local.plan_run(rendered("runner"), run_id="r6")
    with pytest.raises(BadInput, match="--secrets-dir"):
        run_local.read_secrets([plan], None)
    with pytest.raises(BadInput, match="prefect-api-key"):
        run_local.read_secrets([plan], tmp_path)
    (tmp_path / "prefect-api-key").write_text("s3cr3t\n")
    assert run_local.read_secrets([plan], tmp_path) == {plan.name: {"PREFECT_API_KEY": "s3cr3t"}}


# --- malformed input: one line, exit 2, before Docker is asked anything ---------------------
def _with(container_changes: dict | None = None, **task_changes) -> dict:
    definition = rendered("runner")
    definition["containerDefinitions"][0].update(container_changes or {})
    definition.update(task_changes)
    return definition


# --- hardening and users (the plan; then real containers) ------------------------------------


def test_who_a_container_runs_as():
    [task] = run_local.plan_run(rendered("runner"), run_id="r3")
    assert run_local.run_as(task, "flowrig") == (None, None)  # the image's own, not root
    user, note = run_local.run_as(task, "")  # an image that runs as root
    assert user == run_local.NON_ROOT_USER and "runs as root" in note
    assert run_local.run_as(task, "0:0")[0] == run_local.NON_ROOT_USER
    [own] = run_local.plan_run(_with({"user": "1000:1000"}), run_id="r4")
    assert run_local.run_as(own, "") == ("1000:1000", None)
    assert taskdoc.uid_of("root:x:0:0::/root:/bin/sh\nadmin:x:0:0::/:/bin/sh\nme:x:1000:1000::/:/bin/sh\n",
                            "admin") == 0
