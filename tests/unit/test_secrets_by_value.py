"""Secret values in a project, refused by value: opt-outs by file, line or directory, their bad
input, the ECS and VM environment checks agreeing, and the legacy builder's netrc. Builds
and runs: tests/e2e/docker/test_secrets_by_value.py.
"""

from __future__ import annotations

import random
import re
import shutil
import string
from pathlib import Path

import pytest

from flowrig.builder.context import render_context, write_context
from flowrig.errors import BadInput
from flowrig.project import load_project
from flowrig.project import secret_rules as rules
from flowrig.project.defaults import PROJECT_FILE

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed"

_RNG = random.Random(19)


def _chars(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(n))


def _token(prefix: str, body: str) -> str:
    return prefix + body


#: A password no placeholder rule knows; it must never reach a message.
PASSWORD = "Zq7" + _chars(9)
GITHUB = _token("gh" + "p_", _chars(36))
JWT = "eyJ" + _chars(20) + ".eyJ" + _chars(30) + "." + _chars(43)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy = tmp_path / "seed"
    shutil.copytree(SEED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_finding_that_is_no_secret_is_allowed_by_file_line_or_directory_and_nothing_else(project: Path):
    (project / "fixtures").mkdir()
    (project / "fixtures" / "a.yaml").write_text(f"password: {PASSWORD}\n")
    (project / "fixtures" / "b.yaml").write_text(f"password: {PASSWORD}\n")
    (project / "example.ini").write_text(f"[x]\npassword = {PASSWORD}\ntoken = {PASSWORD}\n")
    toml = project / PROJECT_FILE

    def allow(*entries: str) -> None:
        listed = ", ".join(f'"{entry}"' for entry in entries)
        toml.write_text(SEED.joinpath(PROJECT_FILE).read_text().replace(
            "[cluster]", f"[build]\nallow_credentials = [{listed}]\n\n[cluster]"))

    allow("fixtures/a.yaml", "example.ini:2")
    with pytest.raises(BadInput) as error:
        render_context(project)
    assert "project/fixtures/b.yaml:1" in str(error.value) and "project/example.ini:3" in str(error.value)
    assert "fixtures/a.yaml" not in str(error.value) and "example.ini:2" not in str(error.value)
    allow("fixtures/", "example.ini")
    context = render_context(project)
    assert context.manifest["project"]["config"]["build"]["allow_credentials"] == ["fixtures/", "example.ini"]
    write_context(context, project.parent / "ctx")  # the context's own check agrees


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('allow_credentials = ["missing.yaml"]', "'missing.yaml', which is not in the project"),
        ('allow_credentials = ["../x.yaml"]', "paths inside the project"),
        ('allow_credentials = ["flow.py:0"]', "paths inside the project"),
        ('allow_environment = ["NOT A NAME"]', "environment variable names"),
    ],
)
def test_bad_opt_outs_are_bad_input(project: Path, entry: str, message: str):
    toml = project / PROJECT_FILE
    toml.write_text(toml.read_text() + f"\n[build]\n{entry}\n")
    with pytest.raises(BadInput, match=re.escape(message)):
        load_project(project)


# --- [cluster.options] environment values -------------------------------------------------

#: name -> value of the review's environment, each a secret by value.
ENV_FORMS = {
    "DATABASE_URL": f"postgres://app:{PASSWORD}@db.example.com:5432/prod",
    "SENTRY_DSN": "https://" + _chars(32, "0123456789abcdef") + "@o1.ingest.sentry.io/42",
    "GITHUB_PAT": GITHUB,
    "PGPASS": PASSWORD,
    "ANALYTICS": JWT,
    "PG_OPTIONS": f"host=db user=app password={PASSWORD}",
}


@pytest.mark.parametrize("name, value", sorted(ENV_FORMS.items()))
def test_the_ecs_and_vm_environment_checks_refuse_the_same_values(name: str, value: str):
    """What a backend checks when it makes a task definition or user data (a sizing hook
    may have changed the options): the same rules, with the same opt-out."""
    from flowrig.backends.aws.ecs.validate import check_user_environment
    from flowrig.backends.vm.cloudinit import check_environment

    with pytest.raises(BadInput, match="secretsmanager"):
        check_user_environment({name: value}, {})
    with pytest.raises(BadInput, match="secret store"):
        check_environment({name: value})
    check_user_environment({name: value}, {}, frozenset({name}))
    check_environment({name: value}, frozenset({name}))


def test_value_rules_directly():
    assert rules.value_secret(ENV_FORMS["DATABASE_URL"], "DATABASE_URL") == "a URL with a password"
    # A DSN's user is its key; under a name that is no DSN a user name alone is no secret...
    assert rules.value_secret("https://abc@o1.ingest.sentry.io/1", "SENTRY_DSN") == "a URL with credentials"
    assert rules.value_secret("https://abc@o1.ingest.sentry.io/1", "HOMEPAGE") is None
    # ... unless it is a token.
    assert rules.value_secret(f"https://{GITHUB}@github.com/x", "REPO") is not None


# --- a private index's credentials: a build secret, never a file of the project ------------


def test_build_command_refuses_a_netrc_for_the_legacy_builder(tmp_path: Path):
    from flowrig.builder.build import build_command

    with pytest.raises(BadInput, match="--pip-netrc needs BuildKit"):
        build_command(render_context(SEED), "t:1", tmp_path, buildkit=False, pip_netrc="/x/netrc")


