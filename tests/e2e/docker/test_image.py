"""The seed project's image, built by flowrig's builder (see tests/docker_support.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from flowrig import layout
from flowrig.builder import defaults as builder_defaults
from flowrig.certs import defaults as cert_defaults
from flowrig.project import defaults as project_defaults
from tests.docker_support import (
    SEED_PROJECT,
    one_legacy_build_file_at_a_time,
    private_keys_in_image,
    test_base_image,
)
from tests.run_support import FLOWRIG

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module", autouse=True)
def _legacy_builds_alone():
    with one_legacy_build_file_at_a_time():
        yield


def run(image: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    command = ["docker", "run", "--rm", "--network", "none"]
    if entrypoint is not None:
        command += ["--entrypoint", entrypoint]
    return subprocess.run([*command, image, *args], capture_output=True, text=True, timeout=300)


def test_info_shows_the_manifest_and_certificate_expiry(seed_image):
    done = run(seed_image, "info")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    manifest = info["manifest"]
    assert manifest["project"]["name"] == "seed"
    assert manifest["project"]["config"]["flow"] == "flow.py:dask_cloud_provider_test"
    assert manifest["base_image"] == test_base_image()
    assert manifest["tls"] == "image-local"
    for name in ("flowrig", "prefect", "distributed"):
        assert re.match(r"\d+\.\d+", manifest["versions"][name])
    certificate = info["certificate"]
    assert certificate["not_after"] and certificate["days_left"] > cert_defaults.EXPIRY_WARNING_DAYS
    assert info["tls_mode"] == manifest["tls_mode"] == "baked"
    assert re.fullmatch(r"[0-9a-f]{64}", certificate["ca_sha256"])
    # The CA's key was dropped once the leaf was signed: it lives no longer than the leaf.
    assert certificate["ca_not_after"] >= certificate["not_after"]


def test_runs_as_the_non_root_flowrig_user(seed_image):
    done = run(seed_image, "id", "-u")  # anything unknown is exec'd as is
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(layout.IMAGE_UID) != "0"


def test_leaf_key_is_private_to_the_runtime_user(seed_image):
    key = layout.IMAGE_TLS_DIR / layout.LEAF_KEY
    done = run(seed_image, "-c", f"stat -c '%a %U %u' {key}; cat {key} >/dev/null && echo readable",
               entrypoint="sh")
    assert done.stdout.split("\n")[:2] == [f"600 {layout.IMAGE_USER} {layout.IMAGE_UID}", "readable"]


def test_image_layout_runtime_only(seed_image):
    script = (
        "for c in dask-scheduler dask-worker dumb-init flowrig-entrypoint; do command -v $c; done; "
        "for m in pip setuptools wheel; do python -c \"import $m\" 2>/dev/null && echo has-$m; done; "
        "site=$(python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'); "
        "find \"$site\" -type d -name tests | head -3; "
        "test -f \"$(dirname $(python -c 'import prefect; print(prefect.__cached__)'))\"/__init__*.pyc "
        "  && echo prefect-bytecode; "
        "test -f /opt/flowrig/project/flow.py && echo project; "
        "cat /opt/flowrig/venv/bin/dask-worker"
    )
    done = run(seed_image, "-c", script, entrypoint="sh")
    lines = done.stdout.splitlines()
    assert [Path(line).name for line in lines[:4]] == [
        "dask-scheduler", "dask-worker", "dumb-init", "flowrig-entrypoint"
    ]
    assert not [line for line in lines if line.startswith("has-") or line.endswith("/tests")]
    assert "prefect-bytecode" in lines and "project" in lines
    assert 'exec flowrig-entrypoint dask-worker "$@"' in done.stdout


def test_no_layer_holds_a_private_key_other_than_the_leaf(docker_client, seed_image, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    leaf_cert = run(seed_image, "-c", f"cat {layout.IMAGE_TLS_DIR / layout.LEAF_CERT}",
                    entrypoint="sh").stdout.encode()
    leaf_public = x509.load_pem_x509_certificate(leaf_cert).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keys = private_keys_in_image(docker_client, seed_image, tmp_path, above=test_base_image())
    assert keys, "the image's leaf key should have been found"
    for layer, name, key in keys:
        assert key.public == leaf_public, f"{layer}:{name} holds a private key ({key.form}) that is not the leaf's"
        assert name.endswith(layout.LEAF_KEY)


@pytest.mark.parametrize(
    "command",
    [["scheduler"], ["dask-scheduler", "--idle-timeout", "5 minutes"]],
    ids=["scheduler", "dask-scheduler"],
)
def test_docker_stop_ends_a_scheduler_within_3_seconds(docker_client, seed_image, command):
    container = docker_client.containers.run(seed_image, command, detach=True, network_mode="none")
    try:
        deadline = time.monotonic() + 90
        while b"Scheduler at:" not in container.logs():
            assert time.monotonic() < deadline, container.logs()[-2000:]
            container.reload()
            assert container.status in ("created", "running"), container.logs()[-2000:]
            time.sleep(0.5)
        started = time.monotonic()
        container.stop(timeout=10)
        elapsed = time.monotonic() - started
        container.reload()
        assert container.attrs["State"]["ExitCode"] in (0, 143)
        assert elapsed < 3.0, f"docker stop took {elapsed:.1f} s"
    finally:
        container.remove(force=True)


def test_certs_given_to_the_builder_are_the_ones_baked(docker_client, seed_image, tmp_path):
    from flowrig.builder import build, render_context
    from flowrig.certs import generate
    from tests.docker_support import test_pip_ca

    certs = tmp_path / "certs"
    generate(certs, days=10)  # close to expiry: the roles warn
    tag = "flowrig-seed:test-certs"
    context = render_context(SEED_PROJECT, tls_dir=certs, base_image=test_base_image())
    build(context, tag, test_pip_ca(), quiet=True)  # shares every layer up to the TLS with seed_image
    try:
        tls = layout.IMAGE_TLS_DIR
        done = run(tag, "-c", f"cat {tls}/ca.crt {tls}/tls.crt; ls {tls}; stat -c '%a %u' {tls}/tls.key",
                   entrypoint="sh")
        expected = (certs / "ca.crt").read_text() + (certs / "tls.crt").read_text()
        assert done.stdout.startswith(expected)
        assert done.stdout[len(expected):].split() == ["ca.crt", "tls.crt", "tls.key", "600", str(layout.IMAGE_UID)]
        info = json.loads(run(tag, "info").stdout)
        assert info["manifest"]["tls"] == "provided"
        assert info["certificate"]["days_left"] <= 10
        worker = run(tag, "worker", "tls://127.0.0.1:9", "--death-timeout", "1")
        assert "warning: the image's baked certificate expires in" in worker.stderr, worker.stderr
    finally:
        docker_client.images.remove(tag)


def _ca_fingerprint(tag: str) -> str:
    done = run(tag, "info")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["certificate"]["ca_sha256"]


def test_every_build_without_certs_gets_a_new_ca(docker_client, seed_image, seed_copy):
    """Of the same project or of another, through the same build cache."""
    from flowrig.builder import build, render_context
    from tests.docker_support import test_pip_ca

    (seed_copy / "flowrig.toml").write_text('name = "other"\n' + (seed_copy / "flowrig.toml").read_text())
    tags = {"again": f"{seed_image}-again", "other": f"{seed_image}-other"}
    try:
        build(render_context(SEED_PROJECT, base_image=test_base_image()), tags["again"], test_pip_ca(), quiet=True)
        build(render_context(seed_copy, base_image=test_base_image()), tags["other"], test_pip_ca(), quiet=True)
        fingerprints = {_ca_fingerprint(tag) for tag in (seed_image, *tags.values())}
        assert len(fingerprints) == 3
    finally:
        for tag in tags.values():
            subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_a_per_run_image_has_no_private_key_and_takes_certificates_at_start(docker_client, seed_image, tmp_path):
    from flowrig.builder import build, render_context
    from flowrig.certs import TLSMaterial, delivery
    from tests.docker_support import test_pip_ca

    tag = f"{seed_image}-per-run"
    build(render_context(SEED_PROJECT, base_image=test_base_image(), tls_mode="per-run"), tag, test_pip_ca(),
          quiet=True)
    try:
        assert private_keys_in_image(docker_client, tag, tmp_path, above=test_base_image()) == []
        image = docker_client.images.get(tag)
        assert image.labels[layout.IMAGE_TLS_MODE_LABEL] == "per-run"
        info = json.loads(run(tag, "info").stdout)
        assert info["tls_mode"] == info["manifest"]["tls_mode"] == "per-run"
        assert info["certificate"]["present"] is False
        refused = run(tag, "scheduler")
        assert refused.returncode == 2, refused.stderr
        assert "--tls per-run" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        # Delivered on stdin, the certificates let a worker start: it listens over TLS,
        # then gives up on a scheduler that does not exist.
        started = subprocess.run(
            ["docker", "run", "--rm", "-i", "--network", "none", "-e", f"{delivery.FROM_ENV}=stdin", tag,
             "worker", "tls://127.0.0.1:9", "--death-timeout", "2"],
            input=delivery.encode(TLSMaterial.ephemeral()), capture_output=True, timeout=120,
        )
        log = started.stderr.decode()
        # Listening on tls:// needs the delivered key; the timeout is the missing scheduler.
        assert "Nanny at 'tls://" in log and "Timed out starting worker" in log, log
        assert "carries no certificates" not in log
    finally:
        docker_client.images.remove(tag)


# --- bad input: one line, exit 2, nothing left behind -------------------------------------------


def _leftovers() -> tuple[set[str], set[str]]:
    """Dangling images, and containers that carry no label.

    A build's intermediate containers come from the Dockerfile's first stages, which set
    no label; the containers the other tests of a parallel session start carry labels (a
    run's, or its image's), except those test_scistack_image.py runs from its plain
    builds' images (``*-plain:*`` tags), left out here too."""
    dangling = subprocess.run(["docker", "images", "-q", "--no-trunc", "-f", "dangling=true"],
                              capture_output=True, text=True, check=True).stdout.split()
    images = set()
    if dangling:
        # Likewise a build's intermediate images (its first stages: no label); an image
        # that another test's rebuild untagged carries its labels.
        listed = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}} {{json .Config.Labels}}",
                                 *dangling], capture_output=True, text=True).stdout.splitlines()
        images = {line[0] for line in filter(None, (line.split(" ", 1) for line in listed))
                  if line[1:] in (["null"], ["{}"])}
    ids = subprocess.run(["docker", "ps", "-aq", "--no-trunc"],
                         capture_output=True, text=True, check=True).stdout.split()
    containers = set()
    if ids:
        listed = subprocess.run(["docker", "inspect", "--format", "{{.Id}} {{len .Config.Labels}} {{.Config.Image}}",
                                 *ids], capture_output=True, text=True).stdout.splitlines()
        # A container gone between the two commands is not inspected: it was left by no one.
        for line in filter(None, (line.split() for line in listed)):
            if line[1] == "0" and "-plain:" not in line[2]:
                containers.add(line[0])
    return images, containers


