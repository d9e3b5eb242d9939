"""How long a local run takes to end after SIGTERM, whatever its flow is doing.

Each case starts ``flowrig run`` on a project whose task never returns, waits until the
task runs, sends SIGTERM and times the command until it exited (and checks its exit
code, 143):

- ``runner``: the signal to ``flowrig run`` alone (``kill PID``, ``docker stop`` of a
  runner container);
- ``group``: to its whole process group (``timeout(1)``, Ctrl-C in a terminal);
- ``swallowed``: to ``flowrig run`` alone, while the flow catches the termination and
  goes on waiting, so that the run is torn down from outside the flow.

    python benchmarks/bench_stop.py [--repeat 3]

Most of ``runner`` and ``group`` is distributed's nanny waiting 4 s for a worker busy in
its task before it kills it; ``swallowed`` adds the 5 s the run is given to give way
(:data:`flowrig.common.signals.STOP_GRACE`).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.run_support import STUCK_FLOW  # noqa: E402

CASES = {"runner": (False, False), "group": (True, False), "swallowed": (False, True)}


def stop_once(project: Path, whole_group: bool, swallow: bool) -> float:
    started = project / f"started-{time.monotonic_ns()}"
    argv = [sys.executable, "-m", "flowrig.cli", "run", str(project), "--param", f"started={started}",
            "--param", f"swallow={'true' if swallow else 'false'}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not started.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the run never reached its task:\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.1)
        time.sleep(0.5)
        sent = time.perf_counter()
        if whole_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
        seconds = time.perf_counter() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 128 + signal.SIGTERM:
        sys.exit(f"exit code {proc.returncode}, not 143:\n{stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowrig-bench-stop-") as tmp:
        project = Path(tmp)
        (project / "flow.py").write_text(textwrap.dedent(STUCK_FLOW))
        (project / "flowrig.toml").write_text('flow = "flow.py:main"\n')
        print(f"{'case':<10} {'median s':>9} {'min s':>7} {'max s':>7}   (SIGTERM to exit, {args.repeat} runs)")
        for name, (whole_group, swallow) in CASES.items():
            times = [stop_once(project, whole_group, swallow) for _ in range(args.repeat)]
            print(f"{name:<10} {statistics.median(times):>9.2f} {min(times):>7.2f} {max(times):>7.2f}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
