"""The builder without Docker, in processes of its own: the in-build steps run as the build
runs them (buildsteps.py under a Python of its own), ``bake-tls`` through the entrypoint,
and ``flowrig build --context-only`` where a case also runs a step. The rest is in
tests/unit/test_builder.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from flowrig.builder import buildsteps
from flowrig.builder.context import (
    render_context,
)
from flowrig.project import defaults as project_defaults
from tests.unit.test_builder import SEED, bake, certs_dir

REPO = Path(__file__).resolve().parents[3]


# --- helpers ----------------------------------------------------------------------------


# --- buildsteps.py (runs inside the build with the base image's python3) -------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the seed project that a test may change."""
    copy = tmp_path / "seed"
    shutil.copytree(SEED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def run_step(*args: str) -> subprocess.CompletedProcess[str]:
    script = REPO / "flowrig" / "builder" / "buildsteps.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)


def test_requirements_step_collects_flowrig_and_project_requirements(tmp_path: Path, project: Path):
    (project / "reqs").mkdir()
    (project / "reqs" / "base.txt").write_text("toolz>=0.12\n")
    (project / "reqs" / "pins.txt").write_text("toolz<2\n")
    (project / "requirements.txt").write_text("# extras\n-r reqs/base.txt\n-c reqs/pins.txt\nsix\n")
    done = run_step("requirements", "--pyproject", str(REPO / "pyproject.toml"),
                    "--project", str(project), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    flowrig_reqs = (tmp_path / "out" / "flowrig.txt").read_text().splitlines()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert flowrig_reqs[: len(pyproject["project"]["dependencies"])] == pyproject["project"]["dependencies"]
    assert any(line.startswith("dumb-init") for line in flowrig_reqs)
    build = (tmp_path / "out" / "build.txt").read_text().split()
    assert build == pyproject["build-system"]["requires"]
    lines = (tmp_path / "out" / "project.txt").read_text().splitlines()
    # The first line names the file, for the one line that reports a requirement pip cannot satisfy.
    assert lines[:3] == [f"{buildsteps.SOURCE_MARK}requirements.txt", "# extras", "toolz>=0.12"]
    assert lines[-1] == "six"
    constraint = Path(lines[3].split()[1])
    assert lines[3].startswith("-c ") and constraint.parent == tmp_path / "out"
    assert constraint.read_text() == "toolz<2\n"


def test_requirements_step_without_requirements_writes_an_empty_file(tmp_path: Path, project: Path):
    done = run_step("requirements", "--pyproject", str(REPO / "pyproject.toml"),
                    "--project", str(project), "--out", str(tmp_path / "out"))
    assert done.returncode == 0
    assert (tmp_path / "out" / "project.txt").read_text() == ""


def test_requirements_step_missing_file_is_one_line_and_exit_2(tmp_path: Path, project: Path):
    toml = project / "flowrig.toml"
    toml.write_text('requirements = "deps.txt"\n' + toml.read_text())
    done = run_step("requirements", "--pyproject", str(REPO / "pyproject.toml"),
                    "--project", str(project), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(buildsteps.ERROR_PREFIX)
    assert "deps.txt" in done.stderr


def test_compile_step_writes_bytecode_only_for_imported_modules(tmp_path: Path):
    root = tmp_path / "lib"
    (root / "used").mkdir(parents=True)
    (root / "used" / "__init__.py").write_text("from used import helper\n")
    (root / "used" / "helper.py").write_text("X = 1\n")
    (root / "unused.py").write_text("Y = 2\n")
    env = {**os.environ, "PYTHONPATH": str(root)}
    script = REPO / "flowrig" / "builder" / "buildsteps.py"
    done = subprocess.run(
        [sys.executable, str(script), "compile", "--python", sys.executable, "--root", str(root), "used"],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 0, done.stderr
    compiled = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.pyc"))
    assert [p.split("/")[-1].split(".")[0] for p in compiled] == ["__init__", "helper"]
    assert not any("unused" in p for p in compiled)


def test_manifest_step_merges_the_context_manifest(tmp_path: Path, project: Path):
    context = render_context(project)
    (tmp_path / "manifest.json").write_bytes(context.files["manifest.json"].data)
    done = run_step("manifest", "--python", sys.executable, "--project", str(project),
                    "--project-name", "project", "--context-manifest", str(tmp_path / "manifest.json"),
                    "--base-image", "b:1", "--out", str(tmp_path / "out.json"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out.json").read_text())
    assert manifest["project"]["name"] == "seed"  # the context's name beats the directory's
    assert manifest["base_image"] == "b:1"
    assert manifest["versions"]["prefect"] == metadata.version("prefect")
    assert manifest["builder"] == context.manifest["builder"]


# --- the lock: every install of an image build is pinned by it --------------------------------


def test_requirements_step_copies_the_constraints(tmp_path: Path, project: Path):
    pins = tmp_path / "pins.txt"
    pins.write_text("prefect==3.9.1\n")
    done = run_step("requirements", "--pyproject", str(REPO / "pyproject.toml"), "--constraints", str(pins),
                    "--project", str(project), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "constraints.txt").read_text() == "prefect==3.9.1\n"
    # Without a constraints file (a context of an older flowrig), installs stay unpinned.
    done = run_step("requirements", "--pyproject", str(REPO / "pyproject.toml"),
                    "--project", str(project), "--out", str(tmp_path / "out2"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out2" / "constraints.txt").read_text() == ""


# --- no secrets in a context: credential files, private keys, credential options ---------------


def flowrig_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line in a process of its own: real exit codes, real stderr."""
    code = "from flowrig.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ('aws_access_key_id = "AKIAIOSFODNN7EXAMPLE"', "cluster.options.aws_access_key_id"),
        ('aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"', "cluster.options.aws_secret_access_key"),
        ('aws_session_token = "IQoJb3JpZ2luX2VjE"', "cluster.options.aws_session_token"),
        ('environment = { LOG_LEVEL = "info", DB_PASSWORD = "hunter2" }', "cluster.options.environment.DB_PASSWORD"),
        ('environment = { GITHUB_TOKEN = "ghp_x" }', "cluster.options.environment.GITHUB_TOKEN"),
        ('tags = { owner = "AKIAIOSFODNN7EXAMPLE" }', "cluster.options.tags.owner"),
    ],
)
def test_credentials_in_cluster_options_are_refused_with_the_way_instead(tmp_path: Path, project: Path, options, key):
    toml = project / project_defaults.PROJECT_FILE
    toml.write_text(toml.read_text() + f"\n[cluster.options]\n{options}\n")
    done = flowrig_cli("build", str(project), "--tag", "seed:1", "--context-only", str(tmp_path / "ctx"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0], done.stderr
    # The seed runs on the local backend: its processes inherit the runner's environment.
    assert "environment of flowrig run" in lines[0] and "allow_environment" in lines[0]
    assert ("task_role_arn" in lines[0]) is key.startswith("cluster.options.aws_")
    assert "hunter2" not in done.stderr and "EXAMPLE" not in done.stderr
    # A plain `docker build` runs the same check in its requirements step.
    step = run_step("requirements", "--pyproject", str(REPO / "pyproject.toml"), "--project", str(project),
                    "--out", str(tmp_path / "req"))
    assert step.returncode == 2 and f"'{key}'" in step.stderr, step.stderr


def test_manifest_and_build_log_hold_option_keys_but_no_values(tmp_path: Path, project: Path):
    toml = project / project_defaults.PROJECT_FILE
    toml.write_text(toml.read_text().replace('backend = "local"', 'backend = "docker"')
                    + '\n[cluster.options]\nworker_memory = "3g-marker"\nenvironment = { MODE = "value-marker" }\n'
                    + 'secrets = [{ name = "DB_PASSWORD", valueFrom = "arn:aws:secretsmanager:x:1:secret:db" }]\n')
    context = render_context(project)
    options = context.manifest["project"]["config"]["cluster"]["options"]
    assert options == ["environment", "secrets", "worker_memory"]
    assert b"marker" not in context.files["manifest.json"].data
    (tmp_path / "manifest.json").write_bytes(context.files["manifest.json"].data)
    done = run_step("manifest", "--python", sys.executable, "--project", str(project),
                    "--context-manifest", str(tmp_path / "manifest.json"), "--base-image", "b:1",
                    "--out", str(tmp_path / "out.json"))
    assert done.returncode == 0, done.stderr
    assert "marker" not in done.stdout + done.stderr + (tmp_path / "out.json").read_text()
    assert json.loads((tmp_path / "out.json").read_text())["project"]["config"]["cluster"]["options"] == options


# --- TLS modes: baked (a fresh CA per build) or per-run (no key in the image) --------------------


def test_bake_tls_makes_a_new_ca_for_every_nonce_and_refuses_without_one(tmp_path: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    source = tmp_path / "src"
    source.mkdir()
    fingerprints = set()
    for number in range(2):
        out = tmp_path / f"out{number}"
        done = bake(tmp_path, str(source), "--out", str(out), "--nonce", f"n{number}")
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in (out / "certs").iterdir()) == ["ca.crt", "tls.crt"]
        assert [p.name for p in (out / "key").iterdir()] == ["tls.key"]
        assert stat.S_IMODE((out / "key" / "tls.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((out / "certs" / "ca.crt").stat().st_mode) == 0o644
        assert not (out / "staging").exists()
        ca = x509.load_pem_x509_certificate((out / "certs" / "ca.crt").read_bytes())
        fingerprints.add(ca.fingerprint(hashes.SHA256()))
    assert len(fingerprints) == 2
    done = bake(tmp_path, str(source), "--out", str(tmp_path / "none"))
    assert done.returncode == 2 and "TLS_NONCE" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_bake_tls_per_run_writes_nothing_and_refuses_given_files(tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    done = bake(tmp_path, str(source), "--out", str(tmp_path / "out"), "--mode", "per-run")
    assert done.returncode == 0, done.stderr
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
    certs_dir(source)
    done = bake(tmp_path, str(source), "--out", str(tmp_path / "out2"), "--mode", "per-run")
    assert done.returncode == 2 and "per-run image carries no certificates" in done.stderr


def test_manifest_step_records_the_tls_mode(tmp_path: Path, project: Path):
    for mode in ("baked", "per-run"):
        done = run_step("manifest", "--python", sys.executable, "--project", str(project),
                        "--base-image", "b:1", "--tls-mode", mode, "--out", str(tmp_path / f"{mode}.json"))
        assert done.returncode == 0, done.stderr
        assert json.loads((tmp_path / f"{mode}.json").read_text())["tls_mode"] == mode