def flowrig_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOWRIG, "build", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def seed_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "seed"
    shutil.copytree(SEED_PROJECT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _mismatched_certs(tmp_path: Path) -> Path:
    from flowrig.certs import generate

    generate(tmp_path / "certs")
    generate(tmp_path / "other")
    shutil.copy(tmp_path / "other" / layout.LEAF_KEY, tmp_path / "certs" / layout.LEAF_KEY)
    return tmp_path / "certs"


@pytest.mark.parametrize("case", ["missing-requirements", "unknown-base-image", "mismatched-key"])
def test_bad_input_builds_exit_2_with_one_line_and_leave_nothing(docker_client, seed_copy, tmp_path, case):
    args = [str(seed_copy), "--tag", "flowrig-bad-input:test", "--base-image", test_base_image()]
    if case == "missing-requirements":
        toml = seed_copy / project_defaults.PROJECT_FILE
        toml.write_text('requirements = "requirements-missing.txt"\n' + toml.read_text())
        expected = "requirements-missing.txt"
    elif case == "unknown-base-image":
        args[-1] = "flowrig-no-such-base:1"
        expected = "not found locally"
    else:
        args += ["--certs", str(_mismatched_certs(tmp_path))]
        expected = "tls.key"
    before = _leftovers()
    done = flowrig_build(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert _leftovers() == before
    assert subprocess.run(["docker", "image", "inspect", "flowrig-bad-input:test"],
                          capture_output=True).returncode != 0


def test_a_build_step_rejecting_the_project_is_bad_input_and_leaves_nothing(docker_client, seed_copy):
    """The in-build check (buildsteps.py) for a context that skipped the host's checks."""
    from flowrig.builder import build, render_context
    from flowrig.builder.context import BuildContext, ContextFile
    from flowrig.errors import BadInput

    context = render_context(seed_copy, base_image=test_base_image())
    files = dict(context.files)
    toml = files[f"{builder_defaults.CONTEXT_PROJECT_DIR}/{project_defaults.PROJECT_FILE}"]
    files[f"{builder_defaults.CONTEXT_PROJECT_DIR}/{project_defaults.PROJECT_FILE}"] = ContextFile(
        b'requirements = "nope.txt"\n' + toml.data, toml.mode
    )
    before = _leftovers()
    with pytest.raises(BadInput, match="nope.txt"):
        build(BuildContext(files, context.build_args), "flowrig-bad-input:test", quiet=True)
    assert _leftovers() == before


def test_a_plain_docker_build_makes_no_ca_without_a_nonce(seed_image, tmp_path):
    """The repository's Dockerfile on its own: without TLS_NONCE, a baked build would take
    its CA from the cache of an earlier one, so it stops at that step instead."""
    from flowrig.builder.build import detect_client
    from tests.docker_support import copy_repository

    client = detect_client()
    command = [client.path, "build", "--rm", "--force-rm", "--build-arg", f"BASE_IMAGE={test_base_image()}",
               "--tag", f"{seed_image}-plain"]
    if client.buildkit:
        command += ["--progress", "plain"]
    done = subprocess.run([*command, str(copy_repository(tmp_path / "repository"))], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "DOCKER_BUILDKIT": "1" if client.buildkit else "0"})
    assert done.returncode != 0
    assert "pass --build-arg TLS_NONCE=" in done.stdout + done.stderr
    assert subprocess.run(["docker", "image", "inspect", f"{seed_image}-plain"], capture_output=True).returncode != 0
