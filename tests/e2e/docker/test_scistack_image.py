"""A project on the scientific stack (examples/scistack: numpy, scipy, pandas, pyarrow,
scikit-learn, and a dask.dataframe groupby a task computes on the run's own cluster with
``get_dask_client()``), built by ``flowrig build`` and by the CI recipes of examples/ci (a plain
``docker build`` of the repository, with BuildKit and with the legacy builder) from a
folder outside examples/, then run.

The images are built once per session and Docker's layer cache does the rest: the
plain BuildKit build runs the same Dockerfile steps on the same inputs as ``flowrig
build``, so it reuses every layer up to the project's manifest.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from flowrig import layout
from flowrig.containers import engine
from tests.docker_support import (
    copy_repository,
    docker_run_env,
    image_lock,
    one_legacy_build_file_at_a_time,
    test_base_image,
    test_image_tag,
    test_pip_ca,
)
from tests.run_support import FLOWRIG_SCRIPT

# A cold build of the stack (every layer new to Docker's cache) takes minutes, and the
# session fixture's time counts towards its first test's.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module", autouse=True)
def _legacy_builds_alone():
    with one_legacy_build_file_at_a_time():
        yield


REPO = Path(__file__).resolve().parents[3]
SCISTACK = REPO / "examples" / "scistack"
#: Where the plain builds find the project: a folder of the repository outside examples/.
PLAIN_PROJECT = "flows/etl"
KS = [1, 2, 3, 4, 5]
N = 150


def expected(ks: list[int], n: int) -> dict:
    """The flow's result in closed form (see examples/scistack/flow.py)."""
    by_parity: dict[str, dict[str, float]] = {}
    for k in ks:
        sums = by_parity.setdefault(str(k % 2), dict.fromkeys(("logdet", "smax", "smin", "trace_sq"), 0.0))
        sums["logdet"] += (n - 1) * math.log(k) + math.log(k + n)
        sums["smax"] += k + n
        sums["smin"] += k
        sums["trace_sq"] += (k + n) ** 2 + (n - 1) * k**2
    return {"by_parity": by_parity, "k_total": sum(ks), "smax_fit": {"slope": 1.0, "intercept": float(n)}}


def assert_right_result(result: dict) -> None:
    want = expected(KS, N)
    assert result["k_total"] == want["k_total"]
    assert result["smax_fit"] == pytest.approx(want["smax_fit"], abs=1e-5)
    assert sorted(result["by_parity"]) == sorted(want["by_parity"])
    for parity, sums in want["by_parity"].items():
        assert result["by_parity"][parity] == pytest.approx(sums, rel=1e-9, abs=1e-5), parity
    # The dask.dataframe groupby a task ran on the run's cluster through get_dask_client().
    assert result["trace_sq_on_the_cluster"] == pytest.approx(
        {parity: sums["trace_sq"] for parity, sums in want["by_parity"].items()}, rel=1e-9)


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_on_docker(project: Path, image: str) -> dict:
    run_id = uuid.uuid4().hex[:10]
    done = subprocess.run(
        [FLOWRIG_SCRIPT, "run", str(project), "--backend", "docker", "--image", image, "--output", "json",
         "--param", f"ks={json.dumps(KS)}", "--param", f"n={N}"],
        env=docker_run_env(run_id), capture_output=True, text=True, timeout=600,
    )
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        return last_json(done.stdout)
    finally:
        import docker

        client = docker.from_env()
        engine.remove_run(client, run_id)
        client.close()


def remove_image(tag: str) -> None:
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


# --- flowrig build ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def scistack_image(docker_client) -> str:
    """examples/scistack built by flowrig's builder with its defaults (the tests' base
    image aside), at most once per session."""
    from flowrig.builder import build, find_image, render_context

    tag = test_image_tag("scistack")
    context = render_context(SCISTACK, base_image=test_base_image())
    with image_lock(tag):
        if not find_image(context, tag):
            build(context, tag, test_pip_ca(), quiet=True)
    return tag


def test_flowrig_build_gives_an_image_that_runs_the_scientific_stack_on_docker(scistack_image):
    outcome = run_on_docker(SCISTACK, scistack_image)
    assert outcome["state"] == "Completed" and outcome["backend"] == "docker"
    assert_right_result(outcome["result"])


def test_the_images_run_role_runs_the_stack_on_the_local_backend(scistack_image):
    """The project's own backend (local) inside its image: the dask.dataframe groupby of
    get_dask_client() runs on a LocalCluster over the run's TLS, as on the docker backend."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", scistack_image, "run", "--output", "json", "--timeout", "300",
         "--param", f"ks={json.dumps(KS)}", "--param", f"n={N}"],
        capture_output=True, text=True, timeout=360,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = last_json(done.stdout)
    assert outcome["state"] == "Completed" and outcome["backend"] == "local", outcome
    assert_right_result(outcome["result"])


LOAD_EVERY_LIBRARY = r"""
import ctypes, json, pathlib, sys, sysconfig
site = pathlib.Path(sysconfig.get_paths()["purelib"])
failed, loaded = [], 0
for path in sorted(site.rglob("*.so*")):
    if path.is_symlink() or not path.is_file() or path.read_bytes()[:4] != b"\x7fELF":
        continue
    try:
        ctypes.CDLL(str(path))
        loaded += 1
    except OSError as exc:
        failed.append(str(exc))
