"""The preflight report: text and JSON rendering apart from the checks, the largest
size a project may reach, the quota and image pieces that are pure, and the start
template's refusal before anything is created."""

from __future__ import annotations

import json

import pytest

from flowrig.backends.aws.preflight.image import ECR_IMAGE, platforms
from flowrig.backends.aws.preflight.quotas import ec2_quota
from flowrig.backends.aws.preflight.rights import context_entries
from flowrig.backends.preflight import Check
from flowrig.run.preflight import PreflightReport, maximum_workers, render_json, render_text
from tests.run_support import invoke, write_project

CHECKS = (
    Check("image", "seed:2", True, "in ECR"),
    Check("network", "subnet-a", False, "subnet subnet-a cannot reach ECR", "add a NAT gateway"),
    Check("quota", "fargate/L-3032A538", None, "could not be read (AccessDeniedException): not checked"),
)


def test_text_has_one_line_per_failed_or_unchecked_check_then_a_summary():
    report = PreflightReport("fargate", "seed:2", 4, CHECKS)
    lines = render_text(report).splitlines()
    assert lines == [
        "failed: network subnet-a: subnet subnet-a cannot reach ECR: add a NAT gateway",
        "not checked: quota fargate/L-3032A538: could not be read (AccessDeniedException): not checked",
        "preflight fargate: 1 failed, 1 passed, 1 not checked; not ready: nothing was created",
    ]
    assert render_text(report, passed=True).splitlines()[0] == "passed: image seed:2: in ECR"
    assert not report.ok


def test_a_report_without_failures_is_ready_even_with_unchecked_lines():
    report = PreflightReport("fargate", None, 1, (CHECKS[0], CHECKS[2]))
    assert report.ok and render_text(report).endswith("0 failed, 1 passed, 1 not checked; ready")


def test_json_is_one_object_with_every_check():
    parsed = json.loads(render_json(PreflightReport("fargate", "seed:2", 4, CHECKS)))
    assert parsed["ok"] is False and parsed["backend"] == "fargate" and parsed["max_workers"] == 4
    assert [c["ok"] for c in parsed["checks"]] == [True, False, None]
    assert parsed["checks"][1] == {"name": "network", "subject": "subnet-a", "ok": False,
                                   "line": "subnet subnet-a cannot reach ECR", "fix": "add a NAT gateway"}


@pytest.mark.parametrize("cluster, expected", [
    ({}, 1),
    ({"n_workers": 4}, 4),
    ({"n_workers": 40}, 10),
    ({"adapt": {"minimum": 1, "maximum": 6}}, 6),
    ({"n_workers": 2, "max_workers": 30, "sizing": "flow.py:size"}, 30),
])
def test_the_largest_size_is_the_one_a_run_may_reach(tmp_path, cluster, expected):
    from flowrig.project.models import parse_project

    project = parse_project({"flow": "flow.py:main", "cluster": cluster}, tmp_path)
    assert maximum_workers(project) == expected


def test_ecr_names_and_index_platforms():
    match = ECR_IMAGE.match("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/seed:2")
    assert (match["account"], match["region"], match["repository"], match["tag"]) == (
        "123456789012", "us-east-1", "team/seed", "2")
    assert ECR_IMAGE.match("ghcr.io/team/seed:2") is None
    index = {"manifests": [
        {"platform": {"os": "linux", "architecture": "amd64"}},
        {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"platform": {"os": "unknown", "architecture": "unknown"}},  # an attestation
    ]}
    assert platforms(json.dumps(index)) == ["linux/amd64", "linux/arm64/v8"]
    assert platforms({"config": {}, "layers": []}) is None


