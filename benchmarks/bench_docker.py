"""The docker backend beside the local backend, in one run on one machine.

Default: for each backend, times ``flowrig run examples/seed --output json`` from launch
to exit and splits it with the run's own timings: cluster start (scheduler and workers
up), flow time, teardown. The docker backend starts the runner, the scheduler and the
workers as containers of one image, so it pays for container start-up and for
importing Prefect and Dask in each container.

    python benchmarks/bench_docker.py [--image flowrig-seed:test] [--repeat 3]

``--tasks N`` runs instead ``bench_scale``'s map-result flow (``sum(double.map(range(N))
.result())``, 3 workers of one thread) as interleaved local/docker pairs, the side that
goes first alternating, and prints

- ``docker/local = X (target <= 1.3)``: medians of the whole runs' wall times;
- the 3-worker cluster start of each backend, from the run's own timings: the time
  from the end of ``prepare`` until all workers joined, and the absolute offset of
  ``all_workers_joined``;
- that start on docker against its floor, local's figure plus the median of 5 bare
  ``docker run --rm --network none --entrypoint true IMAGE`` measured in the same
  run: ``ratio (target <= 1.5)``.

The median of each phase of the run's own timings (startup, load, prepare, cluster start,
API wait, flow, teardown) follows, for each side: where the seconds go. Then the cluster
start's own timeline: from the cluster request to the containers started (docker), the
scheduler up, the first and the last worker joined.

``--image`` must then be the image of that project: ``--build`` builds it first (on
``--base-image``). ``--baseline DIR --baseline-image IMAGE`` adds a third side, the docker
backend of another checkout (first on ``PYTHONPATH``) with its own image, interleaved
with the others: before and after in one run. ``--json FILE`` writes every figure.

    python benchmarks/bench_docker.py --tasks 1000 --image flowrig-bench-docker:after --build \\
        [--baseline ../base --baseline-image flowrig-bench-docker:before] [--repeat 5] [--json FILE]
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

from figures import Figures

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "seed"
PARAM = "x=[0,1,2,3,4,5,6,7,8,9]"
WORKERS = 3
#: The map-result flow of bench_scale, whose project the ``--tasks`` image bakes.
FLOW = """\
from prefect import flow, task


@task
def double(x: int) -> int:
    return 2 * x


@flow
def scale(n: int = 10) -> int:
    return sum(double.map(range(n)).result())
