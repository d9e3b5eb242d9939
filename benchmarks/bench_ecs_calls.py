"""AWS calls per started worker of a 20-worker fargate run, against a local moto server.

The run goes through the tests' fault proxy (:mod:`tests.aws_faults`), which counts
every request by operation, throttled ones included. A real mutual-TLS scheduler on
loopback with one real local worker stands in for the scheduler task (moto runs no
containers), so the start is complete when ``FargateBackend.start`` returns: every
resource made, every worker task asked for and answered, and the minimum joined. The
calls of the start and of the teardown are printed per operation, as totals and per
started worker. ``--throttle 0.3`` answers that share of calls with ThrottlingException
(seeded), to show what retries cost.

    python benchmarks/bench_ecs_calls.py [--workers 20] [--throttle 0.3] [--seed 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def moto(tmp: Path):
    """A moto server on loopback with ECS tasks that stay RUNNING, and the environment set."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", MOTO_IAM_LOAD_MANAGED_POLICIES="true",
    )
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(key, None)
    from moto.server import ThreadedMotoServer

    from tests.aws_support import _FOREVER, MotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    control = MotoServer(endpoint=f"http://{host}:{port}", recording_path=tmp / "unused.jsonl")
    control.set_transition("ecs::task", {"progression": "manual", "times": _FOREVER})
    control.ecs().put_account_setting(name="taskLongArnFormat", value="enabled")
    # `flowrig aws bootstrap --backend ecs`, once per account: what each run's role gets.
    from flowrig.backends.aws import bootstrap
    from flowrig.backends.aws.session import session as aws_session

    os.environ["AWS_ENDPOINT_URL"] = control.endpoint
    session = aws_session()
    bootstrap.ensure_run_secret_reader(session, session.account())
    return server, control


def table(title: str, calls: Counter, throttled: Counter, workers: int) -> None:
    print(f"\n{title}: {sum(calls.values())} calls, {sum(calls.values()) / workers:.2f} per started worker "
          f"({sum(throttled.values())} answered throttled)")
    for operation, n in sorted(calls.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {operation:32s} {n:4d}  {n / workers:6.2f}/worker  throttled {throttled[operation]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--throttle", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request lines
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # the stand-in worker's start-up lines
    if args.throttle:
        # Enough attempts that a call is not throttled out (0.3 ** 10 per call).
        os.environ.setdefault("AWS_MAX_ATTEMPTS", "10")

    from flowrig.backends.aws.ecs import FargateBackend
    from flowrig.backends.base import ClusterSpec
    from flowrig.certs import TLSMaterial
    from flowrig.project.sizing import ClusterSize
    from tests.aws_faults import FaultProxy
    from tests.e2e.aws.test_ecs_backend import IMAGE, local_scheduler

    with tempfile.TemporaryDirectory() as tmp:
        server, control = moto(Path(tmp))
        proxy = FaultProxy(control.endpoint, seed=args.seed).start()
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        proxy.throttle(args.throttle)
        tls = TLSMaterial.ephemeral()
        try:
            with local_scheduler(tls, workers=1) as scheduler:
                spec = ClusterSpec(
                    run_id="bench1", size=ClusterSize(args.workers), tls=tls, image=IMAGE,
                    options={"scheduler_address": scheduler.scheduler_address, "provision_timeout": 600},
                )
                began = time.perf_counter()
                started = FargateBackend().start(spec)
                took = time.perf_counter() - began
                cluster = started.cluster
                start_calls, start_throttled = Counter(proxy.calls), Counter(proxy.throttled)
                workers = cluster.started
                began = time.perf_counter()
                started.close()
                closed = time.perf_counter() - began
            teardown = Counter(proxy.calls) - start_calls
            teardown_throttled = Counter(proxy.throttled) - start_throttled
        finally:
            proxy.stop()
            server.stop()
    print(f"fargate start of {args.workers} workers against moto: {workers} worker tasks started in "
          f"{took:.1f} s, teardown {closed:.1f} s; throttled share {args.throttle:g} (seed {args.seed})")
    table("start", start_calls, start_throttled, workers)
    table("teardown", teardown, teardown_throttled, workers)
    table("whole run", start_calls + teardown, start_throttled + teardown_throttled, workers)


if __name__ == "__main__":
    main()
