"""A 500-worker fargate start and teardown, simulated: a real moto server behind the tests'
fault proxy, throttled at AWS's documented rates, stand-in workers joining a real
mutual-TLS scheduler.

The runner is a process of its own (``FargateBackend().start`` of a run with
``scheduler_address``, then ``close``), so its memory is its own. Between it and moto,
:class:`tests.aws_faults.FaultProxy` applies :data:`tests.aws_faults.AWS_LIMITS` (Fargate's
launch bucket, RunTask's calls, the task reads, StopTask) and a Region's latency, and counts
every call. Each worker task moto starts becomes a stand-in worker
(:mod:`benchmarks.standin_workers`) that joins the scheduler after a simulated container
start; each StopTask closes it. Leases last ``--lease-seconds`` (renewed every fifth of it).

It prints AWS calls per operation and per worker (start, steady, teardown, whole; the
throttled ones apart), the time to the first worker, half and full size, the teardown time,
the runner's and the scheduler's memory at full size, the lease renewals, and what the
simulation leaves out. ``--baseline DIR`` runs a flowrig checkout (main before a change)
first, as the "before" side; ``--retry-mode standard,adaptive`` runs each mode.

    python benchmarks/bench_fargate_scale.py [--workers 500] [--limits aws|none] [--baseline DIR]
        [--retry-mode standard[,adaptive]] [--time-scale 0.1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/seed:run-image"
LEAVES_OUT = (
    "image pull and ENI attachment (a uniform delay stands for them), Fargate placement and capacity "
    "failures, CloudWatch log streams, the task metadata endpoint, IAM propagation, real network latency "
    "between workers and scheduler, and other callers sharing the account's buckets; the stand-ins share "
    "a few interpreters, so their joins are slower than separate tasks' would be"
)


def _memory_mb(pid: int) -> tuple[float, float]:
    """``(resident, peak resident)`` of process ``pid`` in MB."""
    found = {"VmRSS:": 0.0, "VmHWM:": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0] + ":"
            if key in found:
                found[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return found["VmRSS:"], found["VmHWM:"]


# --- the runner's process ------------------------------------------------------------------
def runner(args: argparse.Namespace) -> None:
    """Start the run, wait for full size, hold, close; one JSON line per event on stdout."""
    from flowrig.backends.aws.ecs import FargateBackend
    from flowrig.backends.base import ClusterSpec
    from flowrig.certs.material import TLSMaterial
    from flowrig.project.sizing import ClusterSize

    def say(event: str, **values: Any) -> None:
        rss, peak = _memory_mb(os.getpid())
        print(json.dumps({"event": event, "at": time.time(), "rss_mb": rss, "peak_mb": peak, **values}), flush=True)

    tls = TLSMaterial(*(Path(args.tls_dir, name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key")))
    options = {"scheduler_address": args.scheduler, "provision_timeout": args.provision_timeout}
    if "preflight" in FargateBackend.options_model.model_fields:
        # The simulation measures start and teardown: moto's account holds no image, role or
        # subnet for the preflight to find (and its calls would be counted as the start's).
        options["preflight"] = False
    spec = ClusterSpec(run_id=args.run_id, size=ClusterSize(args.workers), tls=tls, image=IMAGE, options=options)
    say("began")
    started = FargateBackend().start(spec)
    cluster = started.cluster
    say("started", joined=len(cluster.scheduler_info.get("workers", {})), asked=cluster.asked)
    deadline = time.monotonic() + args.provision_timeout
    while len(cluster.scheduler_info.get("workers", {})) < args.workers and time.monotonic() < deadline:
        time.sleep(0.1)
    say("full", joined=len(cluster.scheduler_info.get("workers", {})), started=cluster.started)
    time.sleep(args.hold)
    say("closing")
    started.close()
    say("closed")


# --- the harness --------------------------------------------------------------------------
@dataclass
class Side:
    label: str
    tree: Path
    retry_mode: str
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``time.monotonic()`` in this process when each event arrived.
    seen: dict[str, float] = field(default_factory=dict)
    calls: dict[str, Counter] = field(default_factory=dict)
    throttled: dict[str, Counter] = field(default_factory=dict)
    joined: list[float] = field(default_factory=list)
    scheduler_mb: float = 0.0
    standins_mb: float = 0.0
    renewals: list[tuple[float, bool]] = field(default_factory=list)
    stopped_late: int = 0
    error: str = ""


def _phases(side: Side, log: list[tuple[float, str, bool]]) -> None:
    """Split the proxy's log into start (to full size), steady (holding) and teardown."""
    bounds = [("start", side.seen.get("full", float("inf"))), ("steady", side.seen.get("closing", float("inf"))),
              ("teardown", float("inf"))]
    for name, _ in bounds:
        side.calls[name], side.throttled[name] = Counter(), Counter()
    # The run's secret is tagged too (before any task): renewals come after the first RunTask.
    began = next((at for at, operation, _ in log if operation == "RunTask"), float("inf"))
    for at, operation, throttled in log:
        phase = next(name for name, end in bounds if at <= end)
        side.calls[phase][operation] += 1
        side.throttled[phase][operation] += throttled
        if operation == "TagResource" and at > began:
            side.renewals.append((at, throttled))


