"""Image pull benchmark: bytes, layers and cold pull seconds from a real registry, before and after.

    python benchmarks/bench_image_pull.py [--before-rev main] [--pulls 3] [--imports 5]
                                          [--base-image flowrig-base:bookworm] [--pip-ca FILE]
                                          [--json FILE] [--keep] [--build-only] [--reuse]
                                          [--tag-prefix flowrig-bench-pull] [--images seed,stack]

Two projects, each built two ways in this one run: the seed (flowrig alone) and the seed
with numpy, pandas and scipy in its requirements and its flow module's imports ("stack");
"before" is the image build
(Dockerfile and in-build steps) as it was at ``--before-rev``, "after" is today's, the
rest of the context today's for both.

Each image is pushed to a registry on loopback: Debian's ``docker-registry`` (distribution
2.8; ``apt-get install docker-registry``) run by this script on 127.0.0.1 with a config
and storage of its own in a temporary folder, never the system service. Docker pushes
gzip layers to it, as it does to any registry.

**Cold pull, as Fargate pulls.** Fargate pulls with containerd, caches nothing, and
unpacks every layer before the task starts. So each pull runs in a containerd of its
own, started by this script with a fresh root folder (``--root``/``--state`` in a
temporary folder, its own socket, the CRI plugin off), and timed from ``ctr images pull
--plain-http`` to its end: every blob fetched over HTTP and every layer decompressed
into an overlayfs snapshot, with nothing shared with Docker's store or an earlier pull.
(``docker rmi`` cannot make a pull cold: a base layer that other images use stays, and
the engine is shared.) That containerd is then stopped and its folder removed.

Per image and side it reports the layers and bytes the registry serves (the manifest's
layer sizes plus the config), the unpacked size, the cold pull's median seconds (sides
interleaved, the order alternating), the seconds a 100 MB/s link would add to fetch the
bytes (a model: bytes / link), and the import time of a worker's start in the image
(``distributed.cli.dask_worker``, ``prefect.task_engine``, ``prefect_dask`` and
flowrig's worker-side modules, plus numpy, pandas and scipy.linalg in the stack image,
which its first task imports), median of ``--imports`` runs, interleaved. Then the
after/before ratios, the load average before and after, and a last line of JSON
(``--json FILE`` writes the figures in the bench output contract). ``--build-only
--keep`` then ``--reuse`` keep the builds out of a quiet window. ``--images seed`` measures
the seed's image only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowrig.builder import build, detect_client, render_context  # noqa: E402
from flowrig.builder.context import BuildContext, ContextFile  # noqa: E402

#: The image build's own files: "before" takes them from --before-rev. Files that did not
#: exist at that revision are left out of its context (its Dockerfile does not copy them).
BUILD_FILES = (
    "Dockerfile",
    "flowrig/builder/buildsteps.py",
    "flowrig/builder/buildsteps_install.py",
    "flowrig/builder/buildsteps_prune.py",
    "flowrig/project/build_rules.py",
    "flowrig/project/secret_rules.py",
    "flowrig/project/secret_scan.py",
)
STACK = ("numpy", "pandas", "scipy")
LINK_MB_S = 100.0
#: A worker's start: the Dask worker CLI, Prefect's task engine and task runner, and
#: flowrig's worker-side modules (what `flowrig-entrypoint dask-worker` and the first
#: task import).
WORKER_IMPORTS = (
    "distributed.cli.dask_worker",
    "prefect.task_engine",
    "prefect_dask",
    "flowrig.roles.commands",
    "flowrig.internals.task_worker",
)
STACK_IMPORTS = ("numpy", "pandas", "scipy.linalg")
MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    sys.exit(f"{what} did not come up within {seconds:.0f} s")


# --- the registry -------------------------------------------------------------------------


class Registry:
    """Debian's docker-registry on 127.0.0.1, storage in ``root`` (plain HTTP: Docker
    treats 127.0.0.0/8 as an insecure registry, so it pushes there without TLS)."""

    def __init__(self, root: Path):
        binary = shutil.which("docker-registry")
        if binary is None:
            sys.exit("docker-registry is not installed: apt-get install docker-registry")
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = root / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        self.process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=(root / "registry.log").open("wb"))
        wait_for(self.answers, f"the registry on {self.host}")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def manifest(self, repository: str, tag: str) -> dict:
        request = urllib.request.Request(f"http://{self.host}/v2/{repository}/manifests/{tag}",
                                         headers={"Accept": MANIFEST_TYPES})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- a cold pull --------------------------------------------------------------------------


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cold_pull(reference: str, scratch: Path) -> tuple[float, float]:
    """Seconds ``ctr images pull`` takes in a containerd of its own with an empty store,
    and the CPU seconds that containerd and ctr used (fetch, checksums, decompression,
    unpacking; their start and stop too): a figure a loaded machine blurs far less."""
    cpu_before = cpu_of_children()
    root = Path(tempfile.mkdtemp(prefix="ctd-", dir=scratch))
    sock = root / "containerd.sock"
    config = root / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{root / "root"}"\nstate = "{root / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{root / "ttrpc.sock"}"\n'
        '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
    )
    daemon = subprocess.Popen(["containerd", "--config", str(config)], stdout=subprocess.DEVNULL,
                              stderr=(root / "containerd.log").open("wb"))
    try:
        ctr = ["ctr", "--address", str(sock), "--namespace", "bench"]
        wait_for(lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0, "containerd")
        started = time.perf_counter()
        done = subprocess.run([*ctr, "images", "pull", "--plain-http", "--snapshotter", "overlayfs", reference],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"ctr images pull {reference} failed:\n{(done.stdout + done.stderr)[-2000:]}")
    finally:
        daemon.terminate()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        # Snapshots are overlay folders, not mounts (nothing was run), so they go like files.
        shutil.rmtree(root, ignore_errors=True)
    return seconds, cpu_of_children() - cpu_before


# --- the images ---------------------------------------------------------------------------


def at_revision(context: BuildContext, revision: str) -> BuildContext:
    """The context with the image build's own files as they were at ``revision``."""
    files = dict(context.files)
    for name in BUILD_FILES:
        done = subprocess.run(["git", "show", f"{revision}:{name}"], cwd=REPO, capture_output=True)
        if done.returncode == 0:
            files[name] = ContextFile(done.stdout)
        else:
            files.pop(name, None)
    return BuildContext(files, context.build_args)


