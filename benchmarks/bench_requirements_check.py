"""What a local run's requirements check costs: the project's requirements against the environment.

Writes a project whose requirements file names ``--count`` distributions installed here
(with version specifiers they satisfy, a marker, and half of them through a ``-r``
include), then times :func:`flowrig.project.requirements.check_environment` in fresh
interpreters, as ``flowrig run`` calls it: the first call of a process, once with
nothing imported (``packaging`` is imported by the check) and once with
``packaging.requirements`` imported beforehand (a run imports it anyway, through Prefect,
right after the check, so this is what the check adds to the flow's loading), and a
second call. A run checks while its Prefect API starts, which is the longer path.

    python benchmarks/bench_requirements_check.py [--count 40] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

PROBE = """
import json, sys, time
from flowrig.project import load_project
project = load_project(sys.argv[1])
if sys.argv[2] == "preimported":
    # A run imports these anyway (Prefect does, after the check): what the check adds
    # to a run is its time without them.
    import importlib.metadata, packaging.requirements
start = time.perf_counter()
from flowrig.project.requirements import check_environment
check_environment(project)
first = time.perf_counter() - start
start = time.perf_counter()
check_environment(project)
second = time.perf_counter() - start
print(json.dumps({"first_ms": first * 1000, "second_ms": second * 1000,
                  "packaging_was_imported": "packaging.requirements" in sys.modules}))
"""


def write_project(root: Path, count: int) -> None:
    names = sorted({dist.metadata["Name"] for dist in metadata.distributions() if dist.metadata["Name"]})[:count]
    lines = [f"{name}>=0 ; python_version >= '3'" for name in names]
    half = len(lines) // 2
    (root / "flow.py").write_text("from prefect import flow\n@flow\ndef main():\n    return 1\n")
    (root / "flowrig.toml").write_text('flow = "flow.py:main"\n')
    (root / "more.txt").write_text("\n".join(lines[half:]) + "\n")
    (root / "requirements.txt").write_text("\n".join([*lines[:half], "-r more.txt"]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_project(root, args.count)
        rows: dict[str, list[dict]] = {"cold": [], "preimported": []}
        for _ in range(args.repeat):
            for mode, found in rows.items():
                done = subprocess.run([sys.executable, "-c", PROBE, str(root), mode], capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(done.stderr)
                found.append(json.loads(done.stdout))
    result = {"requirements": args.count}
    for mode, found in rows.items():
        result[f"{mode}_first_call_ms_median"] = round(statistics.median(r["first_ms"] for r in found), 1)
        result[f"{mode}_first_call_ms_max"] = round(max(r["first_ms"] for r in found), 1)
    result["second_call_ms_median"] = round(statistics.median(r["second_ms"] for r in rows["cold"]), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
