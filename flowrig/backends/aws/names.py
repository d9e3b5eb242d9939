"""The names every AWS backend shares: the tags a run's resources carry, flowrig's IAM
path and prefixes, and the account an ARN is written for.

Pure and at the bottom of :mod:`flowrig.backends.aws`: policies, sessions, leases and
the sweep all spell these the same way because they take them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Tag every resource of a run carries (its value is the run id).
RUN_TAG = "flowrig-run-id"
#: Tag every resource a run makes carries: who made it, as IAM names the caller
#: (``aws:userid``: an IAM user's id, or ``ROLE-ID:SESSION`` for a role's session, which
#: for an ECS task is the task's id). The runner policies let a caller create only
#: resources carrying its own id here and act only on resources that carry it, so a
#: runner cannot claim another's resources: IAM, not the caller, supplies the value.
OWNER_TAG = "flowrig-owner"
#: Tag holding a run's lease expiry (:mod:`flowrig.backends.aws.lease`).
LEASE_TAG = "flowrig-lease-until"
#: IAM path of every role flowrig makes (bootstrap or run time), so a policy can name
#: them all (``role/flowrig/*``) and nothing else.
ROLE_PATH = "/flowrig/"
#: Task definition families are ``<prefix>-<project or run id>-<role>``, so everything
#: flowrig registers sorts together in the console; secrets and log groups share it.
FAMILY_PREFIX = "flowrig"
#: Managed policy given to an execution role flowrig creates: pull images, write logs.
EXECUTION_ROLE_POLICY = "policy/service-role/AmazonECSTaskExecutionRolePolicy"
#: Seconds teardown keeps retrying while stopped tasks release their network interfaces.
CLEANUP_TIMEOUT = 300.0
#: Where Canonical publishes its Ubuntu server AMIs as public SSM parameters.
UBUNTU_PARAMETER_PATH = "/aws/service/canonical/ubuntu/server/"
#: Where AWS publishes its Deep Learning AMIs' ids (GPU workers' default AMI).
DEEP_LEARNING_PARAMETER_PATH = "/aws/service/deeplearning/ami/"

#: Characters IAM, ECS, EC2, Secrets Manager and CloudWatch Logs all take in a tag value.
_TAG_VALUE = re.compile(r"^[A-Za-z0-9 _.:/=+\-@]{1,256}$")


@dataclass(frozen=True)
class Account:
    """Where policies point: the partition (``aws``) and the 12-digit account id."""

    partition: str
    account_id: str

    def arn(self, service: str, resource: str, region: str = "*") -> str:
        """``arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`` (IAM ARNs have no region)."""
        region = "" if service == "iam" else region
        return f"arn:{self.partition}:{service}:{region}:{self.account_id}:{resource}"


def check_owner(user_id: str) -> str:
    """``user_id`` (the caller's ``aws:userid``) when every service takes it as a tag value.

    Raises
    ------
    ValueError
        When it holds a character a tag value cannot (an assumed role's session name may
        hold a comma).
    """
    if not _TAG_VALUE.match(user_id):
        raise ValueError(
            f"the AWS caller id {user_id!r} cannot be a tag value (letters, digits, spaces and _.:/=+-@ "
            "only, 256 at most): use credentials whose role session name has none of the others"
        )
    return user_id
