"""Where a mapped list's patterns spend their time, phase by phase, in one ``flowrig run`` each.

``bench_scale.py --patterns`` says how long each pattern takes against plain Dask; this says
where the time of the map-to-list patterns goes, from inside the flow (one clock: the local
backend's processes share the machine's):

- ``submit``: the flow's ``map`` calls (the runner's own per-task path: Prefect expanding
  the mapping, task inputs, one ``Client.map``);
- ``last upstream``: when the last mapped task ended on its worker (its final state's time);
- ``downstream start``: when the downstream task's body began (``map-downstream``: in the
  runner, after Prefect resolved every future; ``map-submit-downstream``: on a worker, after
  Dask moved every upstream state there);
- ``flow done``: when the flow had its value;
- ``lag``: ``flow done`` minus ``last upstream``: what the pattern adds once the work is done;
- ``runner CPU``: CPU seconds of the runner process (every thread) during the flow.

Each pattern runs ``--repeat`` times, interleaved with the other patterns (and with the
checkout ``--baseline`` when given); medians are printed, with the load average.

    python benchmarks/pattern_timeline.py [--n 5000] [--repeat 3] [--baseline /path/to/checkout]
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
from pathlib import Path

PATTERNS = ("map-result", "map-downstream", "map-submit-downstream", "map-chain")
PHASES = ("submit", "last_upstream", "downstream_start", "flow_done", "lag", "runner_cpu")

FLOW = textwrap.dedent(
    """
    import resource
    import time

    from prefect import flow, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(values: list[int]) -> tuple[float, int]:
        return time.time(), sum(values)

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def ended(futures) -> float:
        futures.wait()  # their final states, fetched in batches (no API read per future)
        return max(f.state.timestamp.timestamp() for f in futures)

    @flow
    def timeline(n: int = 10, pattern: str = "map-result") -> dict:
        t0, cpu0 = time.time(), cpu()
        futures = double.map(range(n))
        if pattern == "map-chain":
            futures = inc.map(futures)
        submitted = time.time()
        start = None
        if pattern == "map-result":
            value = sum(futures.result())
        elif pattern == "map-downstream":
            start, value = total(futures)
        elif pattern == "map-submit-downstream":
            start, value = total.submit(futures).result()
        elif pattern == "map-chain":
            value = sum(futures.result())
        else:
            raise ValueError(pattern)
        done, spent = time.time(), cpu() - cpu0
        last = ended(futures)
        return {"value": value, "submit": submitted - t0, "last_upstream": last - t0,
                "downstream_start": (start - t0) if start is not None else None,
                "flow_done": done - t0, "lag": done - last, "runner_cpu": spent}
    """
)


def expected(pattern: str, n: int) -> int:
    return n * n if pattern == "map-chain" else n * (n - 1)


def run_once(work: Path, pattern: str, n: int, code: Path | None) -> dict[str, float | None]:
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "flowrig.cli", "run", str(work / "project"), "--param", f"n={n}",
            "--param", f"pattern={pattern}", "--output", "json", "--quiet", "--certs", str(work / "certs")]
    # From the scratch folder: `python -m` would import a checkout's flowrig run from there.
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=work)
    if done.returncode != 0:
        sys.exit(f"flowrig run failed ({pattern}, n={n}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])["result"]
    assert result.pop("value") == expected(pattern, n), (pattern, n, result)
    return result


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--patterns", default=",".join(PATTERNS), help=f"comma-separated, of {','.join(PATTERNS)}")
    parser.add_argument("--baseline", type=Path, help="also flowrig from this checkout, first on PYTHONPATH")
    args = parser.parse_args()
    patterns = args.patterns.split(",")
    if unknown := sorted(set(patterns) - set(PATTERNS)):
        parser.error(f"unknown pattern(s) {', '.join(unknown)}: choose from {', '.join(PATTERNS)}")
    if args.baseline and not (args.baseline / "flowrig" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no flowrig package there")

    work = Path(tempfile.mkdtemp(prefix="flowrig-bench-timeline-"))
    (work / "project").mkdir()
    (work / "project" / "flow.py").write_text(FLOW)
    (work / "project" / "flowrig.toml").write_text(
        'flow = "flow.py:timeline"\n\n[cluster]\nn_workers = 3\nmax_workers = 3\n'
    )
    subprocess.run([sys.executable, "-m", "flowrig.cli", "certs", "generate", "--out", str(work / "certs")],
                   check=True, capture_output=True)
    sides: list[tuple[str, Path | None]] = [("this", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    load = os.getloadavg()[0]
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeat):
        for pattern in patterns:
            for side, code in sides:
                runs.setdefault((pattern, side), []).append(run_once(work, pattern, args.n, code))
    print(f"n={args.n}; medians of {args.repeat} interleaved runs; load average {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; seconds from the flow's start")
    print(f"{'pattern':<24}{'side':<10}" + "".join(f"{p:>18}" for p in PHASES))
    for (pattern, side), results in runs.items():
        cells = [median([r[p] for r in results]) for p in PHASES]
        print(f"{pattern:<24}{side:<10}" + "".join(f"{'-' if c is None else f'{c:.2f}':>18}" for c in cells))


if __name__ == "__main__":
    main()
