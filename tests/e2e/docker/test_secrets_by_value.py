"""Secrets by value: refused by `flowrig build`, by the Dockerfile's own build step, and
by every run, each form with the file and line it is on and the way to pass it instead.

Tokens are made up here at run time (their prefix split from their body), so this file
holds none of the shapes it tests.

Cases that need none of these are in tests/unit/test_secrets_by_value.py.
"""

from __future__ import annotations

import random
import re
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowrig.builder.context import render_context
from flowrig.errors import BadInput
from flowrig.project import load_project
from flowrig.project.defaults import PROJECT_FILE
from tests.run_support import FLOWRIG
from tests.unit.test_secrets_by_value import ENV_FORMS, GITHUB, JWT, PASSWORD, SEED, _chars, _token

REPO = Path(__file__).resolve().parents[3]
BUILDSTEPS = REPO / "flowrig" / "builder" / "buildsteps.py"


AWS_ID = _token("AK" + "IA", _chars(16, string.ascii_uppercase + string.digits))
AWS_SECRET = _chars(35) + "/" + _chars(3) + "+"  # 40 characters, as AWS makes them
PREFECT_KEY = _token("pn" + "u_", _chars(36))

#: name -> (file, content, line of the secret, what the message names, whether pip's index).
FILE_FORMS: dict[str, tuple[str, str, int, str]] = {
    "extra-index-url": ("requirements.txt", f"pandas\n--extra-index-url https://build:{PASSWORD}@pypi.example.com/simple\n",
                        2, "a URL with a password"),
    "index-url": ("requirements.txt", f"-i https://build:{PASSWORD}@pypi.example.com/simple\nrich\n", 1,
                  "a URL with a password"),
    "find-links": ("requirements.txt", f"rich\n\n--find-links https://u:{PASSWORD}@files.example.com/wheels/\n", 3,
                   "a URL with a password"),
    "direct reference": ("requirements.txt", f"rich\nmylib @ https://u:{PASSWORD}@files.example.com/mylib-1.0-py3-none-any.whl\n",
                         2, "a URL with a password"),
    "vcs with a token": ("requirements.txt", f"git+https://{GITHUB}@github.com/acme/lib.git@v1#egg=lib\n", 1,
                         "a GitHub token"),
    "index with a token as user": ("requirements.txt", f"--extra-index-url https://{_chars(24)}:@pypi.fury.io/acme/\n",
                                   1, "a URL with a token as its user name"),
    "-r include": ("deps/common.txt", f"--extra-index-url https://u:{PASSWORD}@pypi.example.com/simple\n", 1,
                   "a URL with a password"),
    "-c include": ("deps/pins.txt", f"rich==13.0\n--index-url https://u:{PASSWORD}@pypi.example.com/simple\n", 2,
                   "a URL with a password"),
    "pip.conf": ("pip.conf", f"[global]\ntimeout = 60\nindex-url = https://alice:{PASSWORD}@nexus.example.com/simple\n", 3,
                 "a URL with a password"),
    "pip.ini": ("config/pip.ini", f"[global]\nextra-index-url = https://alice:{PASSWORD}@nexus.example.com/simple\n", 2,
                "a URL with a password"),
    "uv.toml": ("uv.toml", f'[[index]]\nname = "corp"\nurl = "https://u:{PASSWORD}@uv.example.com/simple"\n', 3,
                "a URL with a password"),
    "pyproject tool.uv": ("pyproject.toml", f'[project]\nname = "x"\n\n[tool.uv]\nindex-url = "https://u:{PASSWORD}@uv.example.com/simple"\n',
                          5, "a URL with a password"),
    ".condarc": (".condarc", f"channels:\n  - defaults\n  - https://conda:{PASSWORD}@conda.example.com/main\n", 3,
                 "a URL with a password"),
    "prefect profile (key of a known shape)": (".prefect/profiles.toml",
                                               f'active = "cloud"\n[profiles.cloud]\nPREFECT_API_KEY = "{PREFECT_KEY}"\n', 3,
                                               "a Prefect Cloud API key"),
    "prefect profile (any key)": (".prefect/profiles.toml",
                                  f'[profiles.local]\nPREFECT_API_URL = "http://x:4200/api"\nPREFECT_API_KEY = "{PASSWORD}"\n',
                                  3, "a value for PREFECT_API_KEY"),
    "aws credentials by name": ("aws-credentials", f"[default]\naws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n",
                                2, "an AWS access key id with its secret key"),
    "aws credentials format": ("settings/prod.ini", f"[default]\nregion = eu-west-1\naws_secret_access_key = {AWS_SECRET}\n", 3,
                               "an AWS secret (the AWS credentials format)"),
    "aws key pair in code": ("jobs/upload.py", f'ID = "{AWS_ID}"\nSECRET = "{AWS_SECRET}"\n', 1,
                             "an AWS access key id with its secret key"),
    "netrc format": ("hosts", f"machine pypi.example.com\n    login alice\n    password {PASSWORD}\n", 3,
                     "a password in the .netrc format"),
    "docker config auths": ("registry.json",
                            '{\n  "auths": {\n    "registry.example.com": {"auth": "' + _chars(24) + '=="}\n  }\n}\n', 3,
                            "a registry credential (Docker's config.json format)"),
    "github token": ("notebook.py", f'client = Github("{GITHUB}")\n', 1, "a GitHub token"),
    "github fine-grained token": ("run.sh", "export GH=" + _token("github" + "_pat_", _chars(82, string.ascii_letters + "_")) + "\n",
                                  1, "a GitHub token"),
    "slack token": ("alerts.py", "SLACK = '" + _token("xo" + "xb-", "123456789012-987654321098-" + _chars(24)) + "'\n",
                    1, "a Slack token"),
    "gitlab token": ("ci.md", "token: " + _token("gl" + "pat-", _chars(20)) + "\n", 1, "a GitLab token"),
    "stripe key": ("billing.js", "const k = '" + _token("sk" + "_live_", _chars(24)) + "';\n", 1, "a Stripe key"),
    "google api key": ("maps.py", "KEY = '" + _token("AI" + "za", _chars(35)) + "'\n", 1, "a Google API key"),
    "jwt bearer": ("request.http", f"GET /x\nAuthorization: Bearer {JWT}\n", 2, "a JSON Web Token"),
    "openai key": ("llm.py", "k = '" + _token("sk" + "-proj-", _chars(20) + "T3Blbk" + "FJ" + _chars(20)) + "'\n", 1,
                   "an OpenAI API key"),
    "hugging face token": ("hf.py", "tok = '" + _token("h" + "f_", _chars(34, string.ascii_letters)) + "'\n", 1,
                           "a Hugging Face token"),
    "connection string": ("db.cs", f'var c = "Server=db;User Id=app;Password={PASSWORD};";\n', 1,
                          "a connection string with a password"),
    "database url in yaml": ("config.yaml", f"db:\n  url: postgresql://app:{PASSWORD}@db.example.com/prod\n", 2,
                             "a URL with a password"),
    "password in yaml": ("config.yaml", f"service:\n  name: etl\n  password: {PASSWORD}\n", 3, "a value for password"),
    "secret in .env format": ("prod.env", f"LOG_LEVEL=info\nAPI_TOKEN={PASSWORD}\n", 2, "a value for API_TOKEN"),
    "utf-16 configuration": ("settings.ini", None, 2, "a value for password"),
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy = tmp_path / "seed"
    shutil.copytree(SEED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _content(name: str) -> bytes:
    path, text, _line, _what = FILE_FORMS[name]
    if text is None:  # saved as "Unicode" by an editor
        return f"[db]\npassword = {PASSWORD}\n".encode("utf-16")
    return text.encode()


def _add(project: Path, name: str) -> tuple[str, int, str]:
    path, _text, line, what = FILE_FORMS[name]
    target = project / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_content(name))
    if name == "-r include":
        (project / "requirements.txt").write_text("rich\n-r deps/common.txt\n")
    if name == "-c include":
        (project / "requirements.txt").write_text("rich\n-c deps/pins.txt\n")
    return path, line, what


def requirements_step(project: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's first build step, as `docker build` runs it (standard library only)."""
    return subprocess.run(
        [sys.executable, "-I", str(BUILDSTEPS), "requirements", "--pyproject", str(REPO / "pyproject.toml"),
         "--project", str(project), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("name", sorted(FILE_FORMS))
def test_each_form_is_refused_by_the_build_naming_file_and_line(tmp_path: Path, project: Path, name: str):
    path, line, what = _add(project, name)
    with pytest.raises(BadInput) as error:
        render_context(project)
    message = str(error.value)
    assert f"project/{path}:{line} ({what})" in message, message
    assert "allow_credentials" in message and PASSWORD not in message
    # The Dockerfile route refuses the same, before anything is installed.
    done = requirements_step(project, tmp_path / "out")
    assert done.returncode == 2, done.stdout + done.stderr
    [line_out] = done.stderr.strip().splitlines()
    assert line_out.startswith("flowrig-build: error: ") and f"{path}:{line} ({what})" in line_out, line_out
    assert PASSWORD not in done.stderr


def test_index_credentials_name_the_way_to_give_them_to_pip(tmp_path: Path, project: Path):
    _add(project, "extra-index-url")
    with pytest.raises(BadInput, match=re.escape("flowrig build --pip-netrc FILE")):
        render_context(project)
    done = requirements_step(project, tmp_path / "out")
    assert "--secret id=pip-netrc,src=FILE" in done.stderr, done.stderr


def test_the_command_line_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, project: Path):
    _add(project, "aws credentials by name")
    _add(project, "prefect profile (key of a known shape)")
    code = "from flowrig.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "build", str(project), "--tag", "seed:1", "--context-only",
                           str(tmp_path / "ctx")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "project/aws-credentials:2" in line and "project/.prefect/profiles.toml:3" in line, line
    assert AWS_SECRET not in line and PREFECT_KEY not in line
    assert not (tmp_path / "ctx").exists()


@pytest.mark.parametrize(
    "path, text",
    [
        ("docs/setup.md", "Set `DATABASE_URL=postgres://user:password@localhost/db` or `${DATABASE_URL}`.\n"),
        ("requirements.txt", "--extra-index-url https://${PIP_USER}:${PIP_PASSWORD}@pypi.example.com/simple\nrich\n"),
        ("config.yaml", "password: ${DB_PASSWORD}\npassword_file: /run/secrets/db\nsecret_name: prod/db\n"
                        "token_url: https://auth.example.com/token\napi_key_id: k-12345678\nsort_key: created_at_desc\n"),
        ("tokenizer_config.json", '{"eos_token": "</s>", "pad_token": "[PAD]", "max_token_length": 51200000}\n'),
        ("docs/aws.md", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
                        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"),
        ("clone.sh", "git clone ssh://git@github.com/acme/lib.git\n"),
        ("flow_helpers.py", 'password = os.environ["DB_PASSWORD"]\nconnect(password=get_password())\n'),
        ("data.csv", "id,token,amount\n1,abc,30\n"),
        ("notes.txt", "xoxo-gossip-girl-fans-forever and themachine learning password reset\n"),
    ],
    ids=["placeholders in prose", "variables in an index URL", "references and names", "tokenizer settings",
         "AWS's documented example", "git over ssh", "secrets read at run time", "a column named token", "prose"],
)
def test_look_alikes_pass(project: Path, path: str, text: str):
    (project / path).parent.mkdir(parents=True, exist_ok=True)
    (project / path).write_text(text)
    render_context(project)


# --- [cluster.options] environment values -------------------------------------------------

ROUTES = {
    "local": "environment of flowrig run",
    "docker": 'secrets = ["NAME"]',
    "ecs": "arn:aws:secretsmanager",
    "fargate": "arn:aws:secretsmanager",
    "ec2": "secret store",
}


def _with_environment(project: Path, backend: str, environment: dict[str, str], extra: str = "") -> None:
    table = ", ".join(f'{name} = "{value}"' for name, value in environment.items())
    key = "env_vars" if backend == "ec2" else "environment"
    text = SEED.joinpath(PROJECT_FILE).read_text().replace('backend = "local"', f'backend = "{backend}"')
    (project / PROJECT_FILE).write_text(f"{text}{extra}\n[cluster.options]\n{key} = {{ {table} }}\n")


@pytest.mark.parametrize("name", sorted(ENV_FORMS))
@pytest.mark.parametrize("backend", sorted(ROUTES))
def test_environment_values_that_carry_a_secret_are_refused_with_the_backends_way(
    tmp_path: Path, project: Path, backend: str, name: str
):
    _with_environment(project, backend, {"LOG_LEVEL": "info", name: ENV_FORMS[name]})
    key = "env_vars" if backend == "ec2" else "environment"
    for check in (load_project, render_context):  # every run, and the build
        with pytest.raises(BadInput) as error:
            check(project)
        message = str(error.value)
        assert f"'cluster.options.{key}.{name}'" in message and "LOG_LEVEL" not in message, message
        assert ROUTES[backend] in message and "allow_environment" in message, message
        assert ENV_FORMS[name] not in message and PASSWORD not in message
    done = requirements_step(project, tmp_path / "out")
    assert done.returncode == 2 and f"'cluster.options.{key}.{name}'" in done.stderr, done.stderr


def test_an_environment_value_that_is_no_secret_is_allowed_by_name(project: Path):
    _with_environment(project, "docker", {"SENTRY_DSN": ENV_FORMS["SENTRY_DSN"], "PGPASS": PASSWORD},
                      extra='\n[build]\nallow_environment = ["SENTRY_DSN"]\n')
    with pytest.raises(BadInput) as error:
        load_project(project)
    assert "PGPASS" in str(error.value) and "SENTRY_DSN" not in str(error.value)
    _with_environment(project, "docker", {"SENTRY_DSN": ENV_FORMS["SENTRY_DSN"]},
                      extra='\n[build]\nallow_environment = ["SENTRY_DSN"]\n')
    load_project(project)


def test_plain_environment_values_pass(project: Path):
    _with_environment(project, "docker", {"API_URL": "https://api.example.com/v1", "MODE": "batch",
                                          "GIT_REPO": "ssh://git@github.com/acme/x.git", "REPLICAS": "3"})
    load_project(project)


# --- a private index's credentials: a build secret, never a file of the project ------------


def test_pip_netrc_is_a_build_secret_of_the_project_install_only(tmp_path: Path):
    from flowrig.builder.build import build_command
    from flowrig.builder.dockerfile import with_pip_netrc
    from tests.unit.test_builder import instructions, stages

    context = render_context(SEED)
    command = build_command(context, "t:1", tmp_path, buildkit=True, pip_netrc="/x/netrc")
    assert command[command.index("--secret") + 1] == "id=pip-netrc,src=/x/netrc"
    # The repository's Dockerfile names the secret's path but mounts nothing (the legacy
    # builder reads it too); a build given a .netrc mounts it on that one step.
    plain = [i for name in ("deps", "build") for i in stages(context.dockerfile)[name]]
    assert not any("--mount" in rest for word, rest in plain if word == "RUN")
    with_netrc = stages(with_pip_netrc(context.dockerfile))
    build_stage = with_netrc["deps"] + with_netrc["build"]
    runs = [rest for word, rest in build_stage if word == "RUN" and "buildsteps.py install" in rest]
    assert len(runs) == 2
    # Only the project's requirements see it; flowrig's own come from the public index.
    assert "id=pip-netrc" not in runs[0] and "--pip-netrc" not in runs[0]
    assert "--mount=type=secret,id=pip-netrc" in runs[1] and "--pip-netrc /run/secrets/pip-netrc" in runs[1]
    assert [rest for word, rest in build_stage if word == "RUN" and "--mount" in rest] == [runs[1]]
    assert not any("netrc" in rest for word, rest in instructions(context.dockerfile) if word in ("COPY", "ARG", "ENV"))


def test_a_dockerfile_whose_netrc_step_is_gone_is_not_built_without_the_secret():
    from flowrig.builder.dockerfile import with_pip_netrc
    from flowrig.errors import InfrastructureError

    text = render_context(SEED).dockerfile
    with pytest.raises(InfrastructureError, match="0 install steps for a .netrc"):
        with_pip_netrc(text.replace("--pip-netrc /run/secrets/pip-netrc", ""))


def test_context_only_with_a_netrc_mounts_it_and_prints_a_buildkit_command(tmp_path: Path):
    import shlex

    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine pypi.example.com login u password {PASSWORD}\n")
    code = "from flowrig.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "build", str(SEED), "--tag", "seed:1", "--context-only",
                           str(tmp_path / "ctx"), "--pip-netrc", str(netrc)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout.strip().replace('"$(od -An -N16 -tx1 /dev/urandom | tr -d \' \\n\')"', "N"))
    assert words[0] == "DOCKER_BUILDKIT=1" and words[1:3] == ["docker", "build"]
    assert words[words.index("--secret") + 1] == f"id=pip-netrc,src={netrc.resolve()}"
    from tests.unit.test_builder import instructions

    written = instructions((tmp_path / "ctx" / "Dockerfile").read_text())
    mounted = [rest for word, rest in written if word == "RUN" and "--mount" in rest]
    assert len(mounted) == 1 and mounted[0].startswith("--mount=type=secret,id=pip-netrc ")
    assert "buildsteps.py install" in mounted[0] and "project.txt" in mounted[0]
    # The file is named, never copied: its text is nowhere in the context.
    for path in (tmp_path / "ctx").rglob("*"):
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in done.stdout + done.stderr


def test_pip_netrc_needs_buildkit_and_an_existing_file(tmp_path: Path, monkeypatch):
    import importlib

    build_module = importlib.import_module("flowrig.builder.build")  # the package exports build(), the function
    netrc = tmp_path / "netrc"
    with pytest.raises(BadInput, match="is not a file"):
        build_module.build(render_context(SEED), "t:1", pip_netrc=netrc)
    netrc.write_text("machine pypi.example.com login u password p\n")
    monkeypatch.setattr(build_module, "detect_client", lambda: build_module.DockerClient("docker", buildkit=False))
    with pytest.raises(BadInput, match="--pip-netrc needs BuildKit"):
        build_module.build(render_context(SEED), "t:1", pip_netrc=netrc)


def test_pip_takes_the_index_credentials_from_the_netrc_the_install_step_names(tmp_path: Path):
    """Debian's pip (the one the image build runs) against an index that wants basic auth."""
    import base64
    import http.server
    import threading
    import zipfile

    from flowrig.builder import buildsteps_install

    pip = shutil.which("pip3", path="/usr/bin") and "/usr/bin/python3"
    if pip is None or subprocess.run([pip, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no Debian pip on this machine")
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo/__init__.py", "")
        archive.writestr("demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
        archive.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("demo-1.0.dist-info/RECORD", "")
    expected = "Basic " + base64.b64encode(f"builder:{PASSWORD}".encode()).decode()
    seen: list[str | None] = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="index"')
                self.end_headers()
                return
            body = (wheel.read_bytes() if self.path.endswith(".whl")
                    else f'<a href="/files/{wheel.name}">{wheel.name}</a>'.encode())
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream" if self.path.endswith(".whl") else "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    netrc = tmp_path / "pip-netrc"
    netrc.write_text(f"machine 127.0.0.1\nlogin builder\npassword {PASSWORD}\n")
    netrc.chmod(0o600)
    try:
        env = buildsteps_install._pip_env([], [str(tmp_path / "missing"), str(netrc)])
        assert env["NETRC"] == str(netrc)
        done = subprocess.run(
            [pip, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--dest", str(tmp_path / "out"),
             "--index-url", f"http://127.0.0.1:{server.server_port}/simple/", "demo"],
            env={**env, "PIP_CONFIG_FILE": "/dev/null", "HOME": str(tmp_path)}, capture_output=True, text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / "out" / wheel.name).is_file() and expected in seen
        assert PASSWORD not in done.stdout + done.stderr
        # Without the secret, the same install is refused by the index: nothing else carried it.
        done = subprocess.run(
            [pip, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--dest", str(tmp_path / "out2"),
             "--index-url", f"http://127.0.0.1:{server.server_port}/simple/", "demo"],
            env={**buildsteps_install._pip_env([], []), "PIP_CONFIG_FILE": "/dev/null", "HOME": str(tmp_path)},
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode != 0
    finally:
        server.shutdown()


# --- with an engine: the Dockerfile route, and the docker backend's secrets -------------------


@pytest.mark.docker
def test_a_plain_docker_build_of_the_repository_refuses_a_project_with_a_secret(docker_client, tmp_path: Path):
    """The root Dockerfile's requirements stage runs the same rules before anything is installed."""
    import os

    from tests.docker_support import test_base_image

    context = tmp_path / "repo"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(REPO / "flowrig", context / "flowrig", ignore=shutil.ignore_patterns("__pycache__"))
    project = context / "examples" / "leaky"
    shutil.copytree(SEED, project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "requirements.txt").write_text(FILE_FORMS["extra-index-url"][1])
    done = subprocess.run(
        ["/usr/bin/docker", "build", "--progress", "plain", "--target", "requirements",
         "--build-arg", f"BASE_IMAGE={test_base_image()}", "--build-arg", "PROJECT=examples/leaky", str(context)],
        env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode != 0, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "flowrig-build: error: " in line]
    assert errors and "requirements.txt:2 (a URL with a password)" in errors[0], done.stderr[-3000:]
    assert "--secret id=pip-netrc,src=FILE" in errors[0]


@pytest.mark.docker
def test_a_buildkit_build_given_a_netrc_mounts_it_on_the_project_install_and_keeps_it_out_of_the_image(
    docker_client, tmp_path: Path, capfd
):
    """The root Dockerfile with the mount added builds on this engine's BuildKit (no
    syntax line), the project's install step sees the file, and no layer holds it."""
    from flowrig.builder import buildsteps_install
    from flowrig.builder.build import build
    from tests.docker_support import test_base_image, test_image_tag, test_pip_ca

    canary = "netrc-canary-" + "".join(random.choices(string.ascii_lowercase, k=16))
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine pypi.invalid login builder password {canary}\n")
    netrc.chmod(0o600)
    tag = test_image_tag("netrc")
    project = tmp_path / "project"
    shutil.copytree(SEED, project, ignore=shutil.ignore_patterns("__pycache__"))
    # A step with nothing to install reads no .netrc; a requirement no earlier build had
    # keeps the step out of BuildKit's cache, so it runs and prints what it got.
    (project / "requirements.txt").write_text(f"rich!=0.0.{random.randrange(10**9)}\n")
    context = render_context(project, base_image=test_base_image(), tls_mode="per-run")
    try:
        result = build(context, tag, test_pip_ca(), pip_netrc=netrc)
        log = capfd.readouterr().err
        assert result.buildkit
        assert f"{buildsteps_install.NETRC_SEEN}/run/secrets/pip-netrc" in log, log[-3000:]
        assert log.count(buildsteps_install.NETRC_SEEN) == 1  # flowrig's own install does not get it
        assert canary not in log
        saved = subprocess.run(["/usr/bin/docker", "save", tag], capture_output=True, timeout=600)
        assert saved.returncode == 0 and len(saved.stdout) > 10_000_000
        assert canary.encode() not in saved.stdout
    finally:
        subprocess.run(["/usr/bin/docker", "rmi", tag], capture_output=True, timeout=120)


SECRETS_FLOW = '''
import os
import time

from prefect import flow, task


@task
def on_a_worker() -> dict:
    return {"named": os.environ.get("DATABASE_URL"), "unnamed": os.environ.get("HOST_ONLY_SECRET")}


@flow
def main(nap: float = 0.0) -> dict:
    seen = on_a_worker.submit().result()
    time.sleep(nap)  # the test looks at the containers meanwhile
    return {"worker": seen, "runner": os.environ.get("DATABASE_URL"), "runner_unnamed": os.environ.get("HOST_ONLY_SECRET")}
'''


@pytest.fixture(scope="module")
def secrets_project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("secrets-route")
    (project / "flow.py").write_text(SECRETS_FLOW)
    (project / PROJECT_FILE).write_text(
        'flow = "flow.py:main"\n\n[cluster]\nbackend = "docker"\nn_workers = 1\n\n'
        '[cluster.options]\nsecrets = ["DATABASE_URL"]\n'
    )
    return project


@pytest.mark.docker
def test_docker_secrets_reach_the_runner_and_workers_but_no_container_configuration(
    docker_client, seed_image, secrets_project
):
    import json
    import uuid

    from flowrig.containers import engine
    from tests.docker_support import derived_image, docker_run_env

    database_url = f"postgres://app:{PASSWORD}@db.example.com/prod"
    run_id = "k" + uuid.uuid4().hex[:9]
    env = docker_run_env(run_id, DATABASE_URL=database_url, HOST_ONLY_SECRET="not-" + PASSWORD)
    with derived_image(docker_client, seed_image, secrets_project, "flowrig-secrets-route") as image:
        run = subprocess.Popen(
            [*FLOWRIG, "run", str(secrets_project), "--backend", "docker", "--image", image,
             "--param", "nap=12", "--output", "json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                containers = [c for c in engine.run_containers(docker_client, run_id) if c.status == "running"]
                if {"runner", "scheduler", "worker"} <= {c.labels.get("flowrig.role") for c in containers}:
                    break
                assert time.monotonic() < deadline and run.poll() is None, run.communicate()[1][-3000:]
                time.sleep(0.5)
            inspected = {c.labels["flowrig.role"]: docker_client.api.inspect_container(c.id) for c in containers}
            scheduler = next(c for c in containers if c.labels["flowrig.role"] == "scheduler")
            scheduler_env = scheduler.exec_run(["sh", "-c", "cat /proc/[0-9]*/environ"]).output
            stdout, stderr = run.communicate(timeout=240)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
            engine.remove_run(docker_client, run_id)
    assert run.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])["result"]
    assert result["worker"]["named"] == database_url and result["runner"] == database_url
    # A variable the project does not name stays on the host.
    assert result["worker"]["unnamed"] is None and result["runner_unnamed"] is None
    assert PASSWORD not in json.dumps(inspected), "a secret is in a container's configuration"
    assert PASSWORD.encode() not in scheduler_env, "the scheduler got a secret it does not need"
    assert PASSWORD not in stderr


@pytest.mark.docker
def test_a_docker_secret_missing_from_the_hosts_environment_is_bad_input(docker_client, seed_image, secrets_project):
    from tests.docker_support import docker_run_env

    env = docker_run_env("m" + _chars(9, string.ascii_lowercase + string.digits))
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [*FLOWRIG, "run", str(secrets_project), "--backend", "docker", "--image", seed_image],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "DATABASE_URL" in line and "export" in line