def projects(scratch: Path) -> dict[str, Path]:
    """The seed, and the seed whose flow module imports the stack, as a task's would."""
    seed = scratch / "seed"
    shutil.copytree(REPO / "examples" / "seed", seed, ignore=shutil.ignore_patterns("__pycache__"))
    stack = scratch / "stack"
    shutil.copytree(seed, stack)
    (stack / "requirements.txt").write_text("\n".join(STACK) + "\n")
    flow = stack / "flow.py"
    text = flow.read_text()
    marker = "from __future__ import annotations\n"
    imports = "".join(f"import {module}  # noqa: F401\n" for module in STACK_IMPORTS)
    flow.write_text(text.replace(marker, marker + imports, 1) if marker in text else imports + text)
    return {"seed": seed, "stack": stack}


def build_images(args, scratch: Path) -> dict[tuple[str, str], str]:
    """(project, side) -> local tag, built with flowrig's builder (``--reuse``: kept from
    an earlier ``--keep`` run)."""
    tags = {}
    for name, project in projects(scratch).items():
        if name not in args.images:
            continue
        context = render_context(project, base_image=args.base_image)
        for side, side_context in (("before", at_revision(context, args.before_rev)), ("after", context)):
            tag = f"{args.tag_prefix}:{name}-{side}"
            tags[name, side] = tag
            if args.reuse and docker("image", "inspect", tag, check=False).returncode == 0:
                continue
            result = build(side_context, tag, args.pip_ca, quiet=True)
            print(f"built {tag} in {result.seconds:.0f} s", file=sys.stderr)
    return tags


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def push(tag: str, registry: Registry) -> str:
    name, _, side = tag.partition(":")
    reference = f"{registry.host}/bench/{side}:latest"
    docker("tag", tag, reference)
    try:
        docker("push", reference)
    finally:
        docker("rmi", reference, check=False)  # only the registry's tag: the image stays
    return reference


