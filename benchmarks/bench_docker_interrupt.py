"""Ctrl-C on ``flowrig run --backend docker``: seconds from the signal to the exit.

Starts a docker run whose one task naps, waits until its flow runs, sends SIGINT to
the ``flowrig`` process (as a terminal's Ctrl-C does) and times how long the process
takes to exit; then the same with a second SIGINT half a second after the first.
After each run it checks that nothing of the run is left. The target is 5 s for one
Ctrl-C.

    python benchmarks/bench_docker_interrupt.py [--image flowrig-seed:test] [--repeat 3]

The image must exist (``flowrig build examples/seed --tag flowrig-seed:test``); a small
image with a napping flow is derived from it for the runs and removed afterwards.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import seed_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.run_support import NAP_FLOW  # noqa: E402

#: The napping flow of the tests, as a file in the derived image.
FLOW = textwrap.dedent(NAP_FLOW)
TOML = 'flow = "flow.py:main"\n\n[cluster]\nbackend = "docker"\nn_workers = 1\n'
#: flowrig with Ctrl-C's default effect, however this script was started (a background
#: job of a shell ignores SIGINT, and its children inherit that).
WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def derive(image: str) -> str:
    """``image`` with the napping project in place of its own."""
    tag = f"flowrig-bench-interrupt:{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "project").mkdir()
        (root / "project" / "flow.py").write_text(FLOW)
        (root / "project" / "flowrig.toml").write_text(TOML)
        (root / "Dockerfile").write_text(f"FROM {image}\nCOPY project/ /opt/flowrig/project/\n")
        subprocess.run(["docker", "build", "-q", "-t", tag, str(root)], check=True, capture_output=True)
    return tag


def interrupted_run(image: str, signals: int) -> float:
    """Seconds from the first SIGINT to the exit of a run interrupted ``signals`` times."""
    run_id = "b" + uuid.uuid4().hex[:9]
    env = {**os.environ, "FLOWRIG_RUN_ID": run_id}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-c", WITH_SIGINT, sys.executable, "-m", "flowrig.cli", "run", "--backend", "docker",
         "--image", image],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    deadline = time.monotonic() + 300
    while not any("Beginning flow run" in line for line in lines):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            sys.exit(f"the run did not get to its flow:\n{''.join(lines)[-3000:]}")
        time.sleep(0.2)
    time.sleep(2)
    sent = time.perf_counter()
    process.send_signal(signal.SIGINT)
    for _ in range(signals - 1):
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
    process.wait()
    took = time.perf_counter() - sent
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=flowrig.run-id={run_id}"], capture_output=True, text=True
    ).stdout.split()
    if left:
        subprocess.run([sys.executable, "-m", "flowrig.cli", "docker", "leftovers", "--run-id", run_id, "--remove"],
                       capture_output=True)
        sys.exit(f"run {run_id} left {len(left)} containers after Ctrl-C")
    return took


def main() -> None:
    args = seed_image.parse_args(__doc__.splitlines()[0])
    image = derive(args.image)
    try:
        for signals, label in ((1, "one Ctrl-C"), (2, "two Ctrl-C, 0.5 s apart")):
            times = [interrupted_run(image, signals) for _ in range(args.repeat)]
            print(
                f"{label:26s} exit after: median {statistics.median(times):.1f} s, "
                f"max {max(times):.1f} s ({', '.join(f'{t:.1f}' for t in times)}); nothing left"
            )
    finally:
        subprocess.run(["docker", "image", "rm", "-f", image], capture_output=True)


if __name__ == "__main__":
    main()
