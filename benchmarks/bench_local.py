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

Every variant runs as a fresh process, timed from launch to exit, so interpreter
start-up and imports count the same for all three. Prints medians and the ratios
a/b (target <= 3.0 on this cold path), w/b and c/a, plus the time of ``flowrig --help``
(target < 0.5 s).

    python benchmarks/bench_local.py [--repeat 3] [--repeat-c 1] [--warm]
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

from prefect_server import start_server

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "seed"
X = list(range(10))
N_WORKERS = 2  # what the seed's sizing hook gives for ten items

PLAIN_DASK = textwrap.dedent(
    """
    import sys
    from distributed import Client, LocalCluster
    from distributed.security import Security

    def times_two(x):
        return x * 2

    if __name__ == "__main__":
        certs = sys.argv[1]
        sec = Security(
            tls_ca_file=f"{certs}/ca.crt", tls_client_cert=f"{certs}/tls.crt",
            tls_client_key=f"{certs}/tls.key", tls_scheduler_cert=f"{certs}/tls.crt",
            tls_scheduler_key=f"{certs}/tls.key", tls_worker_cert=f"{certs}/tls.crt",
            tls_worker_key=f"{certs}/tls.key", require_encryption=True,
        )
        with LocalCluster(n_workers=%(n)d, threads_per_worker=1, protocol="tls://",
                          security=sec, host="127.0.0.1", dashboard_address=":0") as cluster:
            with Client(cluster, security=sec) as client:
                doubled = client.map(times_two, %(x)r)
                total = client.submit(sum, doubled).result()
        assert total == 90, total
    """
) % {"n": N_WORKERS, "x": X}

PREFECT_DASK = textwrap.dedent(
    """
    import sys
    from distributed import LocalCluster
    from distributed.security import Security
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    certs = sys.argv[1]
    sec = Security(
        tls_ca_file=f"{certs}/ca.crt", tls_client_cert=f"{certs}/tls.crt",
        tls_client_key=f"{certs}/tls.key", tls_scheduler_cert=f"{certs}/tls.crt",
        tls_scheduler_key=f"{certs}/tls.key", tls_worker_cert=f"{certs}/tls.crt",
        tls_worker_key=f"{certs}/tls.key", require_encryption=True,
    )

    @task
    def times_two(x: int) -> int:
        return x * 2

    @task
    def get_sum(x: list[int]) -> int:
        return sum(x)

    @flow(task_runner=DaskTaskRunner(
        cluster_class=LocalCluster,
        cluster_kwargs={"n_workers": %(n)d, "threads_per_worker": 1, "protocol": "tls://",
                        "security": sec, "host": "127.0.0.1", "dashboard_address": ":0"},
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
    done = subprocess.run(argv, capture_output=True, text=True, env=env or _env())
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark step failed ({' '.join(argv[:4])} ...):\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (b)")
    parser.add_argument("--repeat-c", type=int, default=1, help="runs of (c), 0 to skip; each takes about a minute")
    parser.add_argument("--warm", action="store_true", help="also (w): runs against an API that is already up")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flowrig-bench-"))
    certs = work / "certs"
    subprocess.run([sys.executable, "-m", "flowrig.cli", "certs", "generate", "--out", str(certs)],
                   check=True, capture_output=True)
    (work / "plain_dask.py").write_text(PLAIN_DASK)
    (work / "prefect_dask_defaults.py").write_text(PREFECT_DASK)
    flowrig_run = [sys.executable, "-m", "flowrig.cli", "run", str(SEED), "--certs", str(certs),
                   "--param", f"x={json.dumps(X)}", "--output", "json"]

    # One untimed run of each warms the OS page cache and flowrig's Prefect database template.
    timed(flowrig_run)
    timed([sys.executable, str(work / "plain_dask.py"), str(certs)])

    server, warm_env = None, None
    if args.warm:
        server, url = start_server(work, _env())
        warm_env = {**_env(), "PREFECT_API_URL": url}
        timed(flowrig_run, warm_env)  # the server's own first requests, untimed

    a, b, c, w, phases = [], [], [], [], []
    for _ in range(args.repeat):
        seconds, out = timed(flowrig_run)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["result"] == 90 and result["n_workers"] == N_WORKERS, result
        a.append(seconds)
        phases.append(result["timings"])
        b.append(timed([sys.executable, str(work / "plain_dask.py"), str(certs)])[0])
        if warm_env is not None:
            w.append(timed(flowrig_run, warm_env)[0])
    if server is not None:
        server.stop()
    # Each of (c)'s processes starts its own temporary API; with several starting at once
    # on two cores, Prefect's default 20 s start-up timeout is too short to finish at all.
    c_env = {**_env(), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    for _ in range(args.repeat_c):
        c.append(timed([sys.executable, str(work / "prefect_dask_defaults.py"), str(certs)], c_env)[0])
    helps = [timed([sys.executable, "-m", "flowrig.cli", "--help"])[0] for _ in range(5)]

    ma, mb = statistics.median(a), statistics.median(b)
    mc = statistics.median(c) if c else float("nan")
    print(f"machine: {os.cpu_count()} cores; seed flow, x of {len(X)} items, {N_WORKERS} workers, mutual TLS")
    print(f"(a) flowrig run, local backend      median {ma:6.2f} s  runs {', '.join(f'{v:.2f}' for v in a)}")
    # The run's own phases; they add up to its total, the whole wall time of the command.
    for key in ("startup", "load", "prepare", "cluster_start", "api_wait", "flow", "teardown", "total"):
        print(f"      {key:<14} median {statistics.median(p.get(key) or 0.0 for p in phases):6.2f} s")
    print(f"(b) plain Dask, same TLS            median {mb:6.2f} s  runs {', '.join(f'{v:.2f}' for v in b)}")
    print(f"(c) prefect-dask, Prefect defaults  median {mc:6.2f} s  runs {', '.join(f'{v:.2f}' for v in c)}")
    if w:
        mw = statistics.median(w)
        print(f"(w) flowrig run, API already up     median {mw:6.2f} s  runs {', '.join(f'{v:.2f}' for v in w)}")
    print(f"a/b = {ma / mb:.2f}   (target <= 3.0, cold: the run starts its own API)")
    if w:
        print(f"w/b = {mw / mb:.2f}   (warm: what a run gives when an API is already up)")
    print(f"c/a = {mc / ma:.2f}   (how much faster flowrig is than plain prefect-dask)")
    print(f"flowrig --help      median {statistics.median(helps):.3f} s   (target < 0.5 s)")


if __name__ == "__main__":
    main()