def test_quota_codes_by_family_and_context_types():
    assert ec2_quota("t3.medium") == ("L-1216C47A", "Running On-Demand Standard instances")
    assert ec2_quota("g5.xlarge")[0] == "L-DB2E81BA" and ec2_quota("p4d.24xlarge", spot=True)[0] == "L-7212CCBC"
    assert ec2_quota("vt1.3xlarge")[0] == "L-DB2E81BA" and ec2_quota("u-6tb1.metal") is None
    assert context_entries({"aws:TagKeys": ["a", "b"], "flag": True, "aws:userid": "AID"}) == [
        {"ContextKeyName": "aws:TagKeys", "ContextKeyValues": ["a", "b"], "ContextKeyType": "stringList"},
        {"ContextKeyName": "aws:userid", "ContextKeyValues": ["AID"], "ContextKeyType": "string"},
        {"ContextKeyName": "flag", "ContextKeyValues": ["true"], "ContextKeyType": "boolean"},
    ]


# --- the start template's own call --------------------------------------------------------------
def _checked_backend(checks):
    from flowrig.backends.base import CloudOptions
    from tests.pool_support import FakeBackend, FakeOptions

    class CheckedOptions(FakeOptions, CloudOptions):
        pass

    class CheckedBackend(FakeBackend):
        options_model = CheckedOptions
        asked: list = []

        def cloud_preflight(self, plan, options):
            self.asked.append(plan)
            return list(checks)

    return CheckedBackend()


def test_a_failed_check_stops_the_start_before_the_run_is_opened(tls, caplog):
    import logging

    from flowrig.backends.base import ClusterSpec
    from flowrig.errors import BadInput
    from flowrig.project.sizing import ClusterSize

    backend = _checked_backend(CHECKS)
    spec = ClusterSpec(run_id="pre1", size=ClusterSize(1, adapt=(1, 7)), tls=tls, image="seed:2")
    with caplog.at_level(logging.ERROR, logger="flowrig.pool"), pytest.raises(BadInput) as info:
        backend.start(spec)
    assert backend.runs == []  # nothing opened, nothing created
    assert str(info.value).startswith("preflight: 1 check failed, nothing was created; first: network subnet-a: ")
    assert "preflight = false" in str(info.value) and "\n" not in str(info.value)
    assert [r.getMessage() for r in caplog.records] == [
        "preflight: network subnet-a: subnet subnet-a cannot reach ECR: add a NAT gateway"]
    # The plan is the run's: its id, image and largest size.
    [plan] = backend.asked
    assert (plan.run_id, plan.image, plan.max_workers) == ("pre1", "seed:2", 7)


def test_preflight_false_and_passing_checks_let_the_start_go_on(tls):
    from flowrig.backends.base import ClusterSpec
    from flowrig.errors import InfrastructureError
    from flowrig.project.sizing import ClusterSize

    for checks, options in ((CHECKS, {"preflight": False}), ((CHECKS[0], CHECKS[2]), {})):
        backend = _checked_backend(checks)
        backend.fail_at = {"prepare": RuntimeError("stop here")}
        spec = ClusterSpec(run_id="pre2", size=ClusterSize(2), tls=tls, image="seed:2", options=options)
        with pytest.raises(InfrastructureError):
            backend.start(spec)
        assert backend.runs[0].steps[0] == "prepare"
        assert len(backend.asked) == (0 if options else 1)


def test_flowrig_preflight_of_a_local_project_says_it_has_nothing_to_check(tmp_path):
    root = write_project(tmp_path / "p", "def main():\n    pass\n", 'flow = "flow.py:main"\n')
    done = invoke("preflight", str(root))
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        "not checked: backend local: the local backend runs on this machine and makes nothing elsewhere: "
        "nothing to check",
        "preflight local: 0 failed, 0 passed, 1 not checked; ready",
    ]


def test_an_answer_botocore_cannot_read_is_a_refusal_not_a_traceback():
    from botocore.parsers import ResponseParserError

    from flowrig.backends.aws.preflight.answers import Refused, ask

    def unreadable():
        raise ResponseParserError("Unable to parse response (syntax error), invalid XML received: <!doctype html>")

    answer = ask(unreadable, "simulating the runner's rights")
    assert isinstance(answer, Refused) and answer.code == "UnreadableAnswer"