def import_seconds(tag: str, modules: tuple[str, ...]) -> tuple[float, float]:
    """Seconds and CPU seconds the imports take in a container of the image."""
    code = ("import time; t, c = time.perf_counter(), time.process_time()\n"
            + "".join(f"import {m}\n" for m in modules)
            + "print(time.perf_counter() - t, time.process_time() - c)")
    done = docker("run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", code)
    wall, cpu = done.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def interleaved(pairs: int, sides: tuple[str, ...], measure, label: str) -> dict[str, list[tuple[float, float]]]:
    """``measure(side)`` -> (seconds, CPU seconds), ``pairs`` times per side, the order
    alternating every round."""
    runs: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for round_ in range(pairs):
        for side in sides if round_ % 2 == 0 else tuple(reversed(sides)):
            runs[side].append(measure(side))
            wall, cpu = runs[side][-1]
            print(f"{label} ({side}): {wall:.2f} s, {cpu:.2f} s CPU, load {load()}", file=sys.stderr)
    return runs


# --- the run ------------------------------------------------------------------------------


def measure(args, scratch: Path, tags: dict[tuple[str, str], str]) -> dict:
    registry = Registry(scratch / "registry")
    figures: dict = {}
    try:
        references = {key: push(tag, registry) for key, tag in tags.items()}
        print(f"pushed {len(references)} images to {registry.host}", file=sys.stderr)
        for name in args.images:
            for side in ("before", "after"):
                manifest = registry.manifest(f"bench/{name}-{side}", "latest")
                layers = manifest["layers"]
                figures[name, side] = {
                    "layers": len(layers),
                    "pulled_mb": (sum(layer["size"] for layer in layers) + manifest["config"]["size"]) / 1e6,
                    "largest_layer_mb": max(layer["size"] for layer in layers) / 1e6,
                    "unpacked_mb": int(docker("image", "inspect", "--format", "{{.Size}}",
                                              tags[name, side]).stdout) / 1e6,
                }
        print(f"load average before the pulls: {load()}", file=sys.stderr)
        for name in args.images:
            pulls = interleaved(args.pulls, ("before", "after"),
                                lambda side, name=name: cold_pull(references[name, side], scratch),
                                f"{name} cold pull")
            modules = WORKER_IMPORTS + (STACK_IMPORTS if name == "stack" else ())
            imports = interleaved(args.imports, ("before", "after"),
                                  lambda side, name=name, modules=modules: import_seconds(tags[name, side], modules),
                                  f"{name} worker imports")
            for side in ("before", "after"):
                walls, cpus = zip(*pulls[side])
                figures[name, side].update(pull_runs=list(walls), pull_s=statistics.median(walls),
                                           pull_cpu_runs=list(cpus), pull_cpu_s=statistics.median(cpus))
                walls, cpus = zip(*imports[side])
                figures[name, side].update(import_runs=list(walls), import_s=statistics.median(walls),
                                           import_cpu_runs=list(cpus), import_cpu_s=statistics.median(cpus))
    finally:
        registry.stop()
    return figures


