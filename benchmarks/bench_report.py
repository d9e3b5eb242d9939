"""Every acceptance figure in one run: each benchmark as a ratio against its floor.

Runs each acceptance benchmark (benchmarks/report_steps.py) as a subprocess with
``--json``, one after another, holding ``/tmp/QUIET`` from start to end (removed on an
error or an interrupt too) while sampling the load average and every other process's CPU
(benchmarks/report_quiet.py), so the report says whether the machine was quiet. Prints
one table (figure | flowrig | floor | ratio | target | holds | quiet) and writes
``benchmarks/results/report.json``: the machine, the commit, the date, the load, every
step's figures and the table's rows. ``benchmarks/readme_table.py`` renders that file
into the README.

A benchmark that fails, times out or writes no figures is a ``failed`` row for every
figure it owes, and the report exits 1; a target that does not hold is a ``NO``.

    python benchmarks/bench_report.py [--profile quick|full] [--only local,scale,docker,pull,fargate,cost]
        [--seed-image flowrig-seed:report] [--base-image flowrig-base:bookworm] [--pull-before REV]
        [--quiet-limit 0.1] [--wait] [--out FILE]

``--profile full`` runs the acceptance sizes (about 45 minutes on 2 cores);
``--profile quick`` (the default) fewer pairs and sizes (under 15 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from report_quiet import QuietHeld, QuietHold, Sampler, summary
from report_rows import console_table, rows
from report_steps import PROFILES, PULL_BEFORE, Step, select, steps

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip()


def machine() -> dict:
    return {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}",
            "cpu": platform.processor() or platform.machine()}


def _stop(process: subprocess.Popen) -> None:
    """The step's whole process group: TERM, then KILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 1) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:])[-400:]


def prepare(step: Step, work: Path, base_image: str) -> str | None:
    """Builds the image ``step`` needs (on ``base_image``); the error, or None."""
    if step.image is None:
        return None
    ca = os.environ.get("FLOWRIG_PIP_CA") or "/etc/ssl/certs/ca-certificates.crt"
    argv = [sys.executable, "-m", "flowrig.cli", "build", str(REPO / "examples" / "seed"), "--tag", step.image,
            "--base-image", base_image, "--quiet", *(["--pip-ca", ca] if Path(ca).is_file() else [])]
    log = work / f"{step.name}-build.log"
    with log.open("w") as out:
        done = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return f"image build {step.image} failed (exit {done.returncode}): {_tail(log)}" if done.returncode else None


def run_step(step: Step, work: Path, base_image: str = "flowrig-base:bookworm") -> dict:
    """Runs one benchmark; its figures, exit status, seconds and error (None when it worked)."""
    figures_file, log = work / f"{step.name}.json", work / f"{step.name}.log"
    argv = [sys.executable, str(HERE / step.script), *step.args, "--json", str(figures_file)]
    result = {"name": step.name, "what": step.what, "command": " ".join(["python", f"benchmarks/{step.script}",
                                                                         *step.args]),
              "expected": list(step.expected), "exit": None, "error": None, "figures": [], "log": str(log)}
    started = time.time()
    result["started"] = started
    error = prepare(step, work, base_image)
    result["measured_from"] = time.time()
    if error is None:
        with log.open("w") as out:
            # A session of its own: an interrupt or a timeout stops the step's whole tree.
            process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                result["exit"] = process.wait(step.timeout)
            except subprocess.TimeoutExpired:
                error = f"timed out after {step.timeout:.0f} s"
            finally:
                if process.poll() is None:
                    _stop(process)
        if error is None and result["exit"] != 0:
            error = f"exit {result['exit']}: {_tail(log)}"
    result["figures"], problem = _figures(figures_file)
    result["error"], result["seconds"] = error or problem, round(time.time() - started, 1)
    return result


def _figures(path: Path) -> tuple[list[dict], str | None]:
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return [], "wrote no figures"
    except ValueError as problem:
        return [], f"unreadable figures: {problem}"


def stopped(step: Step, work: Path, why: str) -> dict:
    """A step the report's interruption cut short or never reached: failed, with any
    figures it wrote before it was stopped."""
    return {"name": step.name, "what": step.what, "command": f"python benchmarks/{step.script}",
            "expected": list(step.expected), "exit": None, "error": why, "seconds": 0.0, "measured_from": time.time(),
            "figures": _figures(work / f"{step.name}.json")[0], "log": str(work / f"{step.name}.log")}


