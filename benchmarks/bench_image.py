"""Image benchmark: size, cold build time, and rebuild time after editing only the flow.

    python benchmarks/bench_image.py [--base-image flowrig-base:bookworm] [--pip-ca FILE]

Builds a copy of a flow project (the seed by default) with flowrig's builder:

1. cold: every step's cache key made unique (a nonce build argument declared in each
   stage of a copy of the Dockerfile) and the wheel cache mount disabled
   (WHEEL_CACHE=0), so every step runs and every wheel comes from the index again.
   Not ``--no-cache``: Docker 20.10's BuildKit panics (moby/buildkit#2303) when a
   ``--no-cache`` build overlaps another build of the same steps, which takes the
   daemon down for everyone;
2. the image's size;
3. a flow-only edit: the copy's flow file is changed, the context rendered again and
   built (the rest of the context is kept byte for byte, so a concurrent edit of
   flowrig's own source cannot blur the figure);
4. import time of prefect, prefect_dask and distributed in the image (bytecode matters).

Prints each figure with its ratio to the target (size <= 300 MB, rebuild < 5 s) and
a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowrig import defaults  # noqa: E402
from flowrig.builder import build, detect_client, render_context  # noqa: E402
from flowrig.builder.context import BuildContext, ContextFile  # noqa: E402

TARGET_SIZE_MB = 300.0
TARGET_REBUILD_S = 5.0


def image_size_mb(client: str, tag: str) -> float:
    done = subprocess.run([client, "image", "inspect", "--format", "{{.Size}}", tag],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) / 1e6


def import_seconds(client: str, tag: str) -> float:
    code = ("import time; t = time.perf_counter(); import prefect, prefect_dask, distributed; "
            "print(time.perf_counter() - t)")
    done = subprocess.run([client, "run", "--rm", "--network", "none", "--entrypoint", "python",
                           tag, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def with_nonce(context: BuildContext, nonce: str) -> BuildContext:
    """The context with a nonce argument declared in every stage: a cache of its own."""
    text = context.dockerfile
    text = re.sub(r"^(FROM .*)$", r"\1\nARG FLOWRIG_BENCH_NONCE", text, flags=re.MULTILINE)
    files = {**context.files, "Dockerfile": ContextFile(text.encode("utf-8"))}
    return BuildContext(files, {**context.build_args, "FLOWRIG_BENCH_NONCE": nonce})


def flow_file(project: Path) -> Path:
    import tomllib

    config = tomllib.loads((project / defaults.PROJECT_FILE).read_text())
    return project / config["flow"].rpartition(":")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=REPO / "examples" / "seed")
    parser.add_argument("--base-image",
                        default=os.environ.get("FLOWRIG_TEST_BASE_IMAGE", "flowrig-base:bookworm"))
    default_ca = "/etc/ssl/certs/ca-certificates.crt"
    parser.add_argument("--pip-ca", default=os.environ.get("FLOWRIG_PIP_CA")
                        or (default_ca if Path(default_ca).is_file() else None))
    parser.add_argument("--tag", default="flowrig-bench:seed")
    parser.add_argument("--wheel-cache", action="store_true",
                        help="let the cold build use wheels cached by earlier builds")
    parser.add_argument("--keep", action="store_true", help="keep the image afterwards")
    args = parser.parse_args()

    client = detect_client()
    print(f"docker client {client.path} ({'BuildKit' if client.buildkit else 'legacy builder'}),"
          f" base {args.base_image}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="flowrig-bench-") as scratch:
        project = Path(scratch) / args.project.name
        shutil.copytree(args.project, project, ignore=shutil.ignore_patterns("__pycache__"))
        first = with_nonce(render_context(project, base_image=args.base_image), f"{time.time_ns()}")
        build_args = dict(first.build_args)
        if not args.wheel_cache:
            build_args["WHEEL_CACHE"] = "0"
        first = BuildContext(first.files, build_args)

        cold = build(first, args.tag, args.pip_ca, quiet=True)
        size = image_size_mb(client.path, args.tag)
        cached = build(first, args.tag, args.pip_ca, quiet=True)

        flow = flow_file(project)
        flow.write_text(flow.read_text() + f"\n# edited by the benchmark at {time.time()}\n")
        edited = render_context(project, base_image=args.base_image)
        flow_key = f"{defaults.CONTEXT_PROJECT_DIR}/{flow.relative_to(project).as_posix()}"
        second = BuildContext({**first.files, flow_key: edited.files[flow_key]}, build_args)
        changed = sorted(p for p in second.files if first.files[p] != second.files[p])
        rebuilt = build(second, args.tag, args.pip_ca, quiet=True)
        imports = import_seconds(client.path, args.tag)

    figures = {
        "builder": "buildkit" if client.buildkit else "legacy",
        "base_image": args.base_image,
        "image_size_mb": round(size, 1),
        "cold_build_s": round(cold.seconds, 1),
        "cached_build_s": round(cached.seconds, 2),
        "flow_edit_rebuild_s": round(rebuilt.seconds, 2),
        "import_prefect_dask_distributed_s": round(imports, 2),
        "size_vs_target": round(size / TARGET_SIZE_MB, 2),
        "rebuild_vs_target": round(rebuilt.seconds / TARGET_REBUILD_S, 2),
    }
    print(f"image size          {size:7.1f} MB   target <= {TARGET_SIZE_MB:.0f} MB "
          f"({figures['size_vs_target']:.2f} of target)")
    print(f"cold build          {cold.seconds:7.1f} s    (every step"
          f"{', wheel cache on' if args.wheel_cache else ', no wheel cache'})")
    print(f"cached build        {cached.seconds:7.2f} s")
    print(f"flow-only rebuild   {rebuilt.seconds:7.2f} s    target < {TARGET_REBUILD_S:.0f} s "
          f"({figures['rebuild_vs_target']:.2f} of target; changed: {', '.join(changed)})")
    print(f"import prefect, prefect_dask, distributed in the image: {imports:.2f} s")
    print(json.dumps(figures, sort_keys=True))
    if not args.keep:
        subprocess.run([client.path, "rmi", args.tag], capture_output=True)


if __name__ == "__main__":
    main()
