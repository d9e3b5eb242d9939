"""Image benchmark: sizes before and after, with and without the scientific stack; build times.

    python benchmarks/bench_image.py [--base-image flowrig-base:bookworm] [--pip-ca FILE]
                                     [--before-rev 215c797] [--skip-timings]

Sizes, side by side, for two projects: the seed (flowrig alone: prefect, dask, bokeh and
so numpy) and the seed with numpy, scipy and pandas in its requirements.txt. Each is
built three ways in this one run:

- before: the image build as flowrig had it at ``--before-rev`` (main before stripping
  was made safe): that revision's Dockerfile and in-build steps (buildsteps.py,
  filerules.py) in place of today's, the rest of the context today's. It strips every
  shared object, vendored BLAS included, and needs BuildKit (RUN --mount);
- after: today's build, as ``flowrig build`` runs it (STRIP=auto: only what provably
  loads the same is stripped);
- after, STRIP=off: today's build without stripping, which shows what stripping saves.

Each image is then asked, as its user, to compute with numpy's BLAS (an SVD) and, with the
stack, to factor a matrix with scipy and group with pandas ("works"): every before image
fails that, since numpy itself (which bokeh brings into every image) no longer loads.

Then, unless ``--skip-timings``, today's build of the seed is timed: a cold build
(every step's cache key made unique with a nonce build argument declared in each
stage; not ``--no-cache``, which makes Docker 20.10's BuildKit panic when another build
of the same steps overlaps, moby/buildkit#2303), a cached build, a rebuild after editing
only the flow (it includes the import check, the image's last step), and the import
time of prefect, prefect_dask and distributed in the image. Prints each figure with its
ratio to the target (size <= 300 MB, rebuild < 5 s) and a last line of JSON.
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

from flowrig.builder import build, detect_client, render_context, write_context  # noqa: E402
from flowrig.builder import defaults as builder_defaults  # noqa: E402
from flowrig.builder.build import build_command  # noqa: E402
from flowrig.builder.context import BuildContext, ContextFile  # noqa: E402
from flowrig.project.defaults import PROJECT_FILE  # noqa: E402

TARGET_SIZE_MB = 300.0
TARGET_REBUILD_S = 5.0
#: main before the image build kept the scientific stack's libraries loadable.
BEFORE_REV = "215c797"
#: The files of the image build that decide what it strips and installs.
BUILD_FILES = ("Dockerfile", "flowrig/builder/buildsteps.py", "flowrig/project/filerules.py")
STACK = ("numpy", "scipy", "pandas")
#: What "works" means in each image: numpy (every image has it: bokeh needs it) computes
#: with its BLAS; with the stack, scipy factors a matrix and pandas groups.
WORKS_NUMPY = (
    "import numpy; a = numpy.random.default_rng(0).standard_normal((200, 200)); "
    "u, s, vt = numpy.linalg.svd(a); assert numpy.allclose((u * s) @ vt, a)"
)
WORKS_STACK = WORKS_NUMPY + (
    "; import scipy.linalg, pandas; p, l, u = scipy.linalg.lu(a); assert numpy.allclose(p @ l @ u, a); "
    "print(pandas.DataFrame({'g': [0, 1, 0], 'v': [1, 2, 3]}).groupby('g').v.sum().to_dict())"
)


def image_size_mb(client: str, tag: str) -> float:
    done = subprocess.run([client, "image", "inspect", "--format", "{{.Size}}", tag],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) / 1e6


def works(client: str, tag: str, code: str) -> bool:
    done = subprocess.run([client, "run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", code],
                          capture_output=True, text=True)
    return done.returncode == 0


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

    config = tomllib.loads((project / PROJECT_FILE).read_text())
    return project / config["flow"].rpartition(":")[0]


def at_revision(context: BuildContext, revision: str) -> BuildContext:
    """The context with the image build's own files as they were at ``revision``."""
    files = dict(context.files)
    for name in BUILD_FILES:
        done = subprocess.run(["git", "show", f"{revision}:{name}"], cwd=REPO, capture_output=True, check=True)
        files[name] = ContextFile(done.stdout)
    return BuildContext(files, context.build_args)


