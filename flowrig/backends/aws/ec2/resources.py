"""What an ``ec2`` run makes in AWS beyond what every AWS run does
(:class:`~flowrig.backends.aws.resources.RunResources`): an instance role with the
bootstrap's permissions boundary, its instance profile, and the instances, all removed
after the run.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping

from flowrig.backends.aws import policies as iam_docs
from flowrig.backends.aws.ec2.instances import error_code, tag_list, terminate_and_wait
from flowrig.backends.aws.resources import RunResources
from flowrig.backends.aws.session import Session, aws_errors, denied
from flowrig.errors import one_line

logger = logging.getLogger("flowrig.vm")


class EC2Resources(RunResources):
    """:class:`RunResources` plus what only ``ec2`` runs make: an instance role, its
    instance profile and instances. :meth:`delete` terminates every instance of the run
    (also those whose start was interrupted, found by the run tag) and waits until they
    are terminated, since the security group cannot go while they hold interfaces in it.
    """

    def __init__(self, aws: Session, tags: Mapping[str, str], run_id: str, cleanup_timeout: float) -> None:
        super().__init__(aws, tags, cleanup_timeout)
        self.run_id = run_id

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
        self.made_role(name)
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
            self._created.append(("instance-profile", name))
            self._on_new_role(lambda: iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name))
        return arn

    def record_instance(self, instance_id: str) -> None:
        """An instance of the run's, terminated by :meth:`delete`."""
        self._created.append(("instance", instance_id))

    def forget_instances(self, instance_ids: list[str]) -> None:
        """Instances terminated already (they no longer hold the lease)."""
        gone = set(instance_ids)
        self._created = [(kind, ident) for kind, ident in self._created if not (kind == "instance" and ident in gone)]

    # --- deleting ------------------------------------------------------------------
    def tagged_instances(self) -> list[str]:
        """Ids of the run's instances that are not terminated, found by the run tag."""
        pages = self._client("ec2").get_paginator("describe_instances").paginate(Filters=[
            {"Name": f"tag:{iam_docs.RUN_TAG}", "Values": [self.run_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]},
        ])
        return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def delete(self) -> list[str]:
        """Terminate the run's instances and wait for it, then delete the rest, newest first."""
        leftovers: list[str] = []
        recorded = [ident for kind, ident in self._created if kind == "instance"]
        try:
            instances = sorted(set(recorded) | set(self.tagged_instances()))
            terminate_and_wait(self._client("ec2"), instances, time.monotonic() + self.cleanup_timeout)
            self.forget_instances(instances)
        except Exception as exc:  # the other resources may still go
            logger.warning("could not terminate the run's instances: %s", one_line(exc))
            leftovers += [f"instance {ident}" for ident in recorded]
            self.forget_instances(recorded)
        return leftovers + super().delete()

    def _delete_one(self, kind: str, ident: str, deadline: float) -> None:
        iam = self._client("iam")
        if kind == "instance-profile":
            for role in iam.get_instance_profile(InstanceProfileName=ident)["InstanceProfile"]["Roles"]:
                iam.remove_role_from_instance_profile(InstanceProfileName=ident, RoleName=role["RoleName"])
            iam.delete_instance_profile(InstanceProfileName=ident)
        elif kind == "role":
            for policy_name in iam.list_role_policies(RoleName=ident)["PolicyNames"]:
                iam.delete_role_policy(RoleName=ident, PolicyName=policy_name)
            super()._delete_one(kind, ident, deadline)
        else:
            super()._delete_one(kind, ident, deadline)
