"""``flowrig build --platform`` and ``--gpu``, as rendered: the context's build arguments,
the ``docker build`` line, the Dockerfile's steps and labels, the requirements the build's
own step writes and the manifest it records. Nothing is built here (GPU wheels are big;
tests/e2e/docker/test_image_platforms.py builds for arm64 where qemu allows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowrig.builder import buildsteps
from flowrig.builder.build import build_command
from flowrig.builder.context import render_context
from flowrig.builder.dockerfile import dockerfile_text
from flowrig.builder.platforms import ARCHITECTURE_LABEL, GPU_LABEL, architecture, check_builder, parse_platforms
from flowrig.errors import BadInput
from tests.run_support import SEED, invoke
from tests.unit.test_builder import final_stage, stages


def test_a_platform_goes_into_the_build_line_and_the_contexts_hash():
    plain = render_context(SEED, base_image="b:1")
    arm = render_context(SEED, base_image="b:1", platform="linux/arm64")
    assert arm.build_args["PLATFORM"] == "linux/arm64" and "PLATFORM" not in plain.build_args
    # An arm64 image is another image: it never passes for the plain one's cache hit.
    assert arm.digest != plain.digest
    command = build_command(arm, "t:1", "/ctx", buildkit=True)
    assert command[command.index("--platform") + 1] == "linux/arm64"
    assert "--platform" not in build_command(plain, "t:1", "/ctx", buildkit=True)


def test_the_legacy_builder_is_refused_naming_buildx_and_labels_the_engines_architecture():
    arm = render_context(SEED, platform="linux/arm64")
    with pytest.raises(BadInput) as info:
        build_command(arm, "t:1", "/ctx", buildkit=False, client="/usr/local/bin/docker")
    assert "--platform needs BuildKit" in str(info.value) and "docker buildx" in str(info.value)
    # Without --platform a legacy build names the engine's architecture for the label.
    legacy = build_command(render_context(SEED), "t:1", "/ctx", buildkit=False, engine_arch="amd64")
    assert legacy[legacy.index("TARGETARCH=amd64") - 1] == "--build-arg"
    assert not any(a.startswith("TARGETARCH=") for a in build_command(render_context(SEED), "t:1", "/ctx",
                                                                        buildkit=True, engine_arch="amd64"))


def test_several_platforms_need_an_image_store_that_holds_them():
    both = render_context(SEED, platform="linux/amd64,linux/arm64")
    with pytest.raises(BadInput, match="keeps one platform per tag.*add --push"):
        build_command(both, "t:1", "/ctx", buildkit=True)
    command = build_command(both, "t:1", "/ctx", buildkit=True, multi_platform=True)
    assert command[command.index("--platform") + 1] == "linux/amd64,linux/arm64"


@pytest.mark.parametrize("value, words", [
    ("linux/riscv64", "is not a platform flowrig builds for"),
    ("arm64", "is not a platform flowrig builds for"),
    ("linux/arm64,linux/arm64", "names a platform twice"),
])
def test_bad_platforms_are_named(value, words):
    with pytest.raises(BadInput, match=words):
        parse_platforms(value)


def test_architecture_names_meet():
    assert [architecture(n) for n in ("x86_64", "aarch64", "ARM64", "amd64")] == ["amd64", "arm64", "arm64", "amd64"]
    assert parse_platforms(None) == () and parse_platforms("linux/arm64") == ("linux/arm64",)
    check_builder((), buildkit=False, client="docker", multi_platform=False)  # nothing asked: nothing refused


def test_the_dockerfile_labels_the_architecture_and_gpu_and_installs_the_gpu_wheels_with_the_project():
    text = dockerfile_text()
    labels = " ".join(value for op, value in final_stage(text) if op == "LABEL")
    assert f'{ARCHITECTURE_LABEL}="${{TARGETARCH}}"' in labels and f'{GPU_LABEL}="${{GPU}}"' in labels
    requirements = " ".join(value for op, value in stages(text)["requirements"] if op == "RUN")
    assert '--gpu "$GPU"' in requirements
    build = [value for op, value in stages(text)["build"] if op == "RUN" and "project.txt" in value]
    assert len(build) == 1 and "/opt/flowrig/requirements/gpu.txt" in build[0]
    manifest = " ".join(value for op, value in stages(text)["manifest"] if op == "RUN")
    assert '--gpu "$GPU"' in manifest


def test_gpu_goes_into_the_build_args_and_unknown_runtimes_are_refused(tmp_path: Path):
    context = render_context(SEED, gpu="cuda12")
    assert context.build_args["GPU"] == "cuda12" and context.digest != render_context(SEED).digest
    command = build_command(context, "t:1", "/ctx", buildkit=False)
    assert command[command.index("GPU=cuda12") - 1] == "--build-arg"
    done = invoke("build", str(SEED), "--tag", "t:1", "--gpu", "cuda13", "--context-only", str(tmp_path / "c"))
    assert done.returncode == 2 and "--gpu 'cuda13' is not a GPU runtime flowrig installs: use cuda12" in done.stderr
    assert not (tmp_path / "c").exists()


def test_the_requirements_step_writes_the_gpu_wheels_and_none_without(tmp_path: Path):
    for gpu, expected in (("cuda12", "nvidia-cuda-runtime-cu12\nnvidia-ml-py\n"), ("", "")):
        out = tmp_path / (gpu or "none")
        buildsteps.main(["requirements", "--pyproject", str(Path(buildsteps.__file__).parents[2] / "pyproject.toml"),
                         "--project", str(SEED), "--out", str(out), "--gpu", gpu])
        assert (out / "gpu.txt").read_text() == expected


def test_the_manifest_records_the_architecture_the_build_ran_on_and_the_gpu_runtime():
    manifest = buildsteps.build_manifest({}, "seed", {}, "b:1", None, architecture="aarch64", gpu="cuda12")
    assert manifest["architecture"] == "arm64"
    assert manifest["gpu"] == {"runtime": "cuda12", "packages": ["nvidia-cuda-runtime-cu12", "nvidia-ml-py"]}
    assert "gpu" not in buildsteps.build_manifest({}, "seed", {}, "b:1", None, architecture="x86_64")
    json.dumps(manifest)


def test_context_only_prints_a_buildkit_line_with_the_platform(tmp_path: Path):
    done = invoke("build", str(SEED), "--tag", "t:1", "--platform", "linux/arm64", "--context-only",
                  str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DOCKER_BUILDKIT=1 ") and "--platform linux/arm64" in done.stdout


@pytest.mark.parametrize("tag, host, path, version, loopback", [
    ("127.0.0.1:5000/seed:1", "127.0.0.1:5000", "seed", "1", True),
    ("localhost:5000/team/seed", "localhost:5000", "team/seed", "latest", True),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/seed:2", "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "seed",
     "2", False),
    ("[::1]:5000/seed:3", "[::1]:5000", "seed", "3", True),
    ("registry.example.com/a/b/seed:v1.2", "registry.example.com", "a/b/seed", "v1.2", False),
])
def test_a_push_tag_is_read_as_its_registry_reads_it(tag, host, path, version, loopback):
    from flowrig.builder.publish import platform_tag, reference

    ref = reference(tag)
    assert (ref.host, ref.path, ref.tag, ref.loopback) == (host, path, version, loopback)
    assert platform_tag(tag, "linux/arm64") == f"{host}/{path}:{version}-arm64"


@pytest.mark.parametrize("tag", ["seed:1", "team/seed:1", "127.0.0.1:5000/seed@sha256:" + "0" * 64])
def test_a_push_tag_without_a_registry_or_with_a_digest_is_bad_input(tag):
    from flowrig.builder.publish import reference

    with pytest.raises(BadInput, match="--push needs a tag that names its registry"):
        reference(tag)
