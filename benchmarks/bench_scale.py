"""Many tasks: flowrig's cost per task beside plain Dask's, in one run on one machine.

A flow maps a trivial task over ``range(n)`` and sums the results; the same work in
plain Dask is ``client.map`` then a sum, on a TLS LocalCluster with the same
certificates and the same number of workers (3, one thread each). Each (flowrig, plain)
pair runs back to back, as fresh processes timed from launch to exit; medians of the
pairs are printed with:

- the ratio flowrig / plain Dask for each n;
- the per-task slope between n = 1000 and 5000, flowrig's minus plain Dask's;
- the runner's peak resident memory (VmHWM of the ``flowrig run`` process) and its
  growth per task between n = 1000 and 5000;
- a flow taking a list parameter of 10,000 and 20,000 items: once mapping a fixed
  1000 tasks (the parameter's size alone), once mapping over the list itself; for each,
  the flowrig overhead over plain Dask and how it grows when the list doubles.

``--server`` runs n = 1000 and 5000 (``--sizes``) against a real Prefect server started
here (``--database postgres``, the default, or ``sqlite``; its task-run recorder on):
flowrig, prefect-dask's ``DaskTaskRunner`` and plain Dask side by side, each Prefect
run's task runs recorded, with the server's recording rate; ``--profile-server FILE``
samples the server with py-spy and says where its time went; ``--baseline DIR`` adds
flowrig from another checkout (see benchmarks/server_runs.py).
``--docker IMAGE`` adds n = 1000 on the docker backend beside the local one (the
image of this benchmark's project, which ``--docker-build BASE`` builds).

``--patterns [LIST]`` runs instead each common way a flow waits on many tasks
(benchmarks/scale_patterns.py: ``map-result``, ``map-downstream``,
``map-submit-downstream``, ``result-loop``, ``wait``, ``as-completed``, ``submit-loop``,
``map-chain``; all of them, or a comma-separated list) beside its plain-Dask twin, at
``--sizes`` (default 10,1000,5000), interleaved pairs; per pattern the ratio (target
<= 2.2 at n = 1000, <= 2.0 at n = 5000), flowrig's own slope (target <= 1.0 ms/task) and
the runner's RSS growth (KB/task, target ~10). ``--json FILE`` writes every figure.
``--profile-roles`` adds the CPU seconds of each role of every run (runner, API,
scheduler, workers; benchmarks/role_cpu.py) and the workers' CPU per task, the figure
that the task engine's cost on the workers shows in.

    python benchmarks/bench_scale.py [--repeat 3] [--lists-repeat 1] [--big] [--server] [--docker IMAGE]
    python benchmarks/bench_scale.py --patterns [map-result,result-loop] [--sizes 1000,5000] [--json FILE]
    python benchmarks/bench_scale.py --patterns map-result --sizes 5000 --baseline DIR --profile-roles
    python benchmarks/bench_scale.py --server-only [--database sqlite] [--profile-server FILE] [--baseline DIR]
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
from typing import Callable

import role_cpu
from figures import Figures
from plain_tls import install as install_plain_tls
from prefect_server import start_server
from scale_patterns import FLOW as PATTERNS_FLOW
from scale_patterns import PATTERNS, expected, plain_script, target
from server_runs import ServerBench, measure_server

WORKERS = 3

#: Every figure measured, for ``--json`` (the benchmarks' common output contract).
FIGURES = Figures()
figure = FIGURES.add


class ROLES:
    """With ``--profile-roles`` (``enabled``): the CPU seconds by role of the last run."""

    enabled = False
    last: dict[str, list[float]] = {}


FLOW = textwrap.dedent(
    """
    from prefect import flow, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def scale(n: int = 10, xs: list[int] | None = None, over_list: bool = False) -> int:
        items = xs if over_list else range(n)
        return sum(double.map(items).result())
    """
)

PLAIN = textwrap.dedent(
    """
    import json, sys
    from distributed import Client
    from plain_tls import security, tls_cluster

    def double(x):
        return 2 * x

    if __name__ == "__main__":
        certs, n, xs_file, over_list = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
        xs = json.load(open(xs_file)) if xs_file != "-" else None
        items = xs if over_list else range(n)
        with tls_cluster(certs, %(workers)d) as cluster:
            with Client(cluster, security=security(certs)) as client:
                print(client.submit(sum, client.map(double, items)).result())
    """
) % {"workers": WORKERS}

#: Runs ``flowrig run`` in this process and writes its peak memory when it exits.
RUNNER = textwrap.dedent(
    """
    import atexit, sys

    def record(out):
        status = open("/proc/self/status").read()
        open(out, "w").write(next(l for l in status.splitlines() if l.startswith("VmHWM")))

    if __name__ == "__main__":  # not again in a process that imports this module
        atexit.register(record, sys.argv.pop(1))
        sys.argv[0] = "flowrig"
        from flowrig.cli import main
        main()
    """
)


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    if ROLES.enabled:
        done, ROLES.last = role_cpu.run(argv, env)
    else:
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark step failed ({' '.join(argv[:5])} ...):\n{done.stderr[-3000:]}")
    return wall, done.stdout


class Bench:
    def __init__(self, work: Path, env: dict[str, str], docker_image: str | None = None,
                 recorded: "Callable[[], int] | None" = None) -> None:
        """``recorded``: task runs the API has recorded so far. When given, each run is
        followed (untimed) by a wait until its tasks are recorded, so that a server still
        working off one run's events does not slow the next."""
        self.work, self.env, self.docker_image, self.recorded = work, env, docker_image, recorded
        self.certs = work / "certs"
        self.project = work / "project"

    def flowrig(self, n: int, xs_file: Path | None = None, over_list: bool = False,
                backend: str = "local") -> tuple[float, float]:
        """Wall seconds and the runner's peak RSS (MB) of one ``flowrig run``."""
        params = {"n": n, "over_list": over_list}
        if xs_file is not None:
            params["xs"] = json.loads(xs_file.read_text())
        expected = 2 * sum(params["xs"]) if over_list else n * (n - 1)
        tasks = len(params["xs"]) if over_list else n
        return self.flowrig_run(self.project, params, expected, tasks, backend)

    def pattern(self, pattern: str, n: int, code: Path | None = None) -> tuple[float, float]:
        """Wall seconds and the runner's peak RSS (MB) of one run of ``pattern``; with
        ``code``, that checkout's flowrig first on the path."""
        params = {"n": n, "pattern": pattern}
        env = None
        if code is not None:
            env = dict(self.env, PYTHONPATH=os.pathsep.join(filter(None, [str(code), self.env.get("PYTHONPATH")])))
        return self.flowrig_run(self.work / "patterns", params, expected(pattern, n), n, env=env)

    def plain_pattern(self, pattern: str, n: int) -> float:
        argv = [sys.executable, str(self.work / "plain_patterns.py"), str(self.certs), str(n), pattern]
        wall, out = run(argv, self.env)
        assert int(out.strip().splitlines()[-1]) == expected(pattern, n), (pattern, n, out)
        return wall

    def flowrig_run(self, project: Path, params: dict, expected: int, tasks: int,
                    backend: str = "local", env: dict[str, str] | None = None) -> tuple[float, float]:
        rss = self.work / "rss.txt"
        params_file = self.work / "params.json"
        params_file.write_text(json.dumps(params))
        argv = [sys.executable, str(self.work / "runner.py"), str(rss), "run", str(project),
                "--params-file", str(params_file), "--output", "json", "--quiet", "--backend", backend]
        if backend == "local":
            argv += ["--certs", str(self.certs)]
        else:
            argv += ["--image", self.docker_image]
        before = self.recorded() if self.recorded else 0
        wall, out = run(argv, env or self.env)
        if self.recorded:
            deadline = time.monotonic() + 600
            while self.recorded() - before < tasks and time.monotonic() < deadline:
                time.sleep(1)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["state"] == "Completed" and result["result"] == expected, result
        return wall, int(rss.read_text().split()[1]) / 1024

    def plain(self, n: int, xs_file: Path | None = None, over_list: bool = False) -> float:
        argv = [sys.executable, str(self.work / "plain.py"), str(self.certs), str(n),
                str(xs_file) if xs_file else "-", "1" if over_list else "0"]
        return run(argv, self.env)[0]


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(bench: Bench, sizes: list[int], repeat: int, label: str,
            flowrig: "Callable[[int], tuple[float, float]] | None" = None,
            plain: "Callable[[int], float] | None" = None) -> None:
    """Interleaved (flowrig, plain Dask) pairs at each size; ratios, own slope, RSS growth."""
    flowrig = flowrig or bench.flowrig
    plain = plain or bench.plain
    walls: dict[int, tuple[list[float], list[float], list[float]]] = {}
    for n in sizes:
        rows: tuple[list[float], list[float], list[float]] = ([], [], [])
        load = os.getloadavg()[0]
        for i in range(repeat):
            # Interleaved pairs, alternating which side goes first.
            if i % 2:
                rows[1].append(plain(n))
                plain_roles = ROLES.last
                wall, rss = flowrig(n)
                flowrig_roles = ROLES.last
            else:
                wall, rss = flowrig(n)
                flowrig_roles = ROLES.last
                rows[1].append(plain(n))
                plain_roles = ROLES.last
            rows[0].append(wall)
            rows[2].append(rss)
            if ROLES.enabled:
                print(f"[{label}] n={n} flowrig: {role_cpu.summary(flowrig_roles, n)}; "
                      f"plain Dask: {role_cpu.summary(plain_roles, n)}", flush=True)
        walls[n] = rows
        a, b = median(rows[0]), median(rows[1])
        goal = target(n)
        print(f"[{label}] n={n:<6} flowrig {a:7.2f} s   plain Dask {b:6.2f} s   ratio {a / b:5.2f}"
              f"{f' (target <= {goal})' if goal else ''}   runner peak RSS {median(rows[2]):6.1f} MB   "
              f"(flowrig runs {', '.join(f'{w:.2f}' for w in rows[0])}; plain {', '.join(f'{w:.2f}' for w in rows[1])};"
              f" load {load:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
        figure(f"{label} n={n} whole run", a, "s", rows[0], floor=b, target=f"<= {goal}" if goal else None,
               note=f"plain Dask runs {[round(w, 3) for w in rows[1]]}; load average {load:.2f}")
        figure(f"{label} n={n} runner peak RSS", median(rows[2]), "MB", rows[2])
    low, high = (1000, 5000) if 1000 in walls and 5000 in walls else (min(walls), max(walls))
    if high - low >= 900:
        span = high - low
        fa = (median(walls[high][0]) - median(walls[low][0])) / span * 1000
        pb = (median(walls[high][1]) - median(walls[low][1])) / span * 1000
        growth = (median(walls[high][2]) - median(walls[low][2])) * 1024 / span
        print(f"[{label}] per-task slope {low}->{high}: flowrig {fa:.2f} ms, plain Dask {pb:.2f} ms, "
              f"flowrig's own {fa - pb:.2f} ms (target <= 1.0);  runner RSS growth {growth:.1f} KB/task "
              f"(target ~10)", flush=True)
        figure(f"{label} own slope {low}->{high}", fa - pb, "ms/task", [], target="<= 1.0",
               note=f"flowrig {fa:.3f} ms/task, plain Dask {pb:.3f} ms/task")
        figure(f"{label} runner RSS growth {low}->{high}", growth, "KB/task", [], target="~10")


def measure_patterns(bench: Bench, patterns: list[str], sizes: list[int], repeat: int,
                     baseline: Path | None = None, json_path: Path | None = None) -> None:
    for pattern in patterns:
        if baseline is None:
            measure(bench, sizes, repeat, pattern, flowrig=lambda n, p=pattern: bench.pattern(p, n),
                    plain=lambda n, p=pattern: bench.plain_pattern(p, n))
        else:
            for n in sizes:
                measure_against(bench, pattern, n, repeat, baseline)
        # The figures so far, after each pattern: a run stopped part way keeps what it measured.
        write_json(json_path)


def measure_against(bench: Bench, pattern: str, n: int, repeat: int, baseline: Path) -> None:
    """This checkout, ``baseline`` and plain Dask in turn (each first in turn), one pattern at ``n``."""
    sides = {
        "this": lambda: bench.pattern(pattern, n)[0],
        "baseline": lambda: bench.pattern(pattern, n, code=baseline)[0],
        "plain": lambda: bench.plain_pattern(pattern, n),
    }
    names = list(sides)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    load = os.getloadavg()[0]
    for i in range(repeat):
        for name in names[i % 3:] + names[:i % 3]:
            walls[name].append(sides[name]())
            if ROLES.enabled:
                roles = ROLES.last
                cpu[name].append(1000 * sum(roles.get("worker", [])) / n)
                print(f"[{pattern}] n={n} {name}: {role_cpu.summary(roles, n)}", flush=True)
    this, base, plain = (median(walls[name]) for name in names)
    goal = target(n)
    print(f"[{pattern}] n={n:<6} this {this:7.2f} s  baseline {base:7.2f} s  plain Dask {plain:6.2f} s   "
          f"this/plain {this / plain:5.2f}  baseline/plain {base / plain:5.2f}  this/baseline {this / base:5.3f}"
          f"{f'  (target <= {goal})' if goal else ''}   (load {load:.2f} -> {os.getloadavg()[0]:.2f}; runs "
          + "; ".join(f"{name} {', '.join(f'{w:.2f}' for w in walls[name])}" for name in names) + ")", flush=True)
    figure(f"{pattern} n={n} whole run", this, "s", walls["this"], floor=plain, target=f"<= {goal}" if goal else None,
           note=f"plain Dask runs {walls['plain']}; load average {load:.2f}")
    figure(f"{pattern} n={n} baseline whole run", base, "s", walls["baseline"], floor=plain,
           note=f"baseline {baseline}")
    if ROLES.enabled:
        this, base, plain = (median(cpu[name]) for name in names)
        print(f"[{pattern}] n={n} worker CPU per task: this {this:.2f} ms  baseline {base:.2f} ms  "
              f"plain Dask {plain:.2f} ms   this/baseline {this / base:.3f}", flush=True)
        for name in names:
            figure(f"{pattern} n={n} {name} worker CPU per task", median(cpu[name]), "ms/task", cpu[name])


def measure_lists(bench: Bench, repeat: int, label: str) -> None:
    files = {}
    for size in (10_000, 20_000):
        files[size] = bench.work / f"xs-{size}.json"
        files[size].write_text(json.dumps(list(range(size))))
    for over_list, what in ((False, "1000 tasks, list parameter"), (True, "one task per list item")):
        overhead = {}
        for size, path in files.items():
            a, b = [], []
            for _ in range(repeat):
                a.append(bench.flowrig(1000, path, over_list)[0])
                b.append(bench.plain(1000, path, over_list))
            overhead[size] = median(a) - median(b)
            figure(f"{label} {what} of {size} items", median(a), "s", a, floor=median(b))
            print(f"[{label}] {what} of {size} items: flowrig {median(a):6.2f} s, plain Dask {median(b):6.2f} s, "
                  f"overhead {overhead[size]:6.2f} s", flush=True)
        print(f"[{label}] {what}: doubling the list multiplies the overhead by "
              f"{overhead[20_000] / overhead[10_000]:.2f} (target <= 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="pairs per size")
    parser.add_argument("--big", action="store_true", help="also n = 20000")
    parser.add_argument("--server", action="store_true", help="again against a real Prefect server")
    parser.add_argument("--server-only", action="store_true", help="only against a real Prefect server")
    parser.add_argument("--docker", metavar="IMAGE", help="n = 1000 on the docker backend with this image")
    parser.add_argument("--docker-build", metavar="BASE_IMAGE", help="build that image first, on this base")
    parser.add_argument("--no-lists", action="store_true", help="skip the list-parameter flows")
    parser.add_argument("--lists-repeat", type=int, help="pairs per list-parameter flow (default: --repeat)")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres",
                        help="the Prefect server's database (--server)")
    parser.add_argument("--profile-server", metavar="FILE", type=Path,
                        help="sample the server with py-spy during the largest flowrig run (--server)")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy to use (default: on PATH)")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="also flowrig from this checkout, first on PYTHONPATH (--server, --patterns)")
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")],
                        help="comma-separated n instead of 10,100,1000,5000")
    parser.add_argument("--patterns", nargs="?", const=",".join(PATTERNS), metavar="LIST",
                        help=f"only the common patterns, each beside its plain-Dask twin (all, or some of "
                             f"{','.join(PATTERNS)}); sizes default to 10,1000,5000")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write every figure to FILE as JSON")
    parser.add_argument("--profile-roles", action="store_true",
                        help="also the CPU seconds of each role of each run, and the workers' CPU per task")
    parser.add_argument("--no-prefect-dask", action="store_true",
                        help="leave prefect-dask out of --server (at n = 5000 it takes ten minutes or more)")
    args = parser.parse_args()
    lists_repeat = args.lists_repeat or args.repeat
    ROLES.enabled = args.profile_roles
    patterns = args.patterns.split(",") if args.patterns else []
    if unknown := sorted(set(patterns) - set(PATTERNS)):
        parser.error(f"unknown pattern(s) {', '.join(unknown)}: choose from {', '.join(PATTERNS)}")

    work = Path(tempfile.mkdtemp(prefix="flowrig-bench-scale-"))
    (work / "project").mkdir()
    (work / "project" / "flow.py").write_text(FLOW)
    (work / "project" / "flowrig.toml").write_text(
        f'flow = "flow.py:scale"\n\n[cluster]\nn_workers = {WORKERS}\nmax_workers = {WORKERS}\n'
    )
    (work / "plain.py").write_text(PLAIN)
    install_plain_tls(work)
    (work / "patterns").mkdir()
    (work / "patterns" / "flow.py").write_text(PATTERNS_FLOW)
    (work / "patterns" / "flowrig.toml").write_text(
        f'flow = "flow.py:patterns"\n\n[cluster]\nn_workers = {WORKERS}\nmax_workers = {WORKERS}\n'
    )
    (work / "plain_patterns.py").write_text(plain_script(WORKERS))
    (work / "runner.py").write_text(RUNNER)
    subprocess.run([sys.executable, "-m", "flowrig.cli", "certs", "generate", "--out", str(work / "certs")],
                   check=True, capture_output=True)
    if args.docker and args.docker_build:
        subprocess.run([sys.executable, "-m", "flowrig.cli", "build", str(work / "project"), "--tag", args.docker,
                        "--base-image", args.docker_build, "--quiet"], check=True)
    default_sizes = [10, 1000, 5000] if patterns else [10, 100, 1000, 5000] + ([20000] if args.big else [])
    sizes = args.sizes or default_sizes
    print(f"machine: {os.cpu_count()} cores; {WORKERS} workers, 1 thread each, mutual TLS; "
          f"medians of {args.repeat} interleaved pairs; load average {os.getloadavg()[0]:.2f}", flush=True)

    embedded = Bench(work, base_env(), args.docker)
    embedded.flowrig(10)  # untimed: page cache, the Prefect database template
    embedded.plain(10)
    if patterns:
        if args.baseline and not (args.baseline / "flowrig" / "__init__.py").is_file():
            sys.exit(f"{args.baseline} holds no flowrig checkout")
        measure_patterns(embedded, patterns, sizes, args.repeat, args.baseline.resolve() if args.baseline else None,
                         args.json)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        write_json(args.json)
        return
    if not args.server_only:
        measure(embedded, sizes, args.repeat, "embedded API")
    if not args.no_lists and not args.server_only:
        measure_lists(embedded, lists_repeat, "embedded API")
    if args.docker and not args.server_only:
        local = [embedded.flowrig(1000)[0] for _ in range(args.repeat)]
        docker = [embedded.flowrig(1000, backend="docker")[0] for _ in range(args.repeat)]
        print(f"[docker] n=1000: docker backend {median(docker):.2f} s, local backend {median(local):.2f} s")

    if args.server or args.server_only:
        server, url = start_server(work, base_env(), database=args.database)
        try:
            env = {**base_env(), "PREFECT_API_URL": url}
            remote = ServerBench(work, env, url, work / "project", work / "certs", work / "runner.py",
                                 work / "plain.py", args.baseline)
            remote.flowrig(10)  # untimed: the server's first requests, the flow's first version
            if not args.no_prefect_dask:
                remote.prefect_dask(10)
            measure_server(remote, args.sizes or [1000, 5000], args.repeat, f"Prefect server on {args.database}",
                           args.profile_server, args.py_spy, prefect_dask=not args.no_prefect_dask)
        finally:
            server.stop()
    write_json(args.json)


def write_json(path: Path | None) -> None:
    if path is not None:
        FIGURES.write(path)


if __name__ == "__main__":
    main()