def _start_runner(side: Side, args: argparse.Namespace, proxy_endpoint: str, scheduler: str, tls_dir: Path,
                  log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy_endpoint, "AWS_RETRY_MODE": side.retry_mode,
           "FLOWRIG_AWS_LEASE_SECONDS": str(args.lease_seconds), "PYTHONPATH": str(side.tree),
           "DASK_LOGGING__DISTRIBUTED": "error"}
    argv = [sys.executable, __file__, "runner", "--workers", str(args.workers), "--scheduler", scheduler,
            "--tls-dir", str(tls_dir), "--run-id", "scale1", "--hold", str(args.hold),
            "--provision-timeout", str(args.provision_timeout)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log_path.open("w"), text=True, bufsize=1)


def _follow(side: Side, process: subprocess.Popen, scheduler: subprocess.Popen, pool: Any) -> None:
    """Read the runner's events; read the scheduler's and stand-ins' memory at full size."""
    assert process.stdout is not None
    for line in process.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        side.events[event["event"]] = event
        side.seen[event["event"]] = time.monotonic()
        if event["event"] == "full":
            side.scheduler_mb = _memory_mb(scheduler.pid)[0]
            side.standins_mb = pool.rss_mb()


def fresh_account(control: Any) -> None:
    """Forget every earlier side's resources: moto's state is one per process."""
    from flowrig.backends.aws import bootstrap
    from flowrig.backends.aws.session import session as aws_session
    from tests.aws_support import _FOREVER

    control._call("reset", {})  # not its recorder's reset, which writes a file in the working directory
    control.set_transition("ecs::task", {"progression": "manual", "times": _FOREVER})
    control.ecs().put_account_setting(name="taskLongArnFormat", value="enabled")
    os.environ["AWS_ENDPOINT_URL"] = control.endpoint
    aws = aws_session()
    bootstrap.ensure_run_secret_reader(aws, aws.account())


def simulate(side: Side, args: argparse.Namespace, control: Any) -> Side:
    """One whole run of ``side`` against a fresh account of the moto server ``control``."""
    from benchmarks.standin_workers import StandinPool, start_scheduler
    from flowrig.certs.material import TLSMaterial
    from tests.aws_faults import FaultProxy

    fresh_account(control)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        proxy = FaultProxy(control.endpoint, seed=args.seed).start()
        if args.limits == "aws":
            proxy.aws_limits()
        proxy.latency(args.latency)
        tls_dir = work / "tls"
        TLSMaterial.ephemeral().write_to_dir(tls_dir)
        scheduler, address = start_scheduler(tls_dir, work)
        pool = StandinPool(address, tls_dir, processes=args.processes, per_process=args.per_process,
                           delay=args.delay, time_scale=args.time_scale, seed=args.seed).start()
        proxy.on_run_task(pool.task_started)
        proxy.on_stop_task(pool.task_stopped)
        try:
            process = _start_runner(side, args, proxy.endpoint, address, tls_dir, work / "runner.log")
            _follow(side, process, scheduler, pool)
            if process.wait(timeout=args.provision_timeout + 600) != 0 or "closed" not in side.events:
                tail = (work / "runner.log").read_text().strip().splitlines()[-5:]
                side.error = f"runner exited with code {process.returncode}: " + " | ".join(tail)
            _phases(side, list(proxy.log))
            began = side.events.get("began", {}).get("at", 0.0)
            side.joined = sorted(at - began for at in pool.joined.values())
            side.stopped_late = len(set(pool.joined) - set(pool.left))
        finally:
            proxy.stop()
            pool.close()
            scheduler.terminate()
            scheduler.wait(timeout=30)
    return side


# --- the report ---------------------------------------------------------------------------
def _calls_table(title: str, calls: Counter, throttled: Counter, workers: int) -> None:
    total, refused = sum(calls.values()), sum(throttled.values())
    print(f"  {title}: {total} calls, {total / workers:.2f} per worker ({refused} answered throttled)")
    for operation, n in sorted(calls.items(), key=lambda item: (-item[1], item[0])):
        print(f"    {operation:24s} {n:5d}  {n / workers:6.3f}/worker  throttled {throttled[operation]}")


def _at_share(joined: list[float], share: float) -> float | None:
    need = max(int(len(joined) * share + 0.999), 1)
    return joined[need - 1] if len(joined) >= need else None


