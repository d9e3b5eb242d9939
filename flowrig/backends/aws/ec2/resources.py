"""What an ``ec2`` run makes in AWS beyond what every AWS run does
(:class:`~flowrig.backends.aws.resources.RunResources`): an instance role with the
bootstrap's permissions boundary, its instance profile, and the instances, all removed
after the run (each on the run's :class:`~flowrig.backends.ledger.Ledger` as it is made).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Mapping

from flowrig.backends.aws import policies as iam_docs
from flowrig.backends.aws.ec2.instances import error_code, tag_list, terminate_and_wait
from flowrig.backends.aws.resources import RunResources
from flowrig.backends.aws.session import Session, aws_errors, denied
from flowrig.backends.ledger import Group


class EC2Resources(RunResources):
    """:class:`RunResources` plus what only ``ec2`` runs make: an instance role, its
    instance profile and instances. The instances are one group of the ledger
    (:meth:`instances`), recorded before the first RunInstances: :meth:`delete`
    terminates every instance of the run (also those whose start was interrupted, found
    by the run tag) and waits until they are terminated before the rest, since the
    security group cannot go while they hold interfaces in it.
    """

    def __init__(self, aws: Session, tags: Mapping[str, str], run_id: str, cleanup_timeout: float) -> None:
        super().__init__(aws, tags, cleanup_timeout)
        self.run_id = run_id
        self._instances: Group[str] | None = None
        self._instances_lock = threading.Lock()

    # --- creating ------------------------------------------------------------------
    def create_instance_role(self, name: str, boundary_arn: str) -> str:
        """A role only EC2 instances may assume, with no policy yet and ``boundary_arn``
        as its permissions boundary; returns its ARN."""
        with aws_errors(f"creating IAM role {name}"):
            arn = self._client("iam").create_role(
                RoleName=name,
                Path=iam_docs.ROLE_PATH,
                AssumeRolePolicyDocument=json.dumps(iam_docs.instance_trust_policy()),
                PermissionsBoundary=boundary_arn,
                Description="flowrig: the identity of one run's instances (reads its certificate secret)",
                Tags=tag_list(self.tags),
            )["Role"]["Arn"]
        self.made_role(name, inline_policies=True)
        return arn

    def _on_new_role(self, call: Any) -> Any:
        # The runner may change the role only while IAM sees it owns it (its tags),
        # which a role made moments before may not show everywhere yet.
        return self.while_role_propagates(call, lambda exc: denied(exc) or error_code(exc)[0] == "NoSuchEntity")

    def allow_secret(self, role_name: str, secret_arn: str) -> None:
        """The role's one inline policy: reading ``secret_arn``."""
        with aws_errors(f"letting IAM role {role_name} read the run's secret"):
            self._on_new_role(lambda: self._client("iam").put_role_policy(
                RoleName=role_name, PolicyName="read-run-secret",
                PolicyDocument=json.dumps(iam_docs.instance_secret_policy(secret_arn)),
            ))

    def allow_image_pull(self, role_name: str, repository_arn: str) -> None:
        """The role's second inline policy: pulling the run's image from its ECR repository."""
        with aws_errors(f"letting IAM role {role_name} pull from {repository_arn}"):
            self._on_new_role(lambda: self._client("iam").put_role_policy(
                RoleName=role_name, PolicyName="pull-run-image",
                PolicyDocument=json.dumps(iam_docs.image_pull_policy(repository_arn)),
            ))

    def create_instance_profile(self, name: str, role_name: str) -> str:
        """An instance profile holding ``role_name``; returns its ARN."""
        iam = self._client("iam")
        with aws_errors(f"creating instance profile {name}"):
            arn = iam.create_instance_profile(
                InstanceProfileName=name, Path=iam_docs.ROLE_PATH, Tags=tag_list(self.tags)
            )["InstanceProfile"]["Arn"]
            self.ledger.record("instance-profile", name, lambda _: self._delete_instance_profile(name))
            self._on_new_role(lambda: iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name))
        return arn

    def _delete_instance_profile(self, name: str) -> None:
        iam = self._client("iam")
        for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=name)

    def instances(self) -> Group[str]:
        """The run's instances (ids): the caller adds each one RunInstances started and
        discards those it terminated itself. The first call records the group, so call
        it before the first RunInstances: an instance whose start answer was lost is then
        still found by the run tag and terminated."""
        with self._instances_lock:
            if self._instances is None:
                self._instances = self.ledger.group("instance", self._terminate_instances)
            return self._instances

    def tagged_instances(self) -> list[str]:
        """Ids of the run's instances that are not terminated, found by the run tag."""
        pages = self._client("ec2").get_paginator("describe_instances").paginate(Filters=[
            {"Name": f"tag:{iam_docs.RUN_TAG}", "Values": [self.run_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]},
        ])
        return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _terminate_instances(self, recorded: list[str], deadline: float) -> None:
        instances = sorted(set(recorded) | set(self.tagged_instances()))
        terminate_and_wait(self._client("ec2"), instances, deadline)
