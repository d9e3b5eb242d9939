"""This checkout's flowrig against another checkout's, interleaved, on the same machine.

Each side is ``flowrig run`` as a fresh process with the same Python environment; the
other side's code comes first on ``PYTHONPATH`` (so the two must share their
dependencies: compare checkouts with the same lock). Every pattern runs both sides in
turn, each side first in turn, and the medians and the ratio this / baseline are
printed. A machine shared with other work slows both sides alike; read the ratios.

Patterns (local backend, 3 workers of one thread, per-run certificates as a user gets
them; the seed with its own sizing hook):

- ``seed``: the seed flow on ten items, the whole run (start, flow, teardown);
- every pattern of benchmarks/scale_patterns.py on ``--n`` items (``map-result``,
  ``map-downstream``, the seed's own pattern, ``map-submit-downstream``,
  ``result-loop``, ``wait``, ``as-completed``, ``submit-loop``, ``map-chain``);
- ``list-param``: 1000 tasks beside a list parameter of 10,000 items.

    python benchmarks/bench_versions.py --baseline ../other-checkout [--repeat 5] [--n 1000] \
        [--patterns seed,map-result,result-loop] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale_patterns import FLOW, PATTERNS

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "seed"

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
    parser.add_argument("--patterns", default="seed,map-result,map-downstream",
                        help=f"comma-separated, of seed,{','.join(PATTERNS)},list-param")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write every figure to FILE as JSON")
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
        (project / "flowrig.toml").write_text('flow = "flow.py:patterns"\n\n[cluster]\nn_workers = 3\n')
        lists = Path(tmp) / "list-param.json"
        lists.write_text(json.dumps({"n": 1000, "pattern": "map-result", "ballast": list(range(10_000))}))
        runs = {
            "seed": [str(SEED), "--param", f"x={list(range(10))}"],
            **{name: [str(project), "--param", f"n={args.n}", "--param", f"pattern={name}"] for name in PATTERNS},
            "list-param": [str(project), "--params-file", str(lists)],
        }
        if unknown := sorted(set(args.patterns.split(",")) - set(runs)):
            sys.exit(f"unknown pattern(s) {', '.join(unknown)}: choose from {', '.join(runs)}")
        figures = []
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
            print(f"{pattern:22s} this {this:6.2f} s  baseline {base:6.2f} s  ratio {this / base:5.3f}  "
                  f"(ranges this {spread['this']}, baseline {spread['baseline']}; result {results.pop()})", flush=True)
            figures.append({"figure": f"{pattern} n={args.n} this/baseline", "value": round(this, 4), "unit": "s",
                            "floor": round(base, 4), "ratio": round(this / base, 4), "target": None,
                            "runs": [round(w, 4) for w in walls["this"]],
                            "note": f"baseline runs {[round(w, 4) for w in walls['baseline']]}"})
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
