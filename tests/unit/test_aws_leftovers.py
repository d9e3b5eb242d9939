"""``flowrig aws leftovers`` as data: how a run's lease tags and creation times decide
whether it is over, grouping in removal order, the lease length, the runner policy that
renews only the lease tag, and bad input in process. Killed runs on a real moto server:
tests/e2e/aws/test_aws_leftovers.py.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from flowrig.backends.aws.lease import LEASE_SECONDS_ENV, LEASE_TAG, format_time, initial_tags, lease_until
from flowrig.backends.aws.leftovers import Resource, group_by_run, judge
from tests.run_support import invoke

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def leftovers(*args: str) -> subprocess.CompletedProcess:
    """``flowrig aws leftovers ARGS`` in process."""
    return invoke("aws", "leftovers", *args)


def resource(kind: str, ident: str, run_id: str = "r1", lease: datetime | None = None,
             created: datetime | None = None) -> Resource:
    tags = {"flowrig-run-id": run_id, **({LEASE_TAG: format_time(lease)} if lease else {})}
    return Resource(kind, ident, run_id, tags, created)


def test_the_latest_lease_of_a_run_decides_and_older_than_adds_to_it():
    run = [resource("task-definition", "td", lease=NOW - timedelta(hours=2)),
           resource("cluster", "c", lease=NOW - timedelta(minutes=10))]
    judged = judge("r1", run, NOW, timedelta(0))
    assert judged.over and judged.lease_until == NOW - timedelta(minutes=10)
    assert judged.reason == "lease expired 2026-12-01T11:50:00Z (10.0 min ago)"
    assert [r.kind for r in judged.resources] == ["task-definition", "cluster"]
    assert not judge("r1", run, NOW, timedelta(minutes=15)).over
    fresh = run + [resource("security-group", "sg", lease=NOW + timedelta(minutes=1))]
    assert not judge("r1", fresh, NOW, timedelta(0)).over


def test_a_run_without_a_lease_counts_by_its_newest_creation_time():
    run = [resource("role", "x", created=NOW - timedelta(minutes=90)),
           resource("log-group", "/flowrig/r1", created=NOW - timedelta(minutes=30)),
           resource("cluster", "c")]
    assert judge("r1", run, NOW, timedelta(minutes=20)).over
    judged = judge("r1", run, NOW, timedelta(minutes=45))
    assert not judged.over and "no lease; newest resource created 2026-12-01T11:30:00Z" in judged.reason
    assert judge("r1", [resource("cluster", "c")], NOW, timedelta(minutes=600)).over


def test_resources_are_grouped_by_run_in_removal_order():
    lease = NOW - timedelta(minutes=1)
    runs = group_by_run([resource("role", "b-role", "b", lease), resource("task", "t", "a", lease),
                         resource("cluster", "b-c", "b", lease), resource("secret", "s", "a", lease)],
                        NOW, timedelta(0))
    assert [(run.run_id, [r.kind for r in run.resources]) for run in runs] == [
        ("a", ["task", "secret"]), ("b", ["cluster", "role"])]


def test_the_initial_lease_reads_back():
    assert lease_until(initial_tags(300, NOW)) == NOW + timedelta(minutes=5)
    assert lease_until({LEASE_TAG: "soon"}) is None


# --- bad input and an unreachable AWS -------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--older-than", "-1"], "--older-than -1: give minutes >= 0 (and less than 1e+07)"),
    (["--older-than", "inf"], "--older-than inf: give minutes >= 0 (and less than 1e+07)"),
    (["--output", "xml"], "--output 'xml': use text or json"),
])
def test_bad_input_is_one_line_and_exit_2(args, words):
    done = leftovers(*args)
    assert done.returncode == 2
    assert done.stderr.strip() == f"flowrig: error: {words}"


def test_a_bad_lease_length_is_bad_input(monkeypatch):
    from flowrig.backends.aws.lease import lease_seconds
    from flowrig.errors import BadInput

    monkeypatch.setenv(LEASE_SECONDS_ENV, "-5")
    with pytest.raises(BadInput, match="FLOWRIG_AWS_LEASE_SECONDS='-5': give a number of seconds"):
        lease_seconds()


def test_the_runner_policy_lets_it_renew_the_lease_tag_only():
    from flowrig.backends.aws import policies as iam
    from flowrig.backends.aws.runner_policy import runner_policy

    by_sid = {s["Sid"]: s for s in runner_policy("ecs", iam.Account("aws", "123456789012"))["Statement"]}
    lease_only = {"ForAllValues:StringEquals": {"aws:TagKeys": [LEASE_TAG]}}
    # Only on what the caller made itself (its id in the owner tag).
    mine = {"StringEquals": {"aws:ResourceTag/flowrig-owner": "${aws:userid}"}}
    assert by_sid["RenewLease"]["Action"] == ["ecs:TagResource"]
    assert by_sid["RenewLease"]["Condition"] == {**mine, **lease_only}
    assert by_sid["SecurityGroupRenewLease"]["Action"] == ["ec2:CreateTags"]
    assert by_sid["SecurityGroupRenewLease"]["Condition"] == {**mine, **lease_only}
