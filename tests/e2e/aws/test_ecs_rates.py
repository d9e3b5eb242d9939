"""A fargate run under AWS's rate limits, against moto behind the fault proxy's token
buckets (:data:`tests.aws_faults.AWS_LIMITS`).

Tens of workers on a short time scale: the launch bucket is shrunk (and the launcher's
pacing with it) so that a small start outruns it as a 500-worker start outruns AWS's.
``benchmarks/bench_fargate_scale.py`` runs the full-size case. Workers do not join here
(moto runs no containers; one local worker stands in for the minimum): full size is
every worker task started and running.
"""

from __future__ import annotations

import pytest

from flowrig.backends.aws.ecs import FargateBackend, pacing
from flowrig.project.sizing import ClusterSize
from tests.e2e.aws.test_ecs_backend import spec
from tests.e2e.aws.test_ecs_faults import assert_nothing_left, live_tasks
from tests.tls_support import local_scheduler

pytestmark = [pytest.mark.aws, pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin")]


def test_every_worker_stops_under_throttled_stop_task(aws, bootstrapped, fault_proxy, tls, monkeypatch):
    workers = 40
    # StopTask's bucket at half size (10 at once, 10 a second), the launcher's pace below it
    # in burst and refill, as below AWS's own.
    fault_proxy.aws_limits(scale=0.5, only={"stop-task-calls"})
    monkeypatch.setattr(pacing, "STOP_TASK_CALLS", pacing.Rate(9, 9))
    with local_scheduler(tls, workers=1) as scheduler:
        started = FargateBackend().start(spec(tls, "stop1", size=ClusterSize(workers), provision_timeout=120,
                                              scheduler_address=scheduler.scheduler_address))
        assert started.cluster.started == workers
        assert len(live_tasks(aws, "stop1")) == workers
        started.close()
    # The launcher stopped every task itself, none throttled and none left to the sweep.
    assert fault_proxy.throttled["StopTask"] == 0
    assert fault_proxy.calls["StopTask"] == workers
    assert_nothing_left(aws, "stop1")


def test_a_start_under_the_launch_bucket_reaches_full_size_with_no_failed_batch(
    aws, bootstrapped, fault_proxy, tls, monkeypatch
):
    workers = 80
    # AWS's buckets at half size (50 launches at once, 10 a second; 10 RunTask calls, 10 a
    # second), and the launcher's pacing below them as below AWS's own.
    fault_proxy.aws_limits(scale=0.5, only={"fargate-launches", "run-task-calls"})
    monkeypatch.setattr(pacing, "LAUNCHES", pacing.Rate(45, 9))
    monkeypatch.setattr(pacing, "RUN_TASK_CALLS", pacing.Rate(9, 9))
    with local_scheduler(tls, workers=1) as scheduler:
        started = FargateBackend().start(spec(tls, "launch1", size=ClusterSize(workers), provision_timeout=120,
                                              scheduler_address=scheduler.scheduler_address))
        try:
            cluster = started.cluster
            assert (cluster.asked, cluster.started) == (workers, workers)
            assert cluster.replacements.failures == [] and cluster.start_error is None
            assert len(live_tasks(aws, "launch1")) == workers
            # Paced below the buckets: no RunTask was answered throttled and retried blindly.
            assert fault_proxy.throttled["RunTask"] == 0
            assert fault_proxy.calls["RunTask"] == workers // 10
        finally:
            started.close()
    assert_nothing_left(aws, "launch1")
