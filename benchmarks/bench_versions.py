"""This checkout's flowrig against another checkout's, interleaved, on the same machine.

Each side is ``flowrig run`` as a fresh process with the same Python environment; the
other side's code comes first on ``PYTHONPATH`` (so the two must share their
dependencies: compare checkouts with the same lock). Every pattern runs both sides in
turn, each side first in turn, and the medians and the ratio this / baseline are
printed. A machine shared with other work slows both sides alike; read the ratios.

Patterns (local backend, 3 workers of one thread, per-run certificates as a user gets
them; the seed with its own sizing hook):

- ``seed``: the seed flow on ten items, the whole run (start, flow, teardown);
- ``map-result``: ``sum(double.map(range(n)).result())``;
- ``map-downstream``: ``total(double.map(range(n)))``, a mapped future list passed to a
  downstream task (the seed's own pattern).

    python benchmarks/bench_versions.py --baseline ../other-checkout [--repeat 5] [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "seed"

FLOW = textwrap.dedent(
    """
    from prefect import flow, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @flow
    def scale(n: int = 10, downstream: bool = False) -> int:
        futures = double.map(range(n))
        if downstream:
            return total(futures)
        return sum(futures.result())
    """
)


def one_run(code: Path, argv: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds of one ``flowrig run`` with ``code`` first on the path, and its outcome."""
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")])))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flowrig.cli", "run", *argv, "--output", "json", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=code)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"flowrig run from {code} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (its repository root)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side per pattern")
    parser.add_argument("--n", type=int, default=1000, help="tasks of the many-task patterns")
    parser.add_argument("--patterns", default="seed,map-result,map-downstream")
    args = parser.parse_args()
    baseline = args.baseline.resolve()
    if not (baseline / "flowrig" / "__init__.py").is_file():
        sys.exit(f"{baseline} holds no flowrig checkout")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as tmp:
        project = Path(tmp) / "scale"
        project.mkdir()
        (project / "flow.py").write_text(FLOW)
        (project / "flowrig.toml").write_text('flow = "flow.py:scale"\n\n[cluster]\nn_workers = 3\n')
        runs = {
            "seed": [str(SEED), "--param", f"x={list(range(10))}"],
            "map-result": [str(project), "--param", f"n={args.n}"],
            "map-downstream": [str(project), "--param", f"n={args.n}", "--param", "downstream=true"],
        }
        sides = [("this", REPO), ("baseline", baseline)]
        print(f"this: {REPO}\nbaseline: {baseline}\nload average before: {os.getloadavg()[0]:.2f}")
        for pattern in args.patterns.split(","):
            walls: dict[str, list[float]] = {name: [] for name, _ in sides}
            results = set()
            for i in range(args.repeat):
                for name, code in sides[i % 2:] + sides[:i % 2]:
                    wall, outcome = one_run(code, runs[pattern], env)
                    walls[name].append(wall)
                    results.add(json.dumps(outcome.get("result")))
            if len(results) != 1:
                sys.exit(f"{pattern}: the two sides disagree on the result: {sorted(results)}")
            this, base = (statistics.median(walls[name]) for name, _ in sides)
            spread = {name: f"{min(v):.2f}-{max(v):.2f}" for name, v in walls.items()}
            print(f"{pattern:15s} this {this:6.2f} s  baseline {base:6.2f} s  ratio {this / base:5.3f}  "
                  f"(ranges this {spread['this']}, baseline {spread['baseline']}; result {results.pop()})")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
