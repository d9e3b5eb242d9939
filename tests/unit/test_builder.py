"""The builder without Docker: rendered contexts, the Dockerfile, and the in-build steps."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flowrig import layout
from flowrig.builder import buildsteps, buildsteps_prune
from flowrig.builder import defaults as builder_defaults
from flowrig.builder.build import add_pip_ca, build_command
from flowrig.builder.context import (
    BuildContext,
    ContextFile,
    render_context,
    write_context,
)
from flowrig.builder.context_files import DockerIgnore
from flowrig.builder.dockerfile import PIP_CA, dockerfile_text
from flowrig.cli.build import register
from flowrig.errors import BadInput
from flowrig.project import defaults as project_defaults
from tests.key_support import KEY_FORMS
from tests.run_support import invoke

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed"


# --- helpers ----------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuations joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    out = []
    for entry in logical:
        word, _, rest = entry.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named stage (the part before the first FROM under "")."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    name = ""
    for word, rest in instructions(text):
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result[name] = []
        result[name].append((word, rest))
    return result


def final_stage(text: str) -> list[tuple[str, str]]:
    return list(stages(text).values())[-1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the seed project that a test may change."""
    copy = tmp_path / "seed"
    shutil.copytree(SEED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def certs_dir(path: Path) -> Path:
    from flowrig.certs import generate

    generate(path)
    return path


def tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """path -> (content, mode, mtime) of every file and directory under root."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        data = path.read_bytes() if path.is_file() else b""
        found[path.relative_to(root).as_posix()] = (data, stat.S_IMODE(info.st_mode), int(info.st_mtime))
    return found


# --- render_context -----------------------------------------------------------------------


def test_render_holds_dockerfile_flowrig_source_project_and_manifest():
    context = render_context(SEED, base_image="flowrig-base:bookworm")
    files = context.files
    assert files["Dockerfile"].data == (REPO / "Dockerfile").read_bytes()
    assert files["pyproject.toml"].data == (REPO / "pyproject.toml").read_bytes()
    assert files["flowrig/builder/context.py"].data == (REPO / "flowrig/builder/context.py").read_bytes()
    assert files["project/flowrig.toml"].data == (SEED / "flowrig.toml").read_bytes()
    assert files["project/flow.py"].data == (SEED / "flow.py").read_bytes()
    assert "manifest.json" in files
    assert not any(p.startswith("tls/") for p in files), "no --certs: the image makes its own"
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in files)
    assert list(files) == sorted(files)
    assert dict(context.build_args) == {
        "BASE_IMAGE": "flowrig-base:bookworm",
        "IMAGE_VERSION": metadata.version("flowrig"),
        "PROJECT": builder_defaults.CONTEXT_PROJECT_DIR,
        "TLS_MODE": "baked",
    }


def test_default_base_image_is_the_dockerfile_default():
    context = render_context(SEED)
    assert context.build_args["BASE_IMAGE"] == builder_defaults.BASE_IMAGE
    assert f"ARG BASE_IMAGE={builder_defaults.BASE_IMAGE}" in context.dockerfile


def test_manifest_has_project_config_and_versions_but_no_time():
    manifest = render_context(SEED).manifest
    assert manifest["project"]["name"] == "seed"
    assert manifest["project"]["config"] == tomllib.loads((SEED / "flowrig.toml").read_text())
    for name in ("flowrig", "prefect", "distributed"):
        assert manifest["builder"][name] == metadata.version(name)
    assert manifest["tls"] == "image-local"
    flat = json.dumps(manifest).lower()
    assert not re.search(r"\d{4}-\d{2}-\d{2}t\d{2}:", flat), "a timestamp makes contexts differ"
    assert not {"time", "created", "built", "date"} & set(manifest)


def test_same_input_gives_the_same_bytes(tmp_path: Path, project: Path):
    first = render_context(project)
    second = render_context(project)
    assert first.digest == second.digest
    assert dict(first.files) == dict(second.files)
    a = write_context(first, tmp_path / "a")
    b = write_context(second, tmp_path / "b")
    assert tree(a) == tree(b)
    for _, (_, _, mtime) in tree(a).items():
        assert mtime == builder_defaults.CONTEXT_MTIME


def test_editing_the_flow_changes_only_the_project_file(project: Path):
    before = render_context(project)
    (project / "flow.py").write_text((project / "flow.py").read_text() + "\n# edited\n")
    after = render_context(project)
    assert before.digest != after.digest
    changed = {p for p in after.files if before.files.get(p) != after.files[p]}
    assert changed == {"project/flow.py"}


def test_written_context_keeps_modes(tmp_path: Path, project: Path):
    script = project / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o775)
    (project / "data.txt").write_text("x")
    (project / "data.txt").chmod(0o664)
    context = render_context(project, tls_dir=certs_dir(tmp_path / "certs"))
    written = tree(write_context(context, tmp_path / "ctx"))
    assert written["project/run.sh"][1] == 0o755
    assert written["project/data.txt"][1] == 0o644
    assert written["tls/tls.key"][1] == 0o600
    assert written["tls/ca.crt"][1] == 0o644


def test_project_caches_and_dockerignore_are_left_out(project: Path):
    for name in ("__pycache__/flow.cpython-311.pyc", ".venv/bin/python", ".git/HEAD", "data/big.csv",
                 "logs/run.log", "keep.log", ".env"):
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (project / ".dockerignore").write_text("# project rules\ndata/\n**/*.log\n!keep.log\n")
    files = {p.removeprefix("project/") for p in render_context(project).files if p.startswith("project/")}
    assert files == {".dockerignore", "flow.py", "flowrig.toml", "keep.log"}


def test_symbolic_links_are_copied_only_when_they_stay_inside(tmp_path: Path, project: Path):
    (tmp_path / "secret.txt").write_text("outside")
    (project / "outside.txt").symlink_to(tmp_path / "secret.txt")
    (project / "dangling.txt").symlink_to(tmp_path / "nothing")
    (project / "alias.py").symlink_to(project / "flow.py")
    files = render_context(project).files
    assert files["project/alias.py"].data == (project / "flow.py").read_bytes()
    assert "project/outside.txt" not in files and "project/dangling.txt" not in files


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["*.txt"], "a.txt", True),
        (["*.txt"], "sub/a.txt", False),  # * stays in one component, as in Docker
        (["**/*.txt"], "sub/deep/a.txt", True),
        (["data"], "data/x/y.csv", True),  # a directory excludes what is below it
        (["data", "!data/keep.csv"], "data/keep.csv", False),
        (["!a.txt", "*.txt"], "a.txt", True),  # the last match wins
        (["/build"], "build/out", True),
        (["file?.py"], "file1.py", True),
        (["file[0-9].py"], "filex.py", False),
    ],
)
def test_dockerignore_matching(patterns, path, excluded):
    assert DockerIgnore(patterns).excludes(path) is excluded


# --- certificates and private keys ----------------------------------------------------------


def test_certs_add_only_ca_cert_leaf_and_key(tmp_path: Path):
    certs = certs_dir(tmp_path / "certs")
    assert (certs / "ca.key").exists()
    context = render_context(SEED, tls_dir=certs)
    tls = {p: f for p, f in context.files.items() if p.startswith("tls/")}
    assert set(tls) == {"tls/ca.crt", "tls/tls.crt", "tls/tls.key"}
    assert tls["tls/tls.key"].data == (certs / "tls.key").read_bytes()
    assert not any((certs / "ca.key").read_bytes() in f.data for f in context.files.values())
    assert context.manifest["tls"] == "provided"


def test_certs_with_a_mismatched_key_are_refused(tmp_path: Path):
    certs = certs_dir(tmp_path / "certs")
    other = certs_dir(tmp_path / "other")
    shutil.copy(other / "tls.key", certs / "tls.key")
    with pytest.raises(BadInput) as error:
        render_context(SEED, tls_dir=certs)
    assert "\n" not in str(error.value)


def test_a_ca_key_in_the_project_is_refused(tmp_path: Path, project: Path):
    certs = certs_dir(tmp_path / "certs")
    shutil.copy(certs / "ca.key", project / "ca.key")
    with pytest.raises(BadInput, match="project/ca.key"):
        render_context(project)


def test_a_ca_key_under_another_name_is_refused(tmp_path: Path, project: Path):
    certs = certs_dir(tmp_path / "certs")
    (project / "config").mkdir()
    shutil.copy(certs / "ca.crt", project / "config" / "ca.pem")
    shutil.copy(certs / "ca.key", project / "config" / "signing.pem")
    with pytest.raises(BadInput, match="signing.pem"):
        render_context(project)


def test_write_context_refuses_a_ca_key_before_writing(tmp_path: Path):
    certs = certs_dir(tmp_path / "certs")
    good = render_context(SEED)
    files = dict(good.files)
    files["tls/ca.key"] = ContextFile((certs / "ca.key").read_bytes(), 0o600)
    files["tls/ca.crt"] = ContextFile((certs / "ca.crt").read_bytes())
    bad = BuildContext(files, good.build_args)
    with pytest.raises(BadInput, match="ca.key"):
        write_context(bad, tmp_path / "ctx")
    assert not (tmp_path / "ctx").exists()


# --- bad projects ---------------------------------------------------------------------------


def test_missing_requirements_file_is_bad_input(project: Path):
    toml = project / "flowrig.toml"
    toml.write_text('requirements = "missing.txt"\n' + toml.read_text())
    with pytest.raises(BadInput, match="missing.txt"):
        render_context(project)


def test_requirements_outside_the_project_are_bad_input(tmp_path: Path, project: Path):
    (tmp_path / "outside.txt").write_text("six\n")
    toml = project / "flowrig.toml"
    toml.write_text('requirements = "../outside.txt"\n' + toml.read_text())
    with pytest.raises(BadInput):
        render_context(project)


def test_missing_project_is_bad_input(tmp_path: Path):
    with pytest.raises(BadInput, match="does not exist"):
        render_context(tmp_path / "nowhere")


def test_write_context_wants_an_empty_directory(tmp_path: Path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(BadInput, match="not an empty directory"):
        write_context(render_context(SEED), tmp_path / "full")


def test_installed_flowrig_gets_a_pyproject_from_its_metadata():
    from flowrig.builder.context_files import _pyproject_from_metadata

    made = tomllib.loads(_pyproject_from_metadata().decode())
    real = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert made["project"]["name"] == "flowrig"
    assert made["project"]["version"] == metadata.version("flowrig")
    from packaging.requirements import Requirement

    def normalise(requirements: list[str]) -> list[str]:
        return sorted(str(Requirement(r)) for r in requirements)

    assert normalise(made["project"]["dependencies"]) == normalise(real["project"]["dependencies"])
    assert made["project"]["scripts"] == real["project"]["scripts"]
    assert made["build-system"] == real["build-system"]
    wheel = made["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel == real["tool"]["hatch"]["build"]["targets"]["wheel"]


# --- the Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_arguments_and_no_syntax_line():
    text = dockerfile_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    head = stages(text)[""]
    assert ("ARG", f"BASE_IMAGE={builder_defaults.BASE_IMAGE}") in head
    assert ("ARG", "PROJECT=examples/seed") in head


def test_dockerfile_final_stage_runs_as_flowrig_under_dumb_init():
    final = final_stage(dockerfile_text())
    assert final[0] == ("FROM", "runtime-deps AS runtime")
    assert ("ENTRYPOINT", '["dumb-init", "--", "flowrig-entrypoint"]') in final
    assert ("CMD", '["run"]') in final
    users = [rest for word, rest in final if word == "USER"]
    assert users[-1] == layout.IMAGE_USER
    text = dockerfile_text()
    assert f"--uid {layout.IMAGE_UID}" in text and f"--chown={layout.IMAGE_UID}:" in text


def test_dockerfile_environment():
    env = " ".join(rest for word, rest in instructions(dockerfile_text()) if word == "ENV")
    for setting in ("FLOWRIG_IN_IMAGE=1", "PREFECT_HOME=/home/flowrig/", "PYTHONDONTWRITEBYTECODE=1",
                    "PREFECT_SERVER_ANALYTICS_ENABLED=false"):
        assert setting in env


def test_dockerfile_labels_come_last_and_hold_no_secrets():
    all_instructions = instructions(dockerfile_text())
    assert all_instructions[-1][0] == "LABEL"
    labels = re.findall(r"([\w.-]+)=", all_instructions[-1][1])
    assert labels and all(label.startswith(("org.opencontainers.image.", "org.flowrig."))
                          or label == layout.IMAGE_TLS_MODE_LABEL for label in labels)
    secretish = re.compile(r"(CERT|SECRET|TOKEN|PASSWORD|KEY|CA)\b", re.IGNORECASE)
    for word, rest in all_instructions:
        if word in ("ARG", "ENV", "LABEL"):
            names = re.findall(r"([A-Za-z_][\w.-]*)=", rest) or [rest.split("=")[0]]
            assert not any(secretish.search(n.split(".")[-1]) for n in names), (word, rest)


def test_dependencies_and_prepare_come_before_the_flow_code():
    text = dockerfile_text()
    parts = stages(text)
    final = parts["runtime"]
    project_copy = final.index(("COPY", "${PROJECT}/ /opt/flowrig/project/"))
    # Nothing after the flow copy but metadata and the import check: editing a flow
    # rebuilds one layer and runs the check again.
    after = final[project_copy + 1 :]
    assert {w for w, _ in after} <= {"USER", "WORKDIR", "ENTRYPOINT", "CMD", "ARG", "LABEL", "RUN"}
    assert [rest for w, rest in after if w == "RUN"] == ["flowrig-entrypoint check-imports"]
    assert ("RUN", "flowrig-entrypoint prepare") in parts["runtime-deps"]
    installs = [rest for name in ("deps", "build") for w, rest in parts[name]
                if w == "RUN" and "buildsteps.py install" in rest]
    assert len(installs) == 2 and all("--pip-ca /opt/flowrig/build/pip-ca/pip-ca.crt" in r for r in installs)
    assert any("bake-tls" in rest for w, rest in parts["tls"] if w == "RUN")


def test_the_import_check_runs_as_the_image_user_after_the_project_is_in_place():
    final = stages(dockerfile_text())["runtime"]
    check = final.index(("RUN", "flowrig-entrypoint check-imports"))
    assert ("COPY", "${PROJECT}/ /opt/flowrig/project/") in final[:check]
    users = [rest for w, rest in final[:check] if w == "USER"]
    assert users[-1] == layout.IMAGE_USER


def test_final_image_takes_nothing_that_could_hold_the_pip_ca():
    parts = stages(dockerfile_text())
    sources = [rest for name in ("runtime-deps", "runtime") for w, rest in parts[name] if w == "COPY"]
    froms = {m.group(1): rest for rest in sources if (m := re.search(r"--from=(\S+)", rest))}
    # From the deps and project-layer stages only the venv's two layers (flowrig itself
    # in the second); pip's CA bundle lives under /opt/flowrig/build.
    assert "build" not in froms
    assert froms["deps"].split()[-2] == "/opt/flowrig/venv"
    assert froms["project-layer"].split()[-2] == "/opt/flowrig/layers/project/"
    assert not any("pip-ca" in rest or "/run/secrets" in rest for rest in sources)
    assert "PIP_CERT" not in dockerfile_text()


def test_dockerfile_builds_with_any_builder_and_copies_the_pip_ca_into_the_build_stage_only():
    text = dockerfile_text()
    # RUN --mount is BuildKit's: the legacy builder refuses the whole file.
    assert not [rest for word, rest in instructions(text) if word == "RUN" and "--mount" in rest]
    copies = [(name, rest) for name, body in stages(text).items() for w, rest in body
              if w == "COPY" and "pip-ca" in rest]
    assert copies == [("deps", "constraints.txt pip-ca.cr[t] /opt/flowrig/build/pip-ca/")]


def test_no_project_file_reaches_the_stage_of_flowrigs_dependency_layer():
    """What makes that layer the same for every project on the same flowrig, base and
    backend: the deps stage copies the build's own files and flowrig's requirement files
    (which depend on the backend alone), and nothing of the project."""
    deps = stages(dockerfile_text())["deps"]
    copies = [rest for w, rest in deps if w == "COPY"]
    assert not any("${PROJECT}" in rest or "/opt/flowrig/build/project" in rest for rest in copies), copies
    from_requirements = [rest.split()[1:-1] for rest in copies if rest.startswith("--from=requirements")]
    assert from_requirements == [[f"/opt/flowrig/requirements/{n}" for n in ("flowrig.txt", "build.txt",
                                                                              "constraints.txt")]]
    assert not any("ARG PROJECT" in f"{w} {rest}" for w, rest in deps)
    runtime = [rest for w, rest in stages(dockerfile_text())["runtime-deps"] if w == "COPY"]
    assert runtime[:2] == ["--from=deps /opt/flowrig/venv /opt/flowrig/venv", "--from=project-layer /opt/flowrig/layers/project/ /"]


def test_pyproject_ships_the_dockerfile_as_package_data():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = data["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include["Dockerfile"] == "flowrig/builder/Dockerfile"


def test_dockerignore_lets_in_any_project_folder_and_keeps_out_what_it_always_did():
    rules = DockerIgnore((REPO / ".dockerignore").read_text().splitlines())
    for kept in ("Dockerfile", "pyproject.toml", "constraints.txt", "README.md", "flowrig/cli.py",
                 "examples/seed/flow.py", "flows/etl/flow.py", "flows/etl/requirements.txt",
                 "pipelines/nightly/deep/etl/flowrig.toml", "flows/etl/data/sample.csv", "pip-ca.crt",
                 "tls/tls.key", "tls/ca.crt", "tls/tls.crt"):
        assert not rules.excludes(kept), kept
    for dropped in (".git/HEAD", "flows/etl/.git/config", "tests/test_builder.py", "flows/etl/tests/test_flow.py",
                    "benchmarks/bench_image.py", ".ci/run", ".github/workflows/ci.yml", "uv.lock",
                    "flowrig/__pycache__/cli.cpython-311.pyc", ".venv/bin/python", "flows/etl/.venv/bin/python",
                    "flows/etl/venv/lib/x.py", "node_modules/x/index.js", "tls/ca.key", "tls/other.pem",
                    "examples/seed/ca.key", "examples/seed/server.key", "flows/etl/keys/signer.key",
                    ".pytest_cache/x", "examples/seed/.env", "flows/etl/.env.production", "flows/etl/.aws/credentials",
                    "infra/terraform.tfstate", "infra/.terraform/providers/x", "flows/etl/id_ed25519",
                    "flows/etl/cert.p12"):
        assert rules.excludes(dropped), dropped


# --- the docker command line ---------------------------------------------------------------------


def test_build_command_is_the_same_for_both_builders_but_for_progress(tmp_path: Path):
    context = render_context(SEED, base_image="b:1")
    command = build_command(context, "t:1", tmp_path, buildkit=True)
    assert command[:2] == ["docker", "build"]
    assert {"--rm", "--force-rm"} <= set(command)
    assert f"{builder_defaults.IMAGE_CONTEXT_LABEL}={context.digest}" in command
    assert "BASE_IMAGE=b:1" in command and command[-1] == str(tmp_path)
    legacy = build_command(context, "t:1", tmp_path, buildkit=False)
    assert [a for a in command if a not in ("--progress", "plain")] == legacy
    assert not any(a in ("--secret", "--file") for a in command)


def test_the_pip_ca_goes_into_the_written_context_with_its_fixed_time(tmp_path: Path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    directory = write_context(render_context(SEED), tmp_path / "ctx")
    copied = add_pip_ca(directory, bundle)
    assert copied == directory / PIP_CA and copied.read_bytes() == bundle.read_bytes()
    assert stat.S_IMODE(copied.stat().st_mode) == 0o644 and int(copied.stat().st_mtime) == builder_defaults.CONTEXT_MTIME
    with pytest.raises(BadInput, match="not a file"):
        add_pip_ca(directory, tmp_path / "missing.pem")


def test_cli_context_only_writes_the_context_and_prints_the_command(tmp_path: Path):
    app = typer.Typer()
    register(app)

    @app.command("other")
    def _other() -> None:  # a second command keeps `build` a named subcommand
        pass

    out = tmp_path / "ctx"
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("certificates\n")
    result = CliRunner().invoke(app, ["build", str(SEED), "--tag", "seed:1", "--context-only", str(out),
                                      "--pip-ca", str(bundle)])
    assert result.exit_code == 0, result.output
    assert (out / "Dockerfile").is_file() and (out / "project" / "flowrig.toml").is_file()
    assert (out / PIP_CA).read_text() == "certificates\n"
    # A command for any builder: no BuildKit switch, secret or progress mode.
    assert result.output.startswith("docker build ") and str(out) in result.output
    assert not any(word in result.output for word in ("DOCKER_BUILDKIT", "--secret", "--progress"))


def test_cli_bad_project_raises_bad_input(tmp_path: Path):
    app = typer.Typer()
    register(app)

    @app.command("other")
    def _other() -> None:
        pass

    result = CliRunner().invoke(app, ["build", str(tmp_path / "nowhere"), "--tag", "x:1"])
    assert isinstance(result.exception, BadInput)
    assert result.exception.exit_code == 2


# --- buildsteps.py (runs inside the build with the base image's python3) -------------------------


#: What the Dockerfile copies into the build and buildsteps.py loads by path.
BUILD_MODULES = ("builder/buildsteps.py", "builder/buildsteps_install.py", "builder/buildsteps_prune.py",
                 "builder/buildsteps_layers.py",
                 "project/build_rules.py", "project/secret_rules.py", "project/secret_scan.py")


def test_buildsteps_uses_the_standard_library_only():
    for name in BUILD_MODULES:
        source = (REPO / "flowrig" / name).read_text()
        assert not re.search(r"^\s*(from|import) flowrig", source, re.MULTILINE), name
    assert buildsteps.PROJECT_FILE == project_defaults.PROJECT_FILE


def test_dockerfile_copies_every_module_the_build_loads_by_path():
    copied = " ".join(rest for word, rest in instructions(dockerfile_text()) if word == "COPY")
    for name in BUILD_MODULES:
        assert f"flowrig/{name}" in copied, name


def test_prune_removes_pip_tests_and_caches_but_keeps_runtime_files(tmp_path: Path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    keep = ["pkg/__init__.py", "pkg/testing/__init__.py", "pkg/data/test/sample.json",
            "pkg/lib.cpython-311-x86_64-linux-gnu.so", "prefect/server/api/server.py"]
    drop = ["pip/__init__.py", "pip-23.0.1.dist-info/METADATA", "setuptools/__init__.py",
            "_distutils_hack/__init__.py", "distutils-precedence.pth", "pkg/tests/test_lib.py",
            "pkg/__pycache__/lib.cpython-311.pyc", "pkg/stub.pyi", "prefect/server/ui/index.html",
            "prefect/server/ui-v2/index.html"]
    for name in keep + drop:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("x")
    doomed = {p.relative_to(site).as_posix() for p in buildsteps_prune.prune_paths(site)}
    assert not doomed & set(keep)
    for name in drop:
        assert name in doomed or any(name.startswith(d + "/") for d in doomed), name


def test_prune_drops_bokehs_extension_toolchain_and_readable_twins_but_every_minified_bundle_stays(tmp_path: Path):
    """The scheduler's dashboard serves bokeh's *.min.js only; what builds extensions with
    node.js (compiler, module sources, typings) and the readable twins go."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    static = "bokeh/server/static"
    keep = [f"{static}/js/bokeh.min.js", f"{static}/js/bokeh-gl.min.js", f"{static}/js/bokeh-mathjax.min.js",
            f"{static}/js/only-readable.js", f"{static}/favicon.ico", "bokeh/core/_templates/file.html",
            "other/static/js/app.js", "other/static/js/app.min.js"]
    drop = [f"{static}/js/bokeh.js", f"{static}/js/bokeh-gl.js", f"{static}/js/bokeh-mathjax.js",
            f"{static}/js/compiler.js", f"{static}/js/lib/api/index.js", f"{static}/lib/lib.dom.d.ts"]
    for name in keep + drop:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("x")
    doomed = {p.relative_to(site).as_posix() for p in buildsteps_prune.prune_paths(site)}
    assert not {k for k in keep if any(k == d or k.startswith(d + "/") for d in doomed)}
    for name in drop:
        assert name in doomed or any(name.startswith(d + "/") for d in doomed), name


@pytest.mark.parametrize(
    ("backend", "sdks"),
    [("local", []), ("docker", []), ("ecs", ["dask-cloudprovider[aws]"]), ("fargate", ["dask-cloudprovider[aws]"]),
     ("ec2", ["dask-cloudprovider[aws]"]), ("azure", ["dask-cloudprovider[azure]", "azure-keyvault-secrets"]),
     ("gcp", ["dask-cloudprovider[gcp]"])],
)
def test_images_carry_the_extra_of_the_projects_backend_and_no_other(backend, sdks):
    config = {"flow": "flow.py:f", "cluster": {"backend": backend}}
    runtime, _ = buildsteps.pyproject_requirements(REPO / "pyproject.toml", buildsteps.flowrig_extras(config))
    cloud = sorted(r.split(">")[0] for r in runtime if r.startswith(("dask-cloudprovider", "azure")))
    assert cloud == sorted(sdks)
    assert any(r.startswith("prefect-dask") for r in runtime)


# --- the lock: every install of an image build is pinned by it --------------------------------


def test_constraints_file_is_the_locks_export_and_covers_every_install():
    """constraints.txt pins flowrig's dependencies, the aws extra and the image's own tools."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins.setdefault(name.strip().lower(), rest.split(";")[0].strip())
    for name in ("prefect", "prefect-dask", "distributed", "dask-cloudprovider", "aiobotocore",
                 "botocore", "cryptography", "typer", "dumb-init", "hatchling"):
        assert name in pins and pins[name], name
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # No direct boto3 next to aiobotocore's narrow botocore pin (it makes pip backtrack).
    for requirement in pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["aws"]:
        assert not requirement.startswith("boto3"), requirement
    assert pyproject["tool"]["uv"]["required-version"].startswith("==")


def test_context_carries_the_constraints_and_the_dockerfile_pins_both_install_layers():
    context = render_context(SEED)
    assert context.files["constraints.txt"].data == (REPO / "constraints.txt").read_bytes()
    dockerfile = context.dockerfile
    installs = [step for step in dockerfile.split("RUN ") if "buildsteps.py install " in step]
    assert len(installs) == 2
    for step in installs:
        assert "--constraints /opt/flowrig/requirements/constraints.txt" in step
    assert "--constraints /opt/flowrig/build/constraints.txt" in dockerfile
    rules = DockerIgnore((REPO / ".dockerignore").read_text().splitlines())
    assert not rules.excludes("constraints.txt")


def test_install_step_passes_the_constraints_to_every_pip_call(tmp_path: Path, monkeypatch):
    calls: list[list[str]] = []
    # The install module as the step dispatch loaded it (by path, as in the build).
    monkeypatch.setattr(buildsteps._install, "_run", lambda cmd, env, check=True: calls.append(cmd) or True)
    monkeypatch.setattr(buildsteps._install, "_run_pip", lambda cmd, env: (calls.append(cmd), (0, []))[1])
    reqs = tmp_path / "flowrig.txt"
    reqs.write_text("prefect\n")
    build_reqs = tmp_path / "build.txt"
    build_reqs.write_text("hatchling\n")
    pins = tmp_path / "constraints.txt"
    pins.write_text("prefect==3.9.1\nhatchling==1.33.0\n")
    args = buildsteps.parser().parse_args([
        "install", "--pip", "pip", "--python", "py", "--wheels", str(tmp_path / "w"),
        "--constraints", str(pins), "--build-requirements", str(build_reqs), str(reqs),
    ])
    args.func(args)
    assert len(calls) == 3  # wheelhouse, build backend next to pip, the runtime venv
    for cmd in calls:
        assert cmd[cmd.index("-c") + 1] == str(pins), cmd


# --- no secrets in a context: credential files, private keys, credential options ---------------

CREDENTIAL_FILES = (
    ".env", ".env.production", ".aws/credentials", ".aws/config", ".ssh/id_ed25519", ".netrc",
    ".pypirc", ".docker/config.json", ".config/gcloud/application_default_credentials.json",
    ".azure/msal_token_cache.json", ".kube/config", "sub/.env.local", ".git-credentials",
)


def flowrig_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line's entry point, in process: real exit codes, real stderr."""
    return invoke(*args)


def test_credential_files_never_enter_a_context_and_each_is_named(tmp_path: Path, project: Path):
    for name in CREDENTIAL_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("secret=hunter2\n")
    (project / ".config" / "other.toml").write_text("kept = true\n")
    (project / "linked-credentials").symlink_to(".aws/credentials")
    out = tmp_path / "ctx"
    done = flowrig_cli("build", str(project), "--tag", "seed:1", "--context-only", str(out))
    assert done.returncode == 0, done.stderr
    copied = {p.relative_to(out / "project").as_posix() for p in (out / "project").rglob("*") if p.is_file()}
    assert copied == {"flow.py", "flowrig.toml", ".config/other.toml"}
    assert not any(b"hunter2" in p.read_bytes() for p in out.rglob("*") if p.is_file())
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    expected = [".aws/", ".azure/", ".config/gcloud/", ".docker/config.json", ".env", ".env.production",
                ".git-credentials", ".kube/config", ".netrc", ".pypirc", ".ssh/", "linked-credentials",
                "sub/.env.local"]
    assert sorted(warned) == sorted(f"warning: project/{name} holds credentials and was not copied into the image"
                                    for name in expected)


def test_repository_dockerignore_leaves_out_the_same_credential_files():
    from flowrig.project.build_rules import CREDENTIAL_PATTERNS

    text = (REPO / ".dockerignore").read_text()
    lines = text.splitlines()
    assert all(pattern in lines for pattern in CREDENTIAL_PATTERNS)
    rules = DockerIgnore(lines)
    for name in CREDENTIAL_FILES:
        assert rules.excludes(f"examples/seed/{name}"), name
        assert rules.excludes(name), name
    assert not rules.excludes("examples/seed/environment.py")


@pytest.mark.parametrize("name", sorted(KEY_FORMS))
def test_a_private_key_in_any_form_refuses_the_build_with_exit_2_naming_the_file(tmp_path: Path, project: Path, name):
    (project / "data").mkdir()
    (project / "data" / name).write_bytes(KEY_FORMS[name]())
    done = flowrig_cli("build", str(project), "--tag", "seed:1", "--context-only", str(tmp_path / "ctx"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"project/data/{name}" in lines[0] and "allow_private_keys" in lines[0], done.stderr
    assert not (tmp_path / "ctx").exists()


def test_a_project_opts_in_to_a_private_key_by_name(tmp_path: Path, project: Path):
    (project / "keys").mkdir()
    (project / "keys" / "signer.der").write_bytes(KEY_FORMS["der-pkcs8.bin"]())
    (project / "keys" / "other.der").write_bytes(KEY_FORMS["der-pkcs8.bin"]())
    toml = project / project_defaults.PROJECT_FILE
    toml.write_text(toml.read_text().replace("[cluster]", '[build]\nallow_private_keys = ["keys/signer.der"]\n\n[cluster]'))
    with pytest.raises(BadInput, match="project/keys/other.der") as error:
        render_context(project)
    assert "signer.der" not in str(error.value)
    (project / "keys" / "other.der").unlink()
    context = render_context(project)
    assert "project/keys/signer.der" in context.files
    assert context.manifest["project"]["config"]["build"] == {"allow_private_keys": ["keys/signer.der"]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('allow_private_keys = ["missing.pem"]', "'missing.pem', which is not a file"),
        ('allow_private_keys = ["../outside.pem"]', "inside the project"),
        ('allow_private_keys = "keys/a.pem"', "'build.allow_private_keys' must be a list"),
        ("allow_keys = []", "unknown key 'build.allow_keys'"),
    ],
)
def test_bad_allow_private_keys_is_bad_input(project: Path, entry: str, message: str):
    toml = project / project_defaults.PROJECT_FILE
    toml.write_text(toml.read_text() + f"\n[build]\n{entry}\n")
    with pytest.raises(BadInput, match=re.escape(message)):
        render_context(project)


@pytest.mark.parametrize(
    "name, secret",
    [("PREFECT_API_AUTH_STRING", True), ("PGPASSWORD", True), ("DB_PASS", True), ("SSH_KEY", True),
     ("signingKey", True), ("aws_session_token", True), ("GITHUB_TOKEN", True),
     ("AUTHOR", False), ("TOKENIZERS_PARALLELISM", False), ("MONKEY", False), ("PATH", False),
     ("worker_dashboard_address", False)],
)
def test_one_rule_tells_secret_names_for_the_build_and_the_ecs_environment(name, secret):
    from flowrig.backends.aws.ecs.validate import check_user_environment
    from flowrig.errors import BadInput
    from flowrig.project.secret_rules import secret_looking

    assert secret_looking(name) is secret
    if name.isidentifier():
        try:
            check_user_environment({name: "v"}, {})
            refused = False
        except BadInput:
            refused = True
        assert refused is secret


# --- TLS modes: baked (a fresh CA per build) or per-run (no key in the image) --------------------


def test_per_run_contexts_carry_no_certificates_and_say_so():
    context = render_context(SEED, tls_mode="per-run")
    assert context.build_args["TLS_MODE"] == "per-run"
    assert context.manifest["tls"] == "per-run"
    assert not any(p.startswith("tls/") for p in context.files)
    assert not context.makes_its_own_ca


@pytest.mark.parametrize(("mode", "certs", "message"), [
    ("per-run", True, "drop --certs"),
    ("sometimes", False, "is not a TLS mode"),
])
def test_bad_tls_choices_are_bad_input(tmp_path: Path, mode, certs, message):
    with pytest.raises(BadInput, match=message):
        render_context(SEED, tls_mode=mode, tls_dir=certs_dir(tmp_path / "certs") if certs else None)


def test_only_a_build_that_makes_its_own_ca_gets_a_nonce(tmp_path: Path):
    own = render_context(SEED)
    given = render_context(SEED, tls_dir=certs_dir(tmp_path / "certs"))
    assert own.makes_its_own_ca and not given.makes_its_own_ca
    command = build_command(own, "t:1", tmp_path, buildkit=True, tls_nonce="abc")
    assert "TLS_NONCE=abc" in command and own.digest == render_context(SEED).digest
    assert not any(arg.startswith("TLS_NONCE") for arg in build_command(given, "t:1", tmp_path, buildkit=True))


@pytest.mark.parametrize(("mode", "nonce"), [("baked", True), ("per-run", False)])
def test_context_only_prints_a_command_that_makes_a_new_ca_each_time(tmp_path: Path, mode, nonce):
    out = tmp_path / "ctx"
    done = flowrig_cli("build", str(SEED), "--tag", "seed:1", "--tls", mode, "--context-only", str(out))
    assert done.returncode == 0, done.stderr
    assert f"TLS_MODE={mode}" in done.stdout
    assert ('TLS_NONCE="$(od -An -N16 -tx1 /dev/urandom' in done.stdout) is nonce


def bake(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "from flowrig.entrypoint import main; main()"
    return subprocess.run([sys.executable, "-c", code, "bake-tls", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