def report(args: argparse.Namespace, chosen: list[Step], work: Path) -> dict:
    """Runs ``chosen`` under the QUIET hold with the sampler on; the whole report."""
    sampler = Sampler(args.sample_interval)
    sampler.start()
    began = time.time()
    done: list[dict] = []
    interrupted: int | None = None
    try:
        time.sleep(min(10.0, args.sample_interval * 5))  # the machine before the first step
        before = summary(list(sampler.samples), docker=False, limit=args.quiet_limit)
        for step in chosen:
            if interrupted is not None:
                done.append({**stopped(step, work, "not run: the report was interrupted"), "quiet": {"quiet": False}})
                continue
            print(f"[{step.name}] {step.what} ...", flush=True)
            try:
                result = run_step(step, work, args.base_image)
            except (KeyboardInterrupt, SystemExit) as stop:
                # Ctrl-C or SIGTERM/SIGHUP (which exit): the step was stopped on the way out
                # of run_step; what ran so far is still written, the rest marked failed.
                interrupted = stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130
                result = stopped(step, work, "interrupted")
            window = [s for s in sampler.samples if result["measured_from"] <= s["at"] <= time.time()]
            for sample in window:
                sample["docker"] = step.docker  # for the whole run's summary
            result["quiet"] = summary(window, docker=step.docker, limit=args.quiet_limit)
            print(f"[{step.name}] {'failed: ' + result['error'] if result['error'] else 'done'} in "
                  f"{result['seconds']:.0f} s; other processes {result['quiet'].get('others_cores_mean', '-')} "
                  f"cores on average, load {result['quiet'].get('load1_mean', '-')}", flush=True)
            done.append(result)
    finally:
        sampler.stop()
    whole = summary(sampler.samples, docker=False, limit=args.quiet_limit)
    return {
        "profile": args.profile if not args.only else f"{args.profile}, only {args.only}",
        "date": time.strftime("%Y-%m-%d", time.gmtime(began)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
        "seconds": round(time.time() - began),
        "commit": _git("rev-parse", "--short=12", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "quiet": all(step["quiet"]["quiet"] for step in done) and before["quiet"],
        "load": {"before": before, "whole": whole},
        "steps": done,
        "rows": rows(done),
        "interrupted": interrupted,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--only", metavar="NAMES", help="only these steps, comma-separated")
    parser.add_argument("--seed-image", default="flowrig-seed:report", help="the seed image the cost step builds")
    parser.add_argument("--base-image", default=os.environ.get("FLOWRIG_TEST_BASE_IMAGE", "flowrig-base:bookworm"),
                        help="the base of the images the report builds")
    parser.add_argument("--pull-before", default=PULL_BEFORE, metavar="REV",
                        help="the revision whose image build the pull step measures as 'before'")
    parser.add_argument("--quiet-limit", type=float, default=0.1, metavar="CORES",
                        help="other processes' mean CPU (cores) up to which a step counts as quiet")
    parser.add_argument("--sample-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--wait", action="store_true", help="wait while another benchmark holds /tmp/QUIET")
    parser.add_argument("--out", type=Path, help="where to write the report (default benchmarks/results/"
                        "report.json; report-only.json with --only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        chosen = select(steps(args.profile, args.seed_image, args.pull_before), args.only)
    except ValueError as problem:
        print(f"bench_report: {problem}", file=sys.stderr)
        return 2
    out = args.out or RESULTS / ("report-only.json" if args.only else "report.json")
    # A stop (SIGTERM, SIGHUP) unwinds like an interrupt: the running step is stopped and
    # /tmp/QUIET removed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _: sys.exit(128 + number))
    work = Path(tempfile.mkdtemp(prefix="flowrig-report-"))
    found: dict | None = None
    try:
        with QuietHold(wait=args.wait):
            found = report(args, chosen, work)
    except QuietHeld as problem:
        print(f"bench_report: {problem}", file=sys.stderr)
        return 3
    finally:
        # The steps' logs stay only when a step failed: its error names the last line.
        failed = found is not None and any(step["error"] for step in found["steps"])
        if not failed:
            shutil.rmtree(work, ignore_errors=True)
    for step in found["steps"]:
        if not failed:
            step.pop("log")  # gone with the folder; a failed report keeps its logs
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=1) + "\n")
    quiet = found["load"]["whole"]
    print(f"\n{found['profile']} profile, commit {found['commit']}{' (dirty)' if found['dirty'] else ''}, "
          f"{found['machine']['cores']} cores, {found['seconds'] / 60:.0f} min; other processes "
          f"{quiet.get('others_cores_mean', '-')} cores on average (quiet: {'yes' if found['quiet'] else 'NO'})\n")
    print(console_table(found["rows"]))
    print(f"\nwritten to {out}" + (f"; the steps' logs are in {work}" if failed else ""))
    if found["interrupted"] is not None:
        return found["interrupted"]
    return 1 if any(step["error"] for step in found["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
