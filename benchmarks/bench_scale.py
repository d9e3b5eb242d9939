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

    python benchmarks/bench_scale.py [--repeat 3] [--lists-repeat 1] [--big] [--server] [--docker IMAGE]
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

from prefect_server import start_server
from server_runs import ServerBench, measure_server

WORKERS = 3

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
    from distributed import Client, LocalCluster
    from distributed.security import Security

    def double(x):
        return 2 * x

    if __name__ == "__main__":
        certs, n, xs_file, over_list = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
        xs = json.load(open(xs_file)) if xs_file != "-" else None
        items = xs if over_list else range(n)
        sec = Security(
            tls_ca_file=f"{certs}/ca.crt", tls_client_cert=f"{certs}/tls.crt",
            tls_client_key=f"{certs}/tls.key", tls_scheduler_cert=f"{certs}/tls.crt",
            tls_scheduler_key=f"{certs}/tls.key", tls_worker_cert=f"{certs}/tls.crt",
            tls_worker_key=f"{certs}/tls.key", require_encryption=True,
        )
        with LocalCluster(n_workers=%(workers)d, threads_per_worker=1, protocol="tls://", security=sec,
                          host="127.0.0.1", dashboard_address=":0") as cluster:
            with Client(cluster, security=sec) as client:
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
        rss = self.work / "rss.txt"
        params = {"n": n, "over_list": over_list}
        if xs_file is not None:
            params["xs"] = json.loads(xs_file.read_text())
        params_file = self.work / "params.json"
        params_file.write_text(json.dumps(params))
        argv = [sys.executable, str(self.work / "runner.py"), str(rss), "run", str(self.project),
                "--params-file", str(params_file), "--output", "json", "--quiet", "--backend", backend]
        if backend == "local":
            argv += ["--certs", str(self.certs)]
        else:
            argv += ["--image", self.docker_image]
        before = self.recorded() if self.recorded else 0
        wall, out = run(argv, self.env)
        if self.recorded:
            deadline = time.monotonic() + 600
            tasks = len(params["xs"]) if over_list else n
            while self.recorded() - before < tasks and time.monotonic() < deadline:
                time.sleep(1)
        result = json.loads(out.strip().splitlines()[-1])
        expected = 2 * sum(json.loads(xs_file.read_text())) if over_list else n * (n - 1)
        assert result["state"] == "Completed" and result["result"] == expected, result
        return wall, int(rss.read_text().split()[1]) / 1024

    def plain(self, n: int, xs_file: Path | None = None, over_list: bool = False) -> float:
        argv = [sys.executable, str(self.work / "plain.py"), str(self.certs), str(n),
                str(xs_file) if xs_file else "-", "1" if over_list else "0"]
        return run(argv, self.env)[0]


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(bench: Bench, sizes: list[int], repeat: int, label: str) -> None:
    walls: dict[int, tuple[list[float], list[float], list[float]]] = {}
    for n in sizes:
        rows = ([], [], [])
        for i in range(repeat):
            # Interleaved pairs, alternating which side goes first.
            if i % 2:
                rows[1].append(bench.plain(n))
                wall, rss = bench.flowrig(n)
            else:
                wall, rss = bench.flowrig(n)
                rows[1].append(bench.plain(n))
            rows[0].append(wall)
            rows[2].append(rss)
        walls[n] = rows
        a, b = median(rows[0]), median(rows[1])
        print(f"[{label}] n={n:<6} flowrig {a:7.2f} s   plain Dask {b:6.2f} s   ratio {a / b:5.2f}   "
              f"runner peak RSS {median(rows[2]):6.1f} MB   (flowrig runs {', '.join(f'{w:.2f}' for w in rows[0])})",
              flush=True)
    if 1000 in walls and 5000 in walls:
        fa = (median(walls[5000][0]) - median(walls[1000][0])) / 4000 * 1000
        pb = (median(walls[5000][1]) - median(walls[1000][1])) / 4000 * 1000
        growth = (median(walls[5000][2]) - median(walls[1000][2])) * 1024 / 4000
        print(f"[{label}] per-task slope 1000->5000: flowrig {fa:.2f} ms, plain Dask {pb:.2f} ms, "
              f"flowrig's own {fa - pb:.2f} ms (target <= 6);  runner RSS growth {growth:.1f} KB/task (target ~10)")
        for n in (1000, 5000):
            print(f"[{label}] ratio at n={n}: {median(walls[n][0]) / median(walls[n][1]):.2f} "
                  f"(target <= {3 if n == 1000 else 4})")


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
                        help="also flowrig from this checkout, first on PYTHONPATH (--server)")
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")],
                        help="comma-separated n instead of 10,100,1000,5000")
    parser.add_argument("--no-prefect-dask", action="store_true",
                        help="leave prefect-dask out of --server (at n = 5000 it takes ten minutes or more)")
    args = parser.parse_args()
    lists_repeat = args.lists_repeat or args.repeat

    work = Path(tempfile.mkdtemp(prefix="flowrig-bench-scale-"))
    (work / "project").mkdir()
    (work / "project" / "flow.py").write_text(FLOW)
    (work / "project" / "flowrig.toml").write_text(
        f'flow = "flow.py:scale"\n\n[cluster]\nn_workers = {WORKERS}\nmax_workers = {WORKERS}\n'
    )
    (work / "plain.py").write_text(PLAIN)
    (work / "runner.py").write_text(RUNNER)
    subprocess.run([sys.executable, "-m", "flowrig.cli", "certs", "generate", "--out", str(work / "certs")],
                   check=True, capture_output=True)
    if args.docker and args.docker_build:
        subprocess.run([sys.executable, "-m", "flowrig.cli", "build", str(work / "project"), "--tag", args.docker,
                        "--base-image", args.docker_build, "--quiet"], check=True)
    sizes = args.sizes or [10, 100, 1000, 5000] + ([20000] if args.big else [])
    print(f"machine: {os.cpu_count()} cores; {WORKERS} workers, 1 thread each, mutual TLS; "
          f"medians of {args.repeat} interleaved pairs", flush=True)

    embedded = Bench(work, base_env(), args.docker)
    embedded.flowrig(10)  # untimed: page cache, the Prefect database template
    embedded.plain(10)
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

if __name__ == "__main__":
    main()
