"""The one ledger of a run's cloud resources (:mod:`flowrig.backends.ledger`) and AWS's use
of it (:class:`~flowrig.backends.aws.resources.RunResources`): undone newest first, a
refusal "not now" retried until the deadline and no longer, "not found" a success only
where the cloud says so, and whatever is left named. A fake clock, so no test waits.
Against a moto server: tests/e2e/aws/.
"""

from __future__ import annotations

import pytest

from flowrig.backends import ledger
from flowrig.backends.ledger import Ledger, retry, wait_until
from flowrig.errors import InfrastructureError


class Clock:
    """``time.monotonic`` and ``time.sleep`` of the ledger module: sleeping moves it on."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(ledger, "time", clock)
    return clock


class Busy(Exception):
    """The cloud says "not now"."""


class NotFound(Exception):
    """The cloud says the resource is not there."""


def is_busy(exc):
    return isinstance(exc, Busy)


def is_gone(exc):
    return isinstance(exc, NotFound)


class Cloud:
    """Undo calls as they happen: each fails with the errors queued for it, one an attempt
    (or, in ``always``, at every attempt), and then succeeds."""

    def __init__(self):
        self.undone: list[str] = []
        self.failures: dict[str, list[BaseException]] = {}
        self.always: dict[str, BaseException] = {}
        self.attempts: dict[str, int] = {}

    def undo(self, name):
        def call(deadline):
            self.attempts[name] = self.attempts.get(name, 0) + 1
            if name in self.always:
                raise self.always[name]
            if self.failures.get(name):
                raise self.failures[name].pop(0)
            self.undone.append(name)

        return call


def test_undone_newest_first_with_a_group_at_its_place(clock):
    cloud = Cloud()
    book = Ledger(60)
    book.record("network", "n1", cloud.undo("network n1"))
    book.record("secret", "s1", cloud.undo("secret s1"))
    instances = book.group("instance", lambda members, deadline: cloud.undone.append(
        f"instances {' '.join(members) or '-'} by {deadline:.0f}"))
    instances.add("i-1")
    instances.add("i-2")
    instances.add("i-1")
    instances.discard(["i-2"])
    instances.add("i-3")
    book.record("grant", "g1", cloud.undo("grant g1"))
    assert book.created == [("network", "n1"), ("secret", "s1"), ("instance", "i-1"), ("instance", "i-3"),
                            ("grant", "g1")]
    assert book.of_kind("instance") == ["i-1", "i-3"]
    assert book.delete() == []
    # The grant (newest) first, then the group in one call with its members and the
    # cleanup deadline, then the older ones.
    assert cloud.undone == ["grant g1", "instances i-1 i-3 by 1060", "secret s1", "network n1"]
    assert book.created == [] and book.delete() == []
    # Again: only the group, which may look for what was made unheard, is undone again.
    assert cloud.undone[4:] == ["instances - by 1060"]


def test_an_empty_group_is_still_undone_it_may_find_what_was_made_unheard(clock):
    calls = []
    book = Ledger(60)
    book.group("instance", lambda members, deadline: calls.append(members))
    assert book.delete() == [] and calls == [[]]


def test_a_refusal_for_now_is_retried_until_it_goes(clock):
    cloud = Cloud()
    book = Ledger(60, retryable=is_busy)
    book.record("security-group", "sg-1", cloud.undo("sg"))
    cloud.failures["sg"] = [Busy("in use"), Busy("in use")]
    assert book.delete() == []
    assert cloud.attempts["sg"] == 3 and cloud.undone == ["sg"]
    assert clock.slept == [ledger.RETRY_SECONDS] * 2


def test_retrying_stops_at_the_deadline_and_the_leftover_is_named(clock):
    cloud = Cloud()
    book = Ledger(12, retryable=is_busy)
    book.record("cluster", "c1", cloud.undo("cluster"))
    book.record("security-group", "sg-1", cloud.undo("sg"))
    cloud.always["sg"] = Busy("in use")
    assert book.delete() == ["security-group sg-1"]
    # Tries at 0, 5 and 10 s; a fourth would start after the 12 s deadline.
    assert cloud.attempts["sg"] == 3 and clock.now == 1010.0
    # The older resource still went, and a second delete tries only what is left.
    assert cloud.undone == ["cluster"] and book.created == [("security-group", "sg-1")]
    del cloud.always["sg"]
    assert book.delete() == [] and cloud.undone == ["cluster", "sg"]


def test_an_error_that_is_not_for_now_is_not_retried(clock):
    cloud = Cloud()
    book = Ledger(60, retryable=is_busy)
    book.record("role", "r1", cloud.undo("role"))
    cloud.always["role"] = PermissionError("denied")
    assert book.delete() == ["role r1"]
    assert cloud.attempts["role"] == 1 and clock.slept == []


def test_a_resources_own_retry_rule_replaces_the_ledgers(clock):
    cloud = Cloud()
    book = Ledger(60)  # retries nothing by itself, as on AWS
    book.record("security-group", "sg-1", cloud.undo("sg"), retry_when=is_busy)
    book.record("log-group", "/flowrig/r1", cloud.undo("logs"))
    cloud.failures["sg"] = [Busy("DependencyViolation"), Busy("DependencyViolation")]
    cloud.always["logs"] = Busy("throttled")
    assert book.delete() == ["log-group /flowrig/r1"]
    assert cloud.attempts == {"logs": 1, "sg": 3}


def test_not_found_is_deleted_only_where_the_cloud_says_so(clock):
    cloud = Cloud()
    cloud.always["vm"] = NotFound("404")
    azure_like = Ledger(60, gone=is_gone, retryable=is_busy)
    azure_like.record("vm", "vm-1", cloud.undo("vm"))
    assert azure_like.delete() == []
    # AWS's ledger takes nothing as gone: a resource missing already is reported.
    aws_like = Ledger(60)
    aws_like.record("vm", "vm-1", cloud.undo("vm"))
    assert aws_like.delete() == ["vm vm-1"]


def test_a_failed_group_names_each_member(clock):
    book = Ledger(60)

    def refuse(members, deadline):
        raise PermissionError("ec2:TerminateInstances denied")

    group = book.group("instance", refuse)
    group.add("i-1")
    group.add("i-2")
    book.record("secret", "s1", lambda deadline: None)
    assert book.delete() == ["instance i-1", "instance i-2"]
    assert book.created == [("instance", "i-1"), ("instance", "i-2")]


def test_retry_the_one_rule(clock):
    answers = [Busy(), Busy(), "made"]

    def call():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retry(call, until=clock.now + 4, when=is_busy, pause=2) == "made"
    assert clock.slept == [2, 2]
    # No time for another try: raised at once.
    with pytest.raises(Busy):
        retry(lambda: (_ for _ in ()).throw(Busy()), until=clock.now + 1, when=is_busy, pause=2)
    # Gone is success (``None``) only when asked.
    assert retry(lambda: (_ for _ in ()).throw(NotFound()), until=0, when=is_busy, gone=is_gone) is None
    with pytest.raises(NotFound):
        retry(lambda: (_ for _ in ()).throw(NotFound()), until=clock.now + 60, when=is_busy)


def test_wait_until_names_what_did_not_finish(clock):
    with pytest.raises(InfrastructureError, match="deleting the run's VMs had not finished in time"):
        wait_until(lambda: False, clock.now + 5, "deleting the run's VMs")
    assert clock.slept == [2.0, 2.0]
    wait_until(lambda: True, 0, "nothing")


# --- AWS on the ledger ------------------------------------------------------------------
def client_error(code):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}}, "Call")


class FakeAWS:
    """botocore clients as one recorder: each call is logged; queued errors come first."""

    def __init__(self):
        self.calls: list[str] = []
        self.faults: dict[str, list[BaseException]] = {}

    def client(self, service):
        return self

    def account(self):
        from flowrig.backends.aws.names import Account

        return Account("123456789012", "aws")

    def get_paginator(self, name):
        aws = self

        class Pages:
            def paginate(self, **kwargs):
                aws.calls.append(name)
                return [{"taskArns": ["arn:task/1"]}]

        return Pages()

    def __getattr__(self, name):
        def call(**kwargs):
            self.calls.append(name)
            if self.faults.get(name):
                raise self.faults[name].pop(0)
            return {
                "create_cluster": {"cluster": {"clusterArn": "arn:cluster/c1"}},
                "create_security_group": {"GroupId": "sg-1"},
                "register_task_definition": {"taskDefinition": {"taskDefinitionArn": "arn:td/1"}},
                "create_secret": {"ARN": "arn:secret/s1"},
                "describe_tasks": {"tasks": [{"taskArn": "arn:task/1", "lastStatus": "STOPPED"}]},
                "list_attached_role_policies": {"AttachedPolicies": []},
            }.get(name, {})

        return call


def test_aws_stops_tasks_first_retries_by_code_and_reports_what_was_gone(clock):
    from flowrig.backends.aws.resources import RunResources

    aws = FakeAWS()
    resources = RunResources(aws, {"flowrig-run-id": "r1"}, cleanup_timeout=60)
    resources.create_cluster("c1")
    resources.create_log_group("/flowrig/r1")
    resources.create_security_group("flowrig-r1", "vpc-1", ["10.0.0.0/16"])
    resources.create_run_secret("flowrig/r1", "line", "arn:role/reader")
    resources.register_task_definition({"family": "flowrig-r1-worker"})
    resources.track_tasks("arn:cluster/c1", "flowrig-r1")
    assert resources.created == [("cluster", "arn:cluster/c1"), ("log-group", "/flowrig/r1"),
                                 ("security-group", "sg-1"), ("secret", "arn:secret/s1"),
                                 ("task-definition", "arn:td/1")]
    assert resources.task_sources == [("arn:cluster/c1", "flowrig-r1")]
    aws.faults = {
        "delete_security_group": [client_error("DependencyViolation")] * 2,
        "delete_cluster": [client_error("ClusterContainsTasksException")],
        # AWS's "not found" stays a leftover, as it always was.
        "delete_log_group": [client_error("ResourceNotFoundException")],
    }
    aws.calls.clear()
    assert resources.delete() == ["log-group /flowrig/r1"]
    deletions = [c for c in aws.calls if c.startswith(("stop_", "delete_", "deregister_"))]
    assert deletions == [
        "stop_task", "deregister_task_definition", "delete_task_definitions", "delete_secret",
        "delete_security_group", "delete_security_group", "delete_security_group",
        "delete_log_group", "delete_cluster", "delete_cluster",
    ]
    assert resources.task_sources == [] and resources.created == [("log-group", "/flowrig/r1")]


def test_aws_a_code_retried_for_one_kind_is_final_for_another(clock):
    from flowrig.backends.aws.resources import RunResources

    aws = FakeAWS()
    resources = RunResources(aws, {"flowrig-run-id": "r2"}, cleanup_timeout=60)
    resources.create_security_group("flowrig-r2", "vpc-1", ["10.0.0.0/16"])
    resources.create_cluster("c2")
    aws.faults = {"delete_cluster": [client_error("DependencyViolation")],
                  "delete_security_group": [client_error("ClusterContainsTasksException")]}
    assert resources.delete() == ["cluster arn:cluster/c1", "security-group sg-1"]
    assert aws.calls.count("delete_cluster") == 1 and aws.calls.count("delete_security_group") == 1
