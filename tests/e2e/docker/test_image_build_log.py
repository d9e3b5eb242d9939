"""What ``flowrig build`` says: one line and exit 2 for a requirement pip cannot satisfy
and for a module the flow imports that the image lacks (no image tagged, nothing left
behind), and no line saying ERROR in a build that succeeds.

Every project here is the seed's with one change, so the builds reuse the seed image's
layers (tests/docker_support.py) up to the change.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.docker_support import SEED_PROJECT, test_base_image, test_image_tag, test_pip_ca
from tests.run_support import FLOWRIG

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]


def flowrig_build(project: Path, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command line, with Docker's progress streamed (not --quiet)."""
    args = [str(project), "--tag", tag, "--base-image", test_base_image(), *extra]
    if test_pip_ca():
        args += ["--pip-ca", test_pip_ca()]
    return subprocess.run([*FLOWRIG, "build", *args], capture_output=True, text=True, timeout=1800)


def images_of(project: Path) -> list[str]:
    """Images, tagged or not, built from this project's context (by the label every
    flowrig build sets): what a failed build must not leave. Other sessions may share
    the engine, so nothing else is counted."""
    from flowrig.builder import defaults, render_context

    digest = render_context(project, base_image=test_base_image()).digest
    done = subprocess.run(["docker", "images", "-a", "-q", "--no-trunc", "--filter",
                           f"label={defaults.IMAGE_CONTEXT_LABEL}={digest}"], capture_output=True, text=True, check=True)
    return done.stdout.split()


def tagged(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


@pytest.fixture
def seed_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "seed"
    shutil.copytree(SEED_PROJECT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The command's own last line on stderr (Docker's progress comes before it)."""
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("flowrig: error: "), done.stderr[-3000:]
    return lines[-1]


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("flowrig-test-no-such-package>=1", ["'flowrig-test-no-such-package'", "spelling", "requirements.txt"]),
        ("tomli-w==0.0.1", ["'tomli-w==0.0.1'", "latest: ", "change the version in requirements.txt"]),
        ("six==1.16.0", ["six==1.16.0", "six==1.17.0 (flowrig's lock, constraints.txt)", "requirements.txt"]),
    ],
    ids=["misspelt", "no-such-version", "conflicts-with-the-lock"],
)
def test_a_requirement_pip_cannot_satisfy_is_exit_2_naming_it(docker_client, seed_image, seed_copy, requirement,
                                                              expected):
    (seed_copy / "requirements.txt").write_text(f"# the project's own\n{requirement}\n")
    tag = test_image_tag(f"bad-req-{uuid.uuid4().hex[:6]}")
    done = flowrig_build(seed_copy, tag)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line_error(done)
    for word in expected:
        assert word in line, line
    assert not tagged(tag) and images_of(seed_copy) == []


def test_a_module_the_image_lacks_fails_the_build_with_exit_2_naming_it(docker_client, seed_image, seed_copy):
    flow = seed_copy / "flow.py"
    flow.write_text(flow.read_text().replace(
        "@task\ndef get_sum(x: list[int]) -> int:\n    return sum(x)",
        "@task\ndef get_sum(x: list[int]) -> int:\n    import polars_flowrig_missing as pl\n    return int(pl.sum(x))",
    ))
    assert "polars_flowrig_missing" in flow.read_text()
    tag = test_image_tag(f"missing-module-{uuid.uuid4().hex[:6]}")
    done = flowrig_build(seed_copy, tag)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line_error(done)
    assert re.search(r"flow\.py line \d+ imports polars_flowrig_missing, which the image cannot import "
                     r"\(ModuleNotFoundError: No module named 'polars_flowrig_missing'\): add the package that "
                     r"provides it to requirements.txt", line), line
    assert not tagged(tag) and images_of(seed_copy) == []


def test_a_successful_build_prints_no_line_that_says_error(docker_client, seed_image, seed_copy):
    """Every step from the project's requirements on runs (they are new to Docker's
    cache; flowrig's dependency layer is the seed's, from the cache): downloading and
    installing a package the wheelhouse lacks, pruning, stripping, bytecode for
    flowrig's modules and for what the flow imports, the project's own layer split
    off, the import check."""
    (seed_copy / "requirements.txt").write_text(f"tomli-w\n# {uuid.uuid4().hex}: a layer of its own\n")
    tag = test_image_tag(f"clean-log-{uuid.uuid4().hex[:6]}")
    try:
        done = flowrig_build(seed_copy, tag)
        assert done.returncode == 0, done.stderr[-3000:]
        log = done.stdout + done.stderr
        said = [line for line in log.splitlines() if re.search(r"\berror\b|\bfail", line, re.IGNORECASE)]
        assert said == []
        # The steps ran, and said so.
        for evidence in ("Successfully installed tomli-w", "stripped ", "compiled everything under /opt/flowrig/app",
                         "modules imported by ", "the project's own layer: ", "imports checked as uid 10001"):
            assert evidence in log, evidence
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
