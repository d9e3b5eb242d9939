"""The docker backend beside the local backend, in one run on one machine.

For each backend, times ``flowrig run examples/seed --output json`` from launch to
exit and splits it with the run's own timings: cluster start (scheduler and workers
up), flow time, teardown. The docker backend starts the runner, the scheduler and the
workers as containers of one image, so it pays for container start-up and for
importing Prefect and Dask in each container.

    python benchmarks/bench_docker.py [--image flowrig-seed:test] [--repeat 3]

The image must exist (``flowrig build examples/seed --tag flowrig-seed:test``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import seed_image

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "seed"
PARAM = "x=[0,1,2,3,4,5,6,7,8,9]"


def run(backend: str, image: str | None) -> tuple[float, dict]:
    argv = [sys.executable, "-m", "flowrig.cli", "run", str(SEED), "--backend", backend,
            "--param", PARAM, "--output", "json"]
    if image:
        argv += ["--image", image]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{backend} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["result"] == 90, out
    return wall, out["timings"]


def main() -> None:
    args = seed_image.parse_args(__doc__.splitlines()[0])

    rows = {}
    for backend, image in (("local", None), ("docker", args.image)):
        run(backend, image)  # warm-up: page cache, database template
        walls, timings = [], []
        for _ in range(args.repeat):
            wall, t = run(backend, image)
            walls.append(wall)
            timings.append(t)
        rows[backend] = (walls, timings)

    print(f"seed flow, x of 10 items, 2 workers, mutual TLS; median of {args.repeat}")
    print(f"{'backend':<8} {'wall':>7} {'cluster start':>14} {'flow':>7} {'teardown':>9}")
    for backend, (walls, timings) in rows.items():
        def med(key: str, timings: list = timings) -> float:
            return statistics.median(t.get(key, 0.0) for t in timings)

        print(f"{backend:<8} {statistics.median(walls):6.2f}s {med('cluster_start'):13.2f}s "
              f"{med('flow'):6.2f}s {med('teardown'):8.2f}s")
    ratio = statistics.median(rows["docker"][0]) / statistics.median(rows["local"][0])
    print(f"docker/local wall = {ratio:.2f}")


if __name__ == "__main__":
    main()
