"""Dollars per 1000 tasks of the seed flow, at Fargate prices.

Runs ``flowrig run examples/seed --backend docker --output json`` with ``x`` of each
size in ``--items`` (the seed's sizing hook asks for one worker per five items, at most
ten), takes each role's seconds from the outcome's ``usage`` (the containers' lifetimes
by the engine's clock) and prices them as if each role were a Fargate task of flowrig's
default size (runner and scheduler 1 vCPU / 2 GiB, workers 1 vCPU / 4 GiB, Linux/X86)
with the price table flowrig ships. A task of the flow is one ``times_two`` per item
plus one ``get_sum``.

This prices the lifetimes of containers on this machine. On Fargate each task also
waits for its image to be pulled (billed, 30 s or more) and is billed for a minute at
least: read the figure as the floor of what the same run costs there.

    python benchmarks/bench_cost.py [--image flowrig-seed:test] [--repeat 1] [--items 10,100] [--json FILE]

``--json FILE`` writes every figure (the benchmarks' common output contract).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from figures import Figures

from flowrig.backends.aws.ecs import defaults
from flowrig.backends.prices import shipped_table
from flowrig.backends.usage import Placement

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "seed"
REGION = "us-east-1"

#: Each role's Fargate size: flowrig's defaults for ECS tasks.
SIZES = {
    "runner": (defaults.RUNNER_CPU, defaults.RUNNER_MEMORY),
    "scheduler": (defaults.SCHEDULER_CPU, defaults.SCHEDULER_MEMORY),
    "worker": (defaults.WORKER_CPU, defaults.WORKER_MEMORY),
}


def run(image: str, items: int) -> dict:
    x = json.dumps(list(range(items)))
    argv = [sys.executable, "-m", "flowrig.cli", "run", str(SEED), "--backend", "docker", "--image", image,
            "--param", f"x={x}", "--output", "json"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"run of {items} items failed ({done.returncode}):\n{done.stderr[-3000:]}")
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["result"] == 2 * sum(range(items)), outcome
    return outcome["usage"]


def fargate_cost(usage: dict) -> tuple[float, dict[str, float]]:
    """The usage's role seconds priced as Fargate tasks of the default sizes."""
    table = shipped_table()
    costs = {}
    for key, role in usage["roles"].items():
        cpu, memory = SIZES[key.partition(":")[0]]
        shape = Placement(vcpu=cpu / 1024, memory_gib=memory / 1024, price_key=f"fargate:{REGION}:X86_64")
        cost, why = table.cost(shape, role["seconds"])
        if cost is None:
            sys.exit(f"no Fargate price: {why}")
        costs[key] = cost
    return sum(costs.values()), costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="flowrig-seed:test")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--items", default="10,100")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args()
    found = Figures()
    if subprocess.run(["docker", "image", "inspect", args.image], capture_output=True).returncode:
        sys.exit(f"image {args.image} not found: flowrig build examples/seed --tag {args.image}")
    table = shipped_table()
    print(f"seed flow on docker, priced as Fargate {REGION} Linux/X86 tasks ({table.label}); "
          f"median of {args.repeat}")
    print(f"{'items':>6} {'tasks':>6} {'workers':>8} {'worker-s':>9} {'all role-s':>11} {'$ per run':>10} "
          f"{'$ per 1000 tasks':>17}")
    for items in (int(n) for n in args.items.split(",")):
        runs = [run(args.image, items) for _ in range(args.repeat)]
        costs = [fargate_cost(usage)[0] for usage in runs]
        usage = runs[costs.index(statistics.median_low(costs))]
        tasks = items + 1
        cost = statistics.median_low(costs)
        role_seconds = sum(role["seconds"] for role in usage["roles"].values())
        worker = usage["roles"]["worker"]
        print(f"{items:>6} {tasks:>6} {worker['count']:>8} {worker['seconds']:>9.1f} {role_seconds:>11.1f} "
              f"{cost:>10.5f} {1000 * cost / tasks:>17.5f}")
        found.add(f"$ per 1000 tasks, seed flow of {items} items", 1000 * cost / tasks, "USD",
                  [1000 * c / tasks for c in costs],
                  note=f"{worker['count']} workers, {role_seconds:.1f} role-seconds priced as Fargate "
                       f"{REGION} tasks ({table.label}); docker backend on this machine")
    if args.json:
        found.write(args.json)


if __name__ == "__main__":
    main()
