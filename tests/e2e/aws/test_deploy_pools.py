"""The ECS work pool against a real moto server: the runner task the ECS worker would
register and run is flowrig's, with the image and its entry point. The templates and job
variables checked against the workers' models are in tests/unit/test_deploy_pools.py."""

from __future__ import annotations

import logging

import jsonschema
import pytest

from flowrig.deploy import pool_templates, pools
from tests.unit.test_deploy_pools import IMAGE, RUNNER_ROLE, _configuration, _ecs_runner


@pytest.mark.aws
def test_the_ecs_worker_registers_and_runs_flowrigs_runner(aws):
    """The ECS worker's own steps, on the job configuration a deployment gets: the task
    definition it registers is the runner of `flowrig ecs task-definitions` (image,
    entry point untouched, init, logs, roles, architecture), and RunTask sends the
    command the image's entry point takes as the flow run."""
    import uuid

    import boto3
    from prefect.client.schemas.objects import FlowRun
    from prefect_aws.workers.ecs_worker import ECSWorker

    ec2 = boto3.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"][0]["SubnetId"]
    group = ec2.create_security_group(GroupName="runner", Description="runner", VpcId=vpc)["GroupId"]
    ecs = boto3.client("ecs")
    cluster = ecs.create_cluster(clusterName="flows")["cluster"]["clusterArn"]

    runner = _ecs_runner(secrets={"DB_PASSWORD": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db"})
    inputs = pools.JobInputs(image=IMAGE, env={"MODE": "prod"}, ecs_runner=runner, ecs_cluster=cluster,
                             ecs_vpc=vpc, ecs_subnets=(subnet,), ecs_security_groups=(group,))
    variables = pools.job_variables("ecs", inputs)
    template = pool_templates.pool_template("ecs")
    jsonschema.validate(variables, template["variables"])
    configuration = _configuration("ecs", template, variables)
    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), deployment_id=uuid.uuid4(), name="flowrig-run")
    configuration.prepare_for_flow_run(flow_run)

    worker = ECSWorker(work_pool_name="ecs-pool")
    definition = worker._prepare_task_definition(configuration, "us-east-1", flow_run)
    worker._validate_task_definition(definition, configuration)
    arn, _ = worker._get_or_register_task_definition(logging.getLogger("test"), ecs, configuration, flow_run,
                                                     definition)
    registered = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    [container] = registered["containerDefinitions"]
    [rendered] = runner["containerDefinitions"]
    assert registered["family"] == runner["family"] == "flowrig-seed-runner"
    assert container["image"] == IMAGE and container["name"] == "flowrig-runner"
    # The image's ENTRYPOINT (dumb-init -- flowrig-entrypoint) is what runs.
    assert "entryPoint" not in container and "command" not in container
    for key in ("linuxParameters", "logConfiguration", "secrets", "cpu", "memory", "essential"):
        assert container[key] == rendered[key], key
    for key in ("cpu", "memory", "executionRoleArn", "taskRoleArn", "runtimePlatform", "networkMode"):
        assert registered[key] == runner[key], key

    request = worker._prepare_task_run_request(configuration, definition, arn, True)
    worker._create_task_run(ecs, request)
    [run_task] = aws.requests("RunTask")
    body = run_task["body"]
    [override] = body["overrides"]["containerOverrides"]
    assert override["name"] == "flowrig-runner"
    assert override["command"] == ["prefect", "flow-run", "execute"]
    environment = {item["name"]: item["value"] for item in override["environment"]}
    assert environment["PREFECT__FLOW_RUN_ID"] == str(flow_run.id) and environment["MODE"] == "prod"
    assert body["cluster"] == cluster and body["launchType"] == "FARGATE"
    assert body["networkConfiguration"]["awsvpcConfiguration"] == {
        "subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"}
    assert body["overrides"]["taskRoleArn"] == RUNNER_ROLE