"""
#: Every figure measured, for ``--json`` (the benchmarks' common output contract).
FIGURES = Figures()
figure = FIGURES.add


#: Where the benchmark's commands run: ``python -m`` puts its working directory first on
#: ``sys.path``, so a command run from inside a checkout imports that checkout's flowrig,
#: whatever ``PYTHONPATH`` (``--baseline``) says.
_CWD: list[str] = []


def neutral_cwd() -> str:
    if not _CWD:
        _CWD.append(tempfile.mkdtemp(prefix="flowrig-bench-cwd-"))
    return _CWD[0]


def environment(code: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return env


def run(backend: str, image: str | None, project: Path = SEED, params: list[str] = ("--param", PARAM),
        expected: int = 90, env: dict[str, str] | None = None) -> tuple[float, dict]:
    argv = [sys.executable, "-m", "flowrig.cli", "run", str(project), "--backend", backend,
            *params, "--output", "json", "--quiet"]
    if image:
        argv += ["--image", image]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env or environment(), cwd=neutral_cwd())
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{backend} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["result"] == expected, out
    return wall, out["timings"]


def cluster_start(timings: dict) -> float:
    """Seconds from the end of ``prepare`` until every worker joined."""
    before = sum(timings.get(key) or 0.0 for key in ("startup", "load", "prepare"))
    return timings["all_workers_joined"] - before


def bare_start(image: str) -> float:
    start = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "true", image],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def require_image(image: str) -> None:
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        sys.exit(f"image {image} not found: build it with --build (or flowrig build)")


def seed_main(args: argparse.Namespace) -> None:
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


def tasks_main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="flowrig-bench-docker-"))
    project = work / "project"
    project.mkdir()
    (project / "flow.py").write_text(FLOW)
    (project / "flowrig.toml").write_text(
        f'flow = "flow.py:scale"\n\n[cluster]\nn_workers = {WORKERS}\nmax_workers = {WORKERS}\n'
    )
    if args.build:
        ca = os.environ.get("FLOWRIG_PIP_CA") or "/etc/ssl/certs/ca-certificates.crt"
        pip_ca = ["--pip-ca", ca] if Path(ca).is_file() else []
        sides = [(args.image, None)] + ([(args.baseline_image, args.baseline)] if args.baseline else [])
        for image, code in sides:
            subprocess.run([sys.executable, "-m", "flowrig.cli", "build", str(project), "--tag", image,
                            "--base-image", args.base_image, "--quiet", *pip_ca], check=True, env=environment(code),
                           cwd=neutral_cwd())
    require_image(args.image)
    sides = {"local": ("local", None, environment()), "docker": ("docker", args.image, environment())}
    if args.baseline:
        require_image(args.baseline_image)
        sides["docker-baseline"] = ("docker", args.baseline_image, environment(args.baseline.resolve()))
    n = args.tasks
    params = ["--param", f"n={n}"]

    def once(side: str) -> tuple[float, dict]:
        backend, image, env = sides[side]
        try:
            return run(backend, image, project, params, n * (n - 1), env)
        except SystemExit as failed:
            # On a loaded machine a start can time out (exit 3): said, and run once more.
            if "failed (3)" not in str(failed.code):
                raise
            print(f"  {side}: a run failed for its infrastructure, run again: {str(failed.code)[-300:]}", flush=True)
            return run(backend, image, project, params, n * (n - 1), env)

    for side in sides:
        once(side)  # untimed: page cache, the database template
    load_before = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores; {WORKERS} workers, 1 thread each, mutual TLS; n = {n}; "
          f"{args.repeat} interleaved rounds; load average {load_before[0]:.2f} {load_before[1]:.2f}", flush=True)
    walls: dict[str, list[float]] = {side: [] for side in sides}
    starts: dict[str, list[float]] = {side: [] for side in sides}
    joined: dict[str, list[float]] = {side: [] for side in sides}
    phases: dict[str, list[dict]] = {side: [] for side in sides}
    bare: list[float] = []
    names = list(sides)
    for round_ in range(args.repeat):
        order = names if round_ % 2 == 0 else names[::-1]
        for side in order:
            wall, timings = once(side)
            walls[side].append(wall)
            starts[side].append(cluster_start(timings))
            joined[side].append(timings["all_workers_joined"])
            phases[side].append(timings)
            print(f"  round {round_ + 1} {side:<16} wall {wall:6.2f} s, cluster start {starts[side][-1]:5.2f} s, "
                  f"all workers joined at {joined[side][-1]:5.2f} s", flush=True)
        bare.append(bare_start(args.image))
    while len(bare) < 5:
        bare.append(bare_start(args.image))
    report(sides, walls, starts, joined, bare, n)
    split(phases)
    start_split(phases)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f}")


def report(sides: dict, walls: dict, starts: dict, joined: dict, bare: list[float], n: int) -> None:
    med = statistics.median
    local_wall, local_start = med(walls["local"]), med(starts["local"])
    floor = local_start + med(bare)
    print(f"bare docker run (--entrypoint true): median {med(bare):.2f} s of {len(bare)}")
    for side in sides:
        print(f"[{side}] n={n}: wall {med(walls[side]):.2f} s, cluster start {med(starts[side]):.2f} s, "
              f"all workers joined at {med(joined[side]):.2f} s")
        figure(f"{side} n={n} wall", med(walls[side]), "s", walls[side])
        figure(f"{side} cluster start of {WORKERS} workers", med(starts[side]), "s", starts[side])
    for side in sides:
        if side == "local":
            continue
        ratio = med(walls[side]) / local_wall
        print(f"[{side}] docker/local = {ratio:.2f} (target <= 1.3)")
        figure(f"{side} n={n}", med(walls[side]), "s", walls[side], floor=local_wall, target="<= 1.3",
               note="whole runs against the local backend, interleaved")
        start_ratio = med(starts[side]) / floor
        print(f"[{side}] cluster start {WORKERS} workers: docker {med(starts[side]):.2f} s, floor {floor:.2f} s, "
              f"ratio {start_ratio:.2f} (target <= 1.5)")
        figure(f"{side} cluster start of {WORKERS} workers against its floor", med(starts[side]), "s", starts[side],
               floor=round(floor, 4), target="<= 1.5", note="floor: local's start plus a bare docker run")
    if "docker-baseline" in sides:
        print(f"after/before: wall {med(walls['docker']) / med(walls['docker-baseline']):.2f}, cluster start "
              f"{med(starts['docker']) / med(starts['docker-baseline']):.2f}")


def split(phases: dict[str, list[dict]]) -> None:
    """Where each side's seconds go: the median of each phase of the run's own timings."""
    names = ("startup", "load", "prepare", "cluster_start", "api_wait", "flow", "teardown", "total")
    print("median seconds by phase (the run's own timings; docker's startup includes the runner container's start)")
    print(f"{'side':<16}" + "".join(f"{name:>14}" for name in names))
    for side, runs in phases.items():
        cells = [statistics.median((t.get(name) or 0.0) for t in runs) for name in names]
        print(f"{side:<16}" + "".join(f"{cell:14.2f}" for cell in cells))


#: The cluster start's marks, in the order a start reaches them (``containers_started``:
#: docker only, when the scheduler's and the first workers' containers had all started).
START_MARKS = ("containers_started", "scheduler_up", "first_worker_joined", "all_workers_joined")


def start_split(phases: dict[str, list[dict]]) -> None:
    """The cluster start's timeline: each mark's median offset from the cluster request
    (the end of ``prepare``), from the run's own timings; ``-`` where a backend has no such mark."""
    print("cluster start timeline: median seconds from the cluster request (end of prepare) to each mark")
    print(f"{'side':<16}" + "".join(f"{name:>20}" for name in START_MARKS))
    for side, runs in phases.items():
        cells = []
        for name in START_MARKS:
            offsets = [t[name] - sum(t.get(k) or 0.0 for k in ("startup", "load", "prepare"))
                       for t in runs if t.get(name) is not None]
            cells.append(f"{statistics.median(offsets):20.2f}" if offsets else f"{'-':>20}")
            if offsets:
                figure(f"{side} cluster request to {name}", statistics.median(offsets), "s", offsets)
        print(f"{side:<16}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="flowrig-seed:test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", type=int, help="the map-result flow of N tasks instead of the seed")
    parser.add_argument("--build", action="store_true", help="build the --tasks images first")
    parser.add_argument("--base-image", default="flowrig-base:bookworm", help="base of the images --build builds")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="also the docker backend of this checkout")
    parser.add_argument("--baseline-image", metavar="IMAGE", help="the --tasks image built from --baseline")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args()
    if args.baseline and not args.baseline_image:
        parser.error("--baseline needs --baseline-image")
    if args.tasks:
        tasks_main(args)
    else:
        require_image(args.image)
        seed_main(args)
    if args.json:
        FIGURES.write(args.json)


if __name__ == "__main__":
    main()
