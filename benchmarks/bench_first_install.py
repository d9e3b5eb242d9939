"""The README's first command on a fresh clone, as a new user meets it.

For each git revision given, clones this repository, makes a fresh HOME and a fresh
virtualenv whose ``pip`` stands for the user's, and runs the README's first command
(the line that starts with ``pip install uv==``) in the clone: no uv cache
(``UV_NO_CACHE=1``), no pip configuration of this machine (``PIP_CONFIG_FILE=/dev/null``,
no ``PIP_FIND_LINKS``). Reports the wall time of the whole command and its CPU time
(every process it waited for), the time of ``pip install uv`` alone, the number of
packages uv installed (from its own "Installed N packages" line), and checks that the
flow printed ``"result": 90``. Revisions are measured in turn, round after round, so
that a busy machine weighs on each of them alike.

    python benchmarks/bench_first_install.py [--rev main] [--rev HEAD] [--repeat 2]

``PYTHONDONTWRITEBYTECODE`` is removed from the command's environment: a user's machine
does not set it, and without it Python writes the bytecode of what the run imports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_COMMAND = re.compile(r"^\s*(pip install uv==.*)$", re.MULTILINE)
INSTALLED = re.compile(r"Installed (\d+) packages? in ([\d.]+)(m?s)")


def seconds(value: str, unit: str) -> float:
    return float(value) / (1000 if unit == "ms" else 1)


def first_command(readme: str) -> str:
    match = FIRST_COMMAND.search(readme)
    if match is None:
        sys.exit("the README has no line starting with 'pip install uv=='")
    return match.group(1).strip()


def fresh_env(home: Path, user_bin: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYENV"))
           or key == "PIP_CERT"}  # this machine reaches PyPI through a proxy with its own CA
    env.update(HOME=str(home), UV_NO_CACHE="1", PIP_CONFIG_FILE="/dev/null",
               PATH=f"{user_bin}:/usr/local/bin:/usr/bin:/bin")
    return env


def measure(rev: str, python: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="flowrig-first-") as scratch:
        root = Path(scratch)
        clone, home, user = root / "flowrig", root / "home", root / "user-python"
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", rev], check=True)
        home.mkdir()
        subprocess.run([python, "-m", "venv", str(user)], check=True)
        command = first_command((clone / "README.md").read_text())
        env = fresh_env(home, user / "bin")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True)
        total = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU time of the command and every process it waited for: what a busy machine
        # changes least (wall time there also waits for other people's work).
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            sys.exit(f"{rev}: the first command failed ({done.returncode}):\n{done.stderr[-3000:]}")
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        if outcome.get("result") != 90:
            sys.exit(f"{rev}: the flow gave {outcome.get('result')!r}, not 90")
        installed = INSTALLED.search(done.stderr)
        if installed is None:
            sys.exit(f"{rev}: uv printed no 'Installed N packages' line:\n{done.stderr[-2000:]}")
        # pip's own step, timed alone on a second fresh virtualenv (the first one has uv now).
        shutil.rmtree(user)
        subprocess.run([python, "-m", "venv", str(user)], check=True)
        start = time.perf_counter()
        subprocess.run(["bash", "-c", command.split("&&")[0]], cwd=clone, env=env, check=True,
                       capture_output=True)
        pip_uv = time.perf_counter() - start
        return {"rev": rev, "command": command, "total": total, "cpu": cpu, "pip_install_uv": pip_uv,
                "packages": int(installed.group(1)), "uv_install": seconds(installed.group(2), installed.group(3)),
                "run_total": outcome.get("timings", {}).get("total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", help="git revision to measure (repeatable); default HEAD")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--python", default=sys.executable, help="the interpreter the user's pip belongs to")
    args = parser.parse_args()
    revs = args.rev or ["HEAD"]
    python = os.path.realpath(args.python)
    rows: dict[str, list[dict]] = {rev: [] for rev in revs}
    for round_ in range(args.repeat):
        for rev in revs:
            row = measure(rev, python)
            rows[rev].append(row)
            print(f"round {round_ + 1} {rev}: {row['total']:.1f} s ({row['cpu']:.1f} s of CPU), "
                  f"{row['packages']} packages (pip install uv alone {row['pip_install_uv']:.1f} s, "
                  f"uv's linking {row['uv_install']:.1f} s, the run's own total {row['run_total']} s)",
                  file=sys.stderr, flush=True)
    for rev, measured in rows.items():
        totals = [row["total"] for row in measured]
        print(json.dumps({
            "rev": rev, "command": measured[0]["command"], "packages": measured[0]["packages"],
            "total_s": [round(t, 1) for t in totals], "median_s": round(statistics.median(totals), 1),
            "cpu_s": [round(row["cpu"], 1) for row in measured],
            "load_average_at_end": round(os.getloadavg()[0], 1),
            "pip_install_uv_s": [round(row["pip_install_uv"], 1) for row in measured],
            "uv_install_s": [row["uv_install"] for row in measured],
            "run_total_s": [row["run_total"] for row in measured],
        }))


if __name__ == "__main__":
    main()
