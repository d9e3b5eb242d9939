"""Local backend against plain Dask and plain prefect-dask, in one run on one machine.

(a) the seed flow through ``flowrig run`` on the local backend (mutual TLS, the run's
    embedded Prefect API);
(b) the same work in plain Dask: a TLS LocalCluster with the same certificates and
    the same number of workers, ``client.map`` then a sum;
(c) the same flow with prefect-dask's ``DaskTaskRunner(cluster_class=LocalCluster,
    ...)`` and Prefect's defaults (no API URL: a temporary API wherever one is needed);
(w) with ``--warm``: (a) against a Prefect API that is already up (a local
    ``prefect server start``, started once before the runs), which is what a run gets
    from a warm per-user API: the embedded API's start-up is the floor that (a) pays.

(a0) with ``--baseline DIR`` (a1... with more): (a) with another checkout's flowrig
    first on ``PYTHONPATH`` (same environment), for a before/after measured side by side.

Every variant runs as a fresh process, timed from launch to exit, so interpreter
start-up and imports count the same for all. The sides run in rounds (``--pairs``),
each round in another order, so that load that comes and goes slows them alike; the
load average is printed before and after. Prints medians and the ratios a/b (target
<= 2.0, goal 1.5), w/b and c/a, plus the time of ``flowrig --help`` (target < 0.5 s).
``--profile`` then profiles one run (:mod:`start_profile`): where its time goes.
``--json FILE`` writes every figure (the benchmarks' common output contract).

    python benchmarks/bench_local.py [--pairs 7] [--repeat-c 1] [--warm] [--baseline DIR] [--profile] [--json FILE]
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

from figures import Figures
from plain_tls import install as install_plain_tls
from prefect_server import start_server

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "seed"
X = list(range(10))
N_WORKERS = 2  # what the seed's sizing hook gives for ten items

PLAIN_DASK = textwrap.dedent(
    """
    import sys
    from distributed import Client
    from plain_tls import security, tls_cluster

    def times_two(x):
        return x * 2

    if __name__ == "__main__":
        certs = sys.argv[1]
        with tls_cluster(certs, %(n)d) as cluster:
            with Client(cluster, security=security(certs)) as client:
                doubled = client.map(times_two, %(x)r)
                total = client.submit(sum, doubled).result()
        assert total == 90, total
    """
) % {"n": N_WORKERS, "x": X}

PREFECT_DASK = textwrap.dedent(
    """
    import sys
    from distributed import LocalCluster
    from plain_tls import cluster_kwargs, security
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    sec = security(sys.argv[1])

    @task
    def times_two(x: int) -> int:
        return x * 2

    @task
    def get_sum(x: list[int]) -> int:
        return sum(x)

    @flow(task_runner=DaskTaskRunner(
        cluster_class=LocalCluster,
        cluster_kwargs=cluster_kwargs(sec, %(n)d),
        client_kwargs={"security": sec},
    ))
    def seed(x: list[int]) -> int:
        return get_sum.submit(times_two.map(x)).result()

    if __name__ == "__main__":
        assert seed(%(x)r) == 90
    """
) % {"n": N_WORKERS, "x": X}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    return env


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    # From outside any checkout: `python -m` puts the working directory first on sys.path,
    # ahead of PYTHONPATH, so run from a checkout every side would import its flowrig.
    done = subprocess.run(argv, capture_output=True, text=True, env=env or _env(), cwd=tempfile.gettempdir())
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark step failed ({' '.join(argv[:4])} ...):\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


def _side_runs(pairs: int, sides: dict[str, list[str]], envs: dict[str, dict[str, str]],
               outcomes: dict[str, list[dict]]) -> dict[str, list[float]]:
    """``pairs`` rounds of every side, each round in another order (a rotation), so
    that a machine whose load changes slows every side alike."""
    walls: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(pairs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            seconds, out = timed(sides[name], envs.get(name))
            walls[name].append(seconds)
            if name in outcomes:
                result = json.loads(out.strip().splitlines()[-1])
                assert result["result"] == 90 and result["n_workers"] == N_WORKERS, result
                outcomes[name].append(result["timings"])
    return walls


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _sides(args: argparse.Namespace, work: Path, certs: Path) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """The command of each side, and the environment of those that need their own."""
    flowrig_run = [sys.executable, "-m", "flowrig.cli", "run", str(SEED), "--certs", str(certs),
                   "--param", f"x={json.dumps(X)}", "--output", "json"]
    sides = {"a": flowrig_run, "b": [sys.executable, str(work / "plain_dask.py"), str(certs)]}
    envs: dict[str, dict[str, str]] = {}
    for i, baseline in enumerate(args.baseline):
        baseline = baseline.resolve()
        if not (baseline / "flowrig" / "__init__.py").is_file():
            sys.exit(f"{baseline} holds no flowrig checkout")
        sides[f"a{i}"] = flowrig_run
        path = os.pathsep.join(filter(None, [str(baseline), _env().get("PYTHONPATH")]))
        envs[f"a{i}"] = {**_env(), "PYTHONPATH": path}
    return sides, envs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", "--repeat", type=int, default=7, help="interleaved rounds of (a) and (b)")
    parser.add_argument("--repeat-c", type=int, default=0, help="runs of (c), 0 to skip; each takes about a minute")
    parser.add_argument("--warm", action="store_true", help="also (w): runs against an API that is already up")
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="also (a0), (a1)...: (a) with another checkout's flowrig first on PYTHONPATH "
                        "(same dependencies), in the same rounds; may be given more than once")
    parser.add_argument("--profile", action="store_true", help="then profile one run (imports, py-spy per "
                        "process, the run's own timeline): see start_profile.py")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flowrig-bench-"))
    certs = work / "certs"
    subprocess.run([sys.executable, "-m", "flowrig.cli", "certs", "generate", "--out", str(certs)],
                   check=True, capture_output=True)
    (work / "plain_dask.py").write_text(PLAIN_DASK)
    (work / "prefect_dask_defaults.py").write_text(PREFECT_DASK)
    install_plain_tls(work)
    sides, envs = _sides(args, work, certs)

    # One untimed run of each warms the OS page cache and flowrig's Prefect database template.
    for name, argv in sides.items():
        timed(argv, envs.get(name))
    server = None
    if args.warm:
        server, url = start_server(work, _env())
        envs["w"] = {**_env(), "PREFECT_API_URL": url}
        sides["w"] = sides["a"]
        timed(sides["w"], envs["w"])  # the server's own first requests, untimed

    load_before = os.getloadavg()
    outcomes: dict[str, list[dict]] = {name: [] for name in sides if name != "b"}
    walls = _side_runs(args.pairs, sides, envs, outcomes)
    load_after = os.getloadavg()
    if server is not None:
        server.stop()
    # Each of (c)'s processes starts its own temporary API; with several starting at once
    # on two cores, Prefect's default 20 s start-up timeout is too short to finish at all.
    c_env = {**_env(), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    c = [timed([sys.executable, str(work / "prefect_dask_defaults.py"), str(certs)], c_env)[0]
         for _ in range(args.repeat_c)]
    helps = [timed([sys.executable, "-m", "flowrig.cli", "--help"])[0] for _ in range(5)]

    medians = {name: statistics.median(values) for name, values in walls.items()}
    ma, mb = medians["a"], medians["b"]
    print(f"machine: {os.cpu_count()} cores; seed flow, x of {len(X)} items, {N_WORKERS} workers, mutual TLS")
    print(f"load average (1, 5, 15 min) before {' '.join(f'{v:.2f}' for v in load_before)}, "
          f"after {' '.join(f'{v:.2f}' for v in load_after)}")
    print(f"(a) flowrig run, local backend      median {ma:6.2f} s  runs {_runs(walls['a'])}")
    # The run's own phases; they add up to its total, the whole wall time of the command.
    for key in ("startup", "load", "prepare", "cluster_start", "api_wait", "flow", "teardown", "total"):
        print(f"      {key:<14} median {statistics.median(p.get(key) or 0.0 for p in outcomes['a']):6.2f} s")
    print(f"(b) plain Dask, same TLS            median {mb:6.2f} s  runs {_runs(walls['b'])}")
    for i, baseline in enumerate(args.baseline):
        print(f"(a{i}) {str(baseline)[-30:]:<30} median {medians[f'a{i}']:6.2f} s  runs {_runs(walls[f'a{i}'])}")
    if c:
        print(f"(c) prefect-dask, Prefect defaults  median {statistics.median(c):6.2f} s  runs {_runs(c)}")
    if "w" in walls:
        print(f"(w) flowrig run, API already up     median {medians['w']:6.2f} s  runs {_runs(walls['w'])}")
    marks = ("api_ready", "scheduler_up", "all_workers_joined", "first_task_finished", "flow_finished", "total")
    for name, timings in outcomes.items():
        found = {key: [t[key] for t in timings if t.get(key) is not None] for key in marks}
        print(f"    ({name}) marks, medians: " + ", ".join(f"{key} {statistics.median(v):.2f}"
                                                      for key, v in found.items() if v))
    own = statistics.median(x / y for x, y in zip(walls["a"], walls["b"]))
    print(f"a/b = {ma / mb:.2f}   (target <= 2.0, goal 1.5; median of each round's own a/b: {own:.2f})")
    for i, _ in enumerate(args.baseline):
        mine = statistics.median(x / y for x, y in zip(walls["a"], walls[f"a{i}"]))
        print(f"a{i}/b = {medians[f'a{i}'] / mb:.2f}   a/a{i} = {ma / medians[f'a{i}']:.2f}   (this checkout / "
              f"baseline {i}; median of each round's own: {mine:.2f})")
    if "w" in walls:
        print(f"w/b = {medians['w'] / mb:.2f}   (warm: what a run gives when an API is already up)")
    if c:
        print(f"c/a = {statistics.median(c) / ma:.2f}   (how much faster flowrig is than plain prefect-dask)")
    print(f"flowrig --help      median {statistics.median(helps):.3f} s   (target < 0.5 s)")
    if args.json:
        figures(walls, c, helps, args, (load_before, load_after)).write(args.json)
    if args.profile:
        from start_profile import profile

        profile(sides["a"], _env(), outcomes["a"], medians)


def figures(walls: dict[str, list[float]], c: list[float], helps: list[float], args: argparse.Namespace,
            loads: tuple[tuple[float, ...], tuple[float, ...]]) -> Figures:
    """The figures of :func:`main`'s printout, for ``--json``."""
    found = Figures()
    mb = statistics.median(walls["b"])
    load = f"load average {loads[0][0]:.2f} -> {loads[1][0]:.2f}"
    found.add("seed start a/b", statistics.median(walls["a"]), "s", walls["a"], floor=mb, target="<= 2.0",
              note=f"flowrig run against plain Dask over the same TLS, median of {len(walls['a'])} interleaved "
                   f"rounds (goal 1.5); plain Dask runs {[round(w, 3) for w in walls['b']]}; {load}")
    for i, baseline in enumerate(args.baseline):
        found.add(f"seed start a{i}/b", statistics.median(walls[f"a{i}"]), "s", walls[f"a{i}"], floor=mb,
                  note=f"baseline {baseline}")
    if "w" in walls:
        found.add("seed start w/b (API already up)", statistics.median(walls["w"]), "s", walls["w"], floor=mb)
    if c:
        found.add("prefect-dask with Prefect's defaults c/a", statistics.median(c), "s", c,
                  floor=statistics.median(walls["a"]))
    found.add("flowrig --help", statistics.median(helps), "s", helps, target="< 0.5")
    return found


if __name__ == "__main__":
    main()