import numpy, scipy.linalg, pandas, pyarrow, sklearn.linear_model
a = numpy.random.default_rng(0).standard_normal((200, 200))
p, l, u = scipy.linalg.lu(a)
print(json.dumps({"loaded": loaded, "failed": failed, "lu": bool(numpy.allclose(p @ l @ u, a)),
                  "blas": numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]}))
"""


def test_every_shared_object_in_the_image_loads_as_its_user(scistack_image):
    """Stripping kept every library loadable: the vendored OpenBLAS of numpy and scipy
    (what strip used to break), libarrow, libgomp of scikit-learn, every extension."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", scistack_image,
         "-c", LOAD_EVERY_LIBRARY],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] == []
    assert report["loaded"] > 300 and report["lu"] and "openblas" in report["blas"]


def layers(image: str) -> list[str]:
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


STACK_BYTECODE = r"""
import importlib.util, json, pathlib, sys
sys.dont_write_bytecode = True
import numpy, pandas, scipy.linalg, sklearn.linear_model
venv = pathlib.Path(sys.prefix)
loaded = [m.__file__ for m in list(sys.modules.values())
          if (getattr(m, "__file__", None) or "").endswith(".py") and m.__file__.startswith(str(venv))]
missing = [f for f in loaded if not pathlib.Path(importlib.util.cache_from_source(f)).is_file()]
print(json.dumps({"loaded": len(loaded), "missing": missing}))
"""


def test_the_stack_image_shares_flowrigs_dependency_layer_and_carries_the_bytecode_its_flow_needs(
    scistack_image, seed_image
):
    """The venv's first layer holds flowrig's dependencies alone, so the seed image and the
    stack image (both on the local backend) share it, byte for byte; the stack's own
    packages come in the layer after it, with bytecode for every module the flow's
    imports load (a worker's first task imports them several times faster so)."""
    seed, stack = layers(seed_image), layers(scistack_image)
    # The base, the runtime user, then flowrig's dependencies.
    assert stack[:3] == seed[:3]
    assert len(stack) == len(seed)
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", scistack_image,
                           "-c", STACK_BYTECODE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] > 500 and report["missing"] == []


# --- the plain docker build of a repository (examples/ci) ------------------------------------------