def build_before(client, context: BuildContext, tag: str, pip_ca: str | None) -> None:
    """The old Dockerfile, built the way the old builder did (its CA as a BuildKit secret)."""
    with tempfile.TemporaryDirectory(prefix="flowrig-bench-before-") as scratch:
        directory = write_context(context, Path(scratch) / "context")
        command = build_command(context, tag, directory, buildkit=True, client=client.path,
                                tls_nonce=f"{time.time_ns()}")
        if pip_ca:
            command[-1:-1] = ["--secret", f"id=pip-ca,src={Path(pip_ca).resolve()}"]
        done = subprocess.run(command, env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the before build failed:\n{(done.stdout + done.stderr)[-3000:]}")


def projects(scratch: Path) -> dict[str, tuple[Path, str]]:
    """label -> (project, what "works" runs in its images)."""
    seed = scratch / "seed"
    shutil.copytree(REPO / "examples" / "seed", seed, ignore=shutil.ignore_patterns("__pycache__"))
    stack = scratch / "seed-stack"
    shutil.copytree(seed, stack)
    (stack / "requirements.txt").write_text("\n".join(STACK) + "\n")
    return {"seed (flowrig only; numpy)": (seed, WORKS_NUMPY), f"seed + {'/'.join(STACK)}": (stack, WORKS_STACK)}


def sizes(args, client) -> dict:
    variants = {"before": {}, "after": {}, "after, STRIP=off": {}}
    with tempfile.TemporaryDirectory(prefix="flowrig-bench-") as scratch:
        for label, (project, check) in projects(Path(scratch)).items():
            context = render_context(project, base_image=args.base_image)
            tags = {name: f"flowrig-bench:{re.sub(r'[^a-z0-9]+', '-', (name + '-' + label).lower()).strip('-')}"
                    for name in variants}
            build_before(client, at_revision(context, args.before_rev), tags["before"], args.pip_ca)
            build(context, tags["after"], args.pip_ca, quiet=True)
            unstripped = BuildContext(context.files, {**context.build_args, "STRIP": "off"})
            build(unstripped, tags["after, STRIP=off"], args.pip_ca, quiet=True)
            for name, tag in tags.items():
                variants[name][label] = {"size_mb": round(image_size_mb(client.path, tag), 1),
                                         "works": works(client.path, tag, check)}
                if not args.keep:
                    subprocess.run([client.path, "rmi", tag], capture_output=True)
    return variants


def timings(args, client) -> dict:
    with tempfile.TemporaryDirectory(prefix="flowrig-bench-") as scratch:
        project = Path(scratch) / "seed"
        shutil.copytree(REPO / "examples" / "seed", project, ignore=shutil.ignore_patterns("__pycache__"))
        tag = "flowrig-bench:timings"
        first = with_nonce(render_context(project, base_image=args.base_image), f"{time.time_ns()}")
        cold = build(first, tag, args.pip_ca, quiet=True)
        size = image_size_mb(client.path, tag)
        cached = build(first, tag, args.pip_ca, quiet=True)
        flow = flow_file(project)
        flow.write_text(flow.read_text() + f"\n# edited by the benchmark at {time.time()}\n")
        edited = render_context(project, base_image=args.base_image)
        flow_key = f"{builder_defaults.CONTEXT_PROJECT_DIR}/{flow.relative_to(project).as_posix()}"
        # The rest of the context byte for byte: a concurrent edit of flowrig's own source
        # cannot blur the figure.
        second = BuildContext({**first.files, flow_key: edited.files[flow_key]}, first.build_args)
        rebuilt = build(second, tag, args.pip_ca, quiet=True)
        imports = import_seconds(client.path, tag)
        if not args.keep:
            subprocess.run([client.path, "rmi", tag], capture_output=True)
    return {
        "image_size_mb": round(size, 1),
        "cold_build_s": round(cold.seconds, 1),
        "cached_build_s": round(cached.seconds, 2),
        "flow_edit_rebuild_s": round(rebuilt.seconds, 2),
        "import_prefect_dask_distributed_s": round(imports, 2),
        "size_vs_target": round(size / TARGET_SIZE_MB, 2),
        "rebuild_vs_target": round(rebuilt.seconds / TARGET_REBUILD_S, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image",
                        default=os.environ.get("FLOWRIG_TEST_BASE_IMAGE", "flowrig-base:bookworm"))
    default_ca = "/etc/ssl/certs/ca-certificates.crt"
    parser.add_argument("--pip-ca", default=os.environ.get("FLOWRIG_PIP_CA")
                        or (default_ca if Path(default_ca).is_file() else None))
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision whose image build is 'before'")
    parser.add_argument("--skip-timings", action="store_true", help="sizes only")
    parser.add_argument("--keep", action="store_true", help="keep the images afterwards")
    args = parser.parse_args()

    client = detect_client()
    if not client.buildkit:
        sys.exit("the 'before' build needs BuildKit (its Dockerfile uses RUN --mount): use a client that has it")
    print(f"docker client {client.path} (BuildKit), base {args.base_image}, before = {args.before_rev}",
          file=sys.stderr)
    figures: dict = {"base_image": args.base_image, "before_rev": args.before_rev, "sizes": sizes(args, client)}

    labels = list(next(iter(figures["sizes"].values())))
    names = list(figures["sizes"])
    print(f"{'image size, MB (works: computes with numpy/scipy/pandas)':58}" + "".join(f"{n:>22}" for n in names))
    for label in labels:
        cells = [figures["sizes"][n][label] for n in names]
        print(f"{label:58}" + "".join(f"{c['size_mb']:>10.1f} ({'works' if c['works'] else 'BROKEN'})".rjust(22)
                                        for c in cells))
    for label in labels:
        after, off = figures["sizes"]["after"][label], figures["sizes"]["after, STRIP=off"][label]
        print(f"stripping saves {off['size_mb'] - after['size_mb']:.1f} MB on {label}")

    if not args.skip_timings:
        figures["timings"] = t = timings(args, client)
        print(f"image size (seed)   {t['image_size_mb']:7.1f} MB   target <= {TARGET_SIZE_MB:.0f} MB "
              f"({t['size_vs_target']:.2f} of target)")
        print(f"cold build          {t['cold_build_s']:7.1f} s    (every step)")
        print(f"cached build        {t['cached_build_s']:7.2f} s")
        print(f"flow-only rebuild   {t['flow_edit_rebuild_s']:7.2f} s    target < {TARGET_REBUILD_S:.0f} s "
              f"({t['rebuild_vs_target']:.2f} of target; with the import check)")
        print(f"import prefect, prefect_dask, distributed in the image: {t['import_prefect_dask_distributed_s']:.2f} s")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