def report(figures: dict, load_before: str, load_after: str, images: tuple[str, ...]) -> list[dict]:
    print(f"{'image':7}{'side':8}{'layers':>7}{'pulled MB':>10}{'largest':>9}{'unpacked':>9}{'pull s':>8}"
          f"{'pull CPU s':>11}{'+100MB/s':>9}{'import s':>9}{'import CPU s':>13}")
    for (name, side), f in figures.items():
        print(f"{name:7}{side:8}{f['layers']:>7}{f['pulled_mb']:>10.1f}{f['largest_layer_mb']:>9.1f}"
              f"{f['unpacked_mb']:>9.1f}{f['pull_s']:>8.2f}{f['pull_cpu_s']:>11.2f}{f['pulled_mb'] / LINK_MB_S:>9.2f}"
              f"{f['import_s']:>9.2f}{f['import_cpu_s']:>13.2f}")
    out = []
    keys = ("pulled_mb", "pull_s", "pull_cpu_s", "import_s", "import_cpu_s")
    for name in images:
        before, after = figures[name, "before"], figures[name, "after"]
        ratios = {k: after[k] / before[k] for k in keys}
        print(f"[{name}] after/before: bytes {ratios['pulled_mb']:.2f}, layers {after['layers']}/{before['layers']}, "
              f"cold pull {ratios['pull_s']:.2f} (CPU {ratios['pull_cpu_s']:.2f}), "
              f"worker imports {ratios['import_s']:.2f} (CPU {ratios['import_cpu_s']:.2f}; target <= 1.0)")
        units = {"pulled_mb": "MB"}
        for side, f in (("before", before), ("after", after)):
            out += [{"figure": f"{name} image {key} ({side})", "value": round(f[key], 3), "unit": units.get(key, "s"),
                     "floor": None, "ratio": None, "target": None,
                     "runs": f.get(key.removesuffix("_s") + "_runs", []),
                     "note": f"{f['layers']} layers; containerd, empty store, loopback registry"} for key in keys]
        # In the figures' contract: the value is after's, the floor before's, the ratio after/before.
        out += [{"figure": f"{name} image {key} after/before", "value": round(after[key], 3),
                 "unit": units.get(key, "s"), "floor": round(before[key], 3), "ratio": round(ratios[key], 3),
                 "target": "<= 1.0" if key.startswith("import") else None, "runs": [],
                 "note": f"load {load_before} -> {load_after}"} for key in keys]
    print(f"load average: {load_before} before, {load_after} after (2 cores)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-rev", default="main", help="git revision whose image build is 'before'")
    parser.add_argument("--base-image", default=os.environ.get("FLOWRIG_TEST_BASE_IMAGE", "flowrig-base:bookworm"))
    default_ca = "/etc/ssl/certs/ca-certificates.crt"
    parser.add_argument("--pip-ca", default=os.environ.get("FLOWRIG_PIP_CA")
                        or (default_ca if Path(default_ca).is_file() else None))
    parser.add_argument("--pulls", type=int, default=3, help="cold pulls per image and side")
    parser.add_argument("--imports", type=int, default=5, help="import timings per image and side")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the images afterwards")
    parser.add_argument("--reuse", action="store_true", help="take the images an earlier --keep run left")
    parser.add_argument("--build-only", action="store_true", help="build (and keep) the images, measure nothing")
    parser.add_argument("--tag-prefix", default="flowrig-bench-pull", help="repository of the images built")
    parser.add_argument("--images", default="seed,stack", help="which images to measure, comma-separated")
    args = parser.parse_args()
    args.images = tuple(dict.fromkeys(args.images.split(",")))
    if unknown := sorted(set(args.images) - {"seed", "stack"}):
        parser.error(f"unknown image(s) {', '.join(unknown)}: choose from seed, stack")
    # A stop (timeout, kill) still stops the registry and containerd and removes the folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("containerd", "ctr"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH: apt-get install containerd")
    if os.geteuid() != 0:
        sys.exit("a containerd of its own needs root (overlayfs snapshots): run as root")
    print(f"docker client {detect_client().path}, base {args.base_image}, before = {args.before_rev}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="flowrig-bench-pull-", dir="/var/tmp") as scratch:
        tags = build_images(args, Path(scratch))
        if args.build_only:
            return
        try:
            load_before = load()
            figures = measure(args, Path(scratch), tags)
            load_after = load()
        finally:
            if not (args.keep or args.build_only):
                for tag in tags.values():
                    docker("rmi", tag, check=False)
    out = report(figures, load_before, load_after, args.images)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({f"{n}/{s}": {k: v for k, v in f.items()} for (n, s), f in figures.items()}, sort_keys=True))


if __name__ == "__main__":
    main()