def repository_with_a_project(destination: Path) -> Path:
    """A copy of the repository with the scientific project under flows/etl, and files
    that must never reach a build context beside it."""
    copy_repository(destination)
    (destination / "pip-ca.crt").unlink(missing_ok=True)  # the recipes copy $PIP_CA there themselves
    project = destination / PLAIN_PROJECT
    shutil.copytree(SCISTACK, project, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in {
        ".git/config": "[core]\n", ".venv/pyvenv.cfg": "home = /usr\n", f"{PLAIN_PROJECT}/.env": "TOKEN=hunter2\n",
        f"{PLAIN_PROJECT}/tests/test_flow.py": "def test(): pass\n", "tls/ca.key": "not a key\n",
    }.items():
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        (destination / name).write_text(text)
    return destination


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    return repository_with_a_project(tmp_path_factory.mktemp("repository"))


def github_build_part() -> tuple[dict[str, str], str]:
    """The job's environment and its build step's script."""
    workflow = yaml.safe_load((REPO / "examples" / "ci" / "github-actions.yml").read_text())
    (job,) = workflow["jobs"].values()
    (step,) = [s for s in job["steps"] if s.get("name") == "Build the image"]
    return {k: str(v) for k, v in job["env"].items()}, step["run"]


def gitlab_build_part() -> tuple[dict[str, str], str]:
    """The job's variables and the script lines before it logs in to the registry."""
    pipeline = yaml.safe_load((REPO / "examples" / "ci" / "gitlab-ci.yml").read_text())
    job = pipeline["image-build"]
    lines = []
    for line in job["script"]:
        if "docker login" in line:
            break
        lines.append(line)
    variables = {**pipeline.get("variables", {}), **job["variables"]}
    return {k: str(v) for k, v in variables.items()}, "\n".join(lines)


def plain_tag(kind: str) -> str:
    """A tag of this session's own (sessions sharing an engine keep apart)."""
    return f"{test_image_tag().rsplit(':', 1)[0]}-plain:{kind}-{uuid.uuid4().hex[:8]}"


def legacy_client() -> str:
    """A docker client for the legacy builder: the one without buildx when there is one."""
    for candidate in ("/usr/local/bin/docker", shutil.which("docker") or "docker"):
        if os.access(candidate, os.X_OK):
            return candidate
    return "docker"


def run_build_part(repository: Path, variables: dict[str, str], script: str, tag: str, *,
                   buildkit: bool, client: str) -> subprocess.CompletedProcess[str]:
    """Run a recipe's build part as its CI would, with this machine's differences: the
    base image (no registry here), the CA bundle pip trusts, a local tag."""
    shim = repository.parent / f"bin-{'buildkit' if buildkit else 'legacy'}"
    shim.mkdir(exist_ok=True)
    (shim / "docker").unlink(missing_ok=True)
    (shim / "docker").symlink_to(client)
    env = {
        **os.environ, **variables,
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "DOCKER_BUILDKIT": "1" if buildkit else "0",
        "BASE_IMAGE": test_base_image(), "IMAGE": tag.rpartition(":")[0],
        "GITHUB_SHA": tag.rpartition(":")[2], "CI_COMMIT_SHA": tag.rpartition(":")[2],
    }
    env.pop("PIP_CA", None)
    if test_pip_ca():
        env["PIP_CA"] = test_pip_ca()
    (repository / "pip-ca.crt").unlink(missing_ok=True)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=repository, env=env,
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="session")
def plain_buildkit_image(docker_client, repository, scistack_image) -> str:
    """The GitHub Actions recipe's build, with BuildKit (after flowrig build's, whose layers it reuses)."""
    from flowrig.builder.build import detect_client

    client = detect_client()
    if not client.buildkit:
        pytest.fail(f"no docker client here can use BuildKit ({client.path})")
    tag = plain_tag("buildkit")
    variables, script = github_build_part()
    done = run_build_part(repository, variables, script, tag, buildkit=True, client=client.path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    yield tag
    remove_image(tag)


@pytest.fixture(scope="session")
def plain_legacy_image(docker_client, repository) -> str:
    """The GitLab CI recipe's build, with the legacy builder (a cache of its own)."""
    tag = plain_tag("legacy")
    variables, script = gitlab_build_part()
    done = run_build_part(repository, variables, script, tag, buildkit=False, client=legacy_client())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    # The legacy builder's own words: proof that BuildKit did not build it.
    assert "Step 1/" in done.stdout and " ---> " in done.stdout, done.stdout[-2000:]
    yield tag
    remove_image(tag)


def project_files_in(image: str) -> list[str]:
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "find", image,
                           str(layout.IMAGE_PROJECT_DIR), "-type", "f"], capture_output=True, text=True, check=True)
    return sorted(Path(line).relative_to(layout.IMAGE_PROJECT_DIR).as_posix() for line in done.stdout.split())


def test_a_plain_buildkit_build_of_a_folder_outside_examples_runs_on_docker(plain_buildkit_image, repository):
    outcome = run_on_docker(repository / PLAIN_PROJECT, plain_buildkit_image)
    assert_right_result(outcome["result"])
    assert project_files_in(plain_buildkit_image) == ["flow.py", "flowrig.toml", "requirements.txt"]


def test_a_plain_legacy_build_of_a_folder_outside_examples_runs_its_flow(plain_legacy_image):
    """The image's own runner (the default command), with its cluster inside the container."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", plain_legacy_image, "run", "--output", "json",
         "--param", f"ks={json.dumps(KS)}", "--param", f"n={N}"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_right_result(last_json(done.stdout)["result"])
    assert project_files_in(plain_legacy_image) == ["flow.py", "flowrig.toml", "requirements.txt"]


def test_the_repository_context_holds_every_project_folder_and_nothing_that_must_stay_out(
    docker_client, repository
):
    """.dockerignore as Docker itself reads it, not as flowrig's matcher does."""
    tag = plain_tag("context")
    dockerfile = f"FROM {test_base_image()}\nCOPY . /context/\n"
    done = subprocess.run(["docker", "build", "--quiet", "--tag", tag, "-f", "-", str(repository)],
                          input=dockerfile, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert done.returncode == 0, done.stderr
    try:
        listed = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "find", "/context", "-type", "f"],
                                capture_output=True, text=True, check=True).stdout.split()
    finally:
        remove_image(tag)
    files = {Path(p).relative_to("/context").as_posix() for p in listed}
    for kept in (f"{PLAIN_PROJECT}/flow.py", f"{PLAIN_PROJECT}/requirements.txt", "examples/seed/flow.py",
                 "Dockerfile", "pyproject.toml", "constraints.txt", "flowrig/builder/buildsteps.py",
                 "flowrig/builder/buildsteps_install.py", "flowrig/builder/buildsteps_prune.py",
                 "flowrig/builder/buildsteps_layers.py",
                 "flowrig/project/build_rules.py", "flowrig/project/secret_rules.py", "flowrig/project/secret_scan.py"):
        assert kept in files, kept
    for dropped in (".git/config", ".venv/pyvenv.cfg", f"{PLAIN_PROJECT}/.env", f"{PLAIN_PROJECT}/tests/test_flow.py",
                    "tls/ca.key", "tests/e2e/docker/test_scistack_image.py", "benchmarks/bench_image.py", "uv.lock", ".ci/run"):
        assert dropped not in files, dropped
