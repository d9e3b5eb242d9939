"""What ``bench_report.py`` runs: each acceptance benchmark's command line per profile, and
the figures each must write (its acceptance lines), so that one that is missing shows as
failed instead of vanishing from the table."""

from __future__ import annotations

from dataclasses import dataclass

from scale_patterns import PATTERNS

#: The image build before it was split into layers and pruned: the "before" of the pull figures.
PULL_BEFORE = "6442050"
PROFILES = ("quick", "full")


@dataclass(frozen=True)
class Step:
    """One benchmark run as a subprocess with ``--json FILE``."""

    name: str
    script: str
    args: tuple[str, ...]
    #: The figures this step must write: its acceptance lines, in the table's order.
    expected: tuple[str, ...]
    timeout: float
    #: Runs containers: their processes and Docker's daemons count as the step's own load.
    docker: bool = False
    #: Must exist before the step runs (built, untimed, by the report).
    image: str | None = None
    what: str = ""


def steps(profile: str, seed_image: str, pull_before: str = PULL_BEFORE) -> list[Step]:
    """Every step of ``profile`` (``quick``: fewer pairs and sizes; ``full``: the acceptance sizes)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose from {', '.join(PROFILES)}")
    full = profile == "full"
    # Timeouts: about three times what each took on a loaded 2-core machine.
    scale = 3 if full else 1
    images = ("seed", "stack") if full else ("seed",)
    items = ("10", "100") if full else ("10",)
    fargate = ("time to full size", "AWS calls to start", "AWS calls to tear down", "runner RSS at full size",
               "scheduler RSS at full size")
    return [
        Step("local", "bench_local.py", ("--pairs", "7" if full else "5"), ("seed start a/b", "flowrig --help"),
             900 * scale, what="seed flow through `flowrig run` against the same work in plain Dask over TLS"),
        Step("scale", "bench_scale.py",
             ("--patterns", "--sizes", "1000,5000", "--repeat", "3" if full else "1"),
             tuple(f"{p} {what}" for p in PATTERNS
                   for what in ("n=1000 whole run", "n=5000 whole run", "own slope 1000->5000")),
             2400 * scale, what="each common many-task pattern against its plain-Dask twin"),
        Step("docker", "bench_docker.py",
             ("--tasks", "1000", "--build", "--image", "flowrig-bench-docker:report", "--repeat", "5" if full else "1"),
             ("docker n=1000", "docker cluster start of 3 workers against its floor"), 1800 * scale, docker=True,
             what="docker backend against the local backend, interleaved"),
        Step("pull", "bench_image_pull.py",
             ("--images", ",".join(images), "--pulls", "3" if full else "1", "--imports", "5" if full else "3",
              "--before-rev", pull_before),
             tuple(f"{name} image {key} after/before" for name in images
                   for key in ("pulled_mb", "pull_s", "import_s")),
             1800 * scale, docker=True, what=f"cold pulls from a loopback registry; before = {pull_before}"),
        Step("fargate", "bench_fargate_scale.py", ("--workers", "500"),
             tuple(f"fargate 500 workers: {what} (after, standard)" for what in fargate), 1500 * scale,
             what="500-worker fargate start and teardown against moto at AWS's rate limits"),
        Step("cost", "bench_cost.py", ("--image", seed_image, "--items", ",".join(items)),
             tuple(f"$ per 1000 tasks, seed flow of {n} items" for n in items), 900 * scale, docker=True,
             image=seed_image, what="the seed on docker, its roles' lifetimes priced as Fargate tasks"),
    ]


def select(all_steps: list[Step], only: str | None) -> list[Step]:
    """The steps ``--only`` names (comma-separated), in the report's order."""
    if not only:
        return all_steps
    names = [name.strip() for name in only.split(",") if name.strip()]
    known = {step.name for step in all_steps}
    if unknown := [name for name in names if name not in known]:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(sorted(known))}")
    return [step for step in all_steps if step.name in names]
