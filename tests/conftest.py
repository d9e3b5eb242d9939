"""Shared test set-up.

Fixture modules live beside this file and are registered as plugins for every folder
below it: Docker fixtures fail instead of skipping when ``FLOWRIG_REQUIRE_DOCKER=1`` (as
CI sets it), and the AWS fixtures run a real moto server on 127.0.0.1.

Tests come in layers, one folder each, and a test's folder gives it its marker (so
``-m docker`` selects the same tests as ``tests/e2e/docker`` and more, see below):

- ``unit/``: rendering, models, policies, parsers, the CLI in process; no cluster,
  container, server or subprocess (marker ``unit``);
- ``e2e/local/``: real local clusters over TLS, runs of the CLI as a process (``local``);
- ``e2e/docker/``: real containers from the real image (``docker``);
- ``e2e/aws/``: a real moto server (``aws``);
- ``e2e/vm/``: the VM backends against fake cloud SDK clients and containers (``vm``).

A test elsewhere that asks for a Docker or moto fixture gets that marker too.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest_plugins = ["tests.docker_support", "tests.aws_support", "tests.aws_faults", "tests.iam_support", "tests.run_support", "tests.tls_support", "tests.prefect_support", "tests.browser_support", "tests.vm_fakes"]

# Tests never talk to a Prefect server they did not start, nor send analytics.
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

# A shell starts a background command with SIGINT ignored (so does `uv run` started in
# the background), and every process the tests start inherits that: the tests that send
# Ctrl-C would wait out their timeouts. A handler here is reset to the default in every
# child at exec, so each gets Ctrl-C as a user's terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


HERE = Path(__file__).resolve().parent
#: The marker each folder gives its tests.
FOLDER_MARKERS = {
    ("unit",): "unit",
    ("e2e", "local"): "local",
    ("e2e", "docker"): "docker",
    ("e2e", "aws"): "aws",
    ("e2e", "vm"): "vm",
}
#: The order of the layers in a parallel session: the files that wait longest first, the
#: unit layer's many short tests last, where they fill the workers' idle ends.
PARALLEL_ORDER = ("docker", "local", "aws", "vm", "unit")
#: Fixtures that make a test a Docker or an AWS test wherever it lives.
FIXTURE_MARKERS = {
    "docker_client": "docker", "seed_image": "docker",
    "moto_server": "aws", "aws": "aws", "bootstrapped": "aws",
}


def pytest_configure(config: pytest.Config) -> None:
    # testpaths lists the layers: a test file left directly in tests/ would never run.
    unplaced = sorted(p.name for p in HERE.glob("test_*.py"))
    if unplaced:
        raise pytest.UsageError(f"tests/{unplaced[0]} is in no layer: move it to tests/unit/ or tests/e2e/<area>/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            parts = item.path.resolve().relative_to(HERE).parts
        except ValueError:
            continue
        wanted = {mark for prefix, mark in FOLDER_MARKERS.items() if parts[: len(prefix)] == prefix}
        wanted |= {mark for name, mark in FIXTURE_MARKERS.items() if name in getattr(item, "fixturenames", ())}
        for mark in sorted(wanted - {m.name for m in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, mark))
    if hasattr(config, "workerinput"):
        # A pytest-xdist worker: under `--dist loadfile` (the README's command) the
        # controller hands out whole files in this order (--no-loadscope-reorder keeps it).
        # Serially the unit layer stays first, so a broken model fails in seconds.
        items.sort(key=_parallel_rank)


def _parallel_rank(item: pytest.Item) -> int:
    names = {mark.name for mark in item.iter_markers()}
    return next((rank for rank, name in enumerate(PARALLEL_ORDER) if name in names), len(PARALLEL_ORDER))