def report(side: Side, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Print one side's figures; return them in the benchmarks' JSON shape."""
    n = args.workers
    ev = side.events
    print(f"\n[{side.label}] {n} workers, limits {args.limits}, retry mode {side.retry_mode}, "
          f"latency {args.latency * 1000:.0f} ms, container start {args.delay[0]:g}-{args.delay[1]:g} s "
          f"x {args.time_scale:g}")
    if side.error:
        print(f"  FAILED: {side.error}")
    began = ev.get("began", {}).get("at", 0.0)
    first, half, full = (_at_share(side.joined, s) if len(side.joined) >= n * s else None for s in (0.0, 0.5, 1.0))
    start_returned = ev["started"]["at"] - began if "started" in ev else None
    teardown = ev["closed"]["at"] - ev["closing"]["at"] if "closed" in ev and "closing" in ev else None
    launch_floor = max(n - 100, 0) / 20 + args.delay[0] * args.time_scale
    stop_floor = max(n - 20, 0) / 20
    show = lambda v: "-" if v is None else f"{v:.1f} s"  # noqa: E731
    print(f"  workers joined {len(side.joined)}/{n}; first {show(first)}, half {show(half)}, full {show(full)} "
          f"(AWS's launch rate alone allows full at >= {launch_floor:.1f} s); start() returned {show(start_returned)}")
    print(f"  teardown {show(teardown)} (StopTask at the assumed 20/s after a burst of 20: >= {stop_floor:.1f} s); "
          f"workers still up after teardown: {side.stopped_late}")
    full_ev = ev.get("full", {})
    print(f"  memory at full size: runner {full_ev.get('rss_mb', 0):.0f} MB (peak over the run "
          f"{ev.get('closed', {}).get('peak_mb', 0):.0f} MB), scheduler {side.scheduler_mb:.0f} MB, "
          f"stand-ins {side.standins_mb:.0f} MB in {args.processes} processes")
    times = [at for at, _ in side.renewals]
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"  lease renewals (TagResource, lease {args.lease_seconds:g} s): {len(times)}, longest gap "
          f"{max(gaps) if gaps else 0:.1f} s, throttled {sum(t for _, t in side.renewals)}")
    for phase in ("start", "steady", "teardown"):
        _calls_table(phase, side.calls.get(phase, Counter()), side.throttled.get(phase, Counter()), n)
    whole = sum(side.calls.values(), Counter())
    _calls_table("whole run", whole, sum(side.throttled.values(), Counter()), n)
    note = f"{side.label}, retry {side.retry_mode}, limits {args.limits}"
    note += f"; FAILED {side.error}" if side.error else ""

    def figure(name: str, value: float | None, unit: str, floor: float | None = None) -> dict[str, Any]:
        ratio = value / floor if value is not None and floor else None
        return {"figure": f"fargate {n} workers: {name} ({side.label}, {side.retry_mode})", "value": value,
                "unit": unit, "floor": floor, "ratio": ratio, "target": None,
                "runs": [] if value is None else [value], "note": note}

    return [
        figure("time to first worker", first, "s"), figure("time to half size", half, "s"),
        figure("time to full size", full, "s", launch_floor), figure("teardown", teardown, "s", stop_floor),
        figure("AWS calls to start", sum(side.calls.get("start", Counter()).values()) / n, "calls/worker"),
        figure("AWS calls to tear down", sum(side.calls.get("teardown", Counter()).values()) / n, "calls/worker"),
        figure("AWS calls throttled", sum(sum(c.values()) for c in side.throttled.values()) / n, "calls/worker"),
        figure("runner RSS at full size", full_ev.get("rss_mb"), "MB"),
        figure("scheduler RSS at full size", side.scheduler_mb, "MB"),
        figure("longest gap between lease renewals", max(gaps) if gaps else None, "s", args.lease_seconds / 5),
    ]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("runner", help="the runner's process (internal)")
    for name, kind in (("--workers", int), ("--scheduler", str), ("--tls-dir", Path), ("--run-id", str),
                       ("--hold", float), ("--provision-timeout", float)):
        run.add_argument(name, type=kind, required=True)
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--limits", choices=("aws", "none"), default="aws")
    parser.add_argument("--latency", type=float, default=0.03, help="seconds added to every AWS answer")
    parser.add_argument("--retry-mode", default="standard", help="botocore retry modes to run, comma-separated")
    parser.add_argument("--baseline", type=Path, help="a flowrig checkout to run first, as the 'before' side")
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--per-process", type=int, default=50)
    parser.add_argument("--delay", type=lambda s: tuple(float(x) for x in s.split(",")), default=(30.0, 60.0),
                        help="container start in seconds, uniform between the two (before --time-scale)")
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--hold", type=float, default=12.0, help="seconds at full size before teardown")
    parser.add_argument("--lease-seconds", type=float, default=20.0)
    parser.add_argument("--provision-timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    if args.command == "runner":
        return runner(args)
    sys.path.insert(0, str(ROOT))
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request lines
    if args.workers > args.processes * args.per_process:
        sys.exit(f"--workers {args.workers} needs --processes x --per-process of at least that")
    trees = ([("before", args.baseline.resolve())] if args.baseline else []) + [("after", ROOT)]
    sides = [Side(label, tree, mode) for label, tree in trees for mode in args.retry_mode.split(",")]
    from benchmarks.bench_ecs_calls import moto

    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server, control = moto(Path(tmp))
        try:
            for side in sides:
                figures += report(simulate(side, args, control), args)
        finally:
            server.stop()
    print(f"\nwhat the simulation leaves out: {LEAVES_OUT}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    if failed := [f"{side.label} ({side.retry_mode}): {side.error}" for side in sides if side.error]:
        # The figures are written either way; the exit status says they are incomplete.
        sys.exit("simulation failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
