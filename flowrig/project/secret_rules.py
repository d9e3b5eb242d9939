"""Secrets by value: where a project holds one, so that no image or container gets it.

An image is readable by anyone who can pull it, and a container's environment by
anyone who may inspect it (``docker inspect``, DescribeTaskDefinition, a VM's user
data). So the build refuses project files that hold a credential, and every run
refuses ``[cluster.options]`` values that carry one, each with the way to pass it
instead. What counts:

- URLs with credentials (``scheme://user:password@host``, or a token as the user name),
  wherever they are: requirements files and their includes, ``--index-url``,
  ``--extra-index-url``, ``--find-links``, ``pkg @ https://...``, ``pip.conf``,
  ``pip.ini``, ``uv.toml``, ``pyproject.toml``, ``.condarc``, any code or config;
- tokens of known shapes (:data:`TOKEN_SHAPES`: GitHub, GitLab, Slack, AWS, Google,
  Stripe, Prefect Cloud, PyPI, npm, Hugging Face, OpenAI, Anthropic, SendGrid,
  Databricks, JWTs, ``Authorization`` headers with a credential);
- credential file formats, whatever the file's name: AWS credentials
  (``aws_secret_access_key = ...``), ``.netrc`` (``machine ... password ...``), Docker
  config ``auths``, connection strings with a password (``Password=...;``,
  ``AccountKey=...``);
- in configuration files (TOML, INI, YAML, JSON, ``.env``, ``.properties``, files
  without a suffix, Prefect's ``profiles.toml``...), a literal value given to a name
  that says it is secret (``PREFECT_API_KEY = "..."``, ``password: ...``).

Placeholders are no secret: ``${VAR}``, ``<password>``, ``***``, ``changeme``, a
reference such as an ARN or a path. A finding that is no secret (a test fixture, an
example) is listed in ``flowrig.toml``: ``[build] allow_credentials`` takes files or
``file:line``, ``[build] allow_environment`` takes environment names of
``[cluster.options]``. Nothing is ever passed over silently.

This module and :mod:`flowrig.project.secret_scan` (the findings in files) run inside
the image build before flowrig is installed (``flowrig/builder/buildsteps.py`` loads
them by path), so they use the standard library only and never import flowrig. Messages
name files, lines and kinds, never a value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: File name of a flow project's configuration (``build_rules.PROJECT_FILE``).
PROJECT_FILE = "flowrig.toml"


class CredentialError(ValueError):
    """A credential by value where an image or a container would get it; one line."""


# --- names that say secret -------------------------------------------------------------

# Option and environment names that hold a credential: a word of the name (split on
# "_", "-", "." or a change to upper case) is one of these, or ends with one of the
# _SECRET_ENDINGS (PGPASSWORD). Whole words, so that AUTHOR or TOKENIZERS_PARALLELISM
# are not taken for secrets; KEY and AUTH alone are (SSH_KEY, PREFECT_API_AUTH_STRING),
# and so are PGPASS (libpq's password file) and PAT (a personal access token).
_SECRET_WORDS = frozenset(
    {"secret", "secrets", "password", "passwd", "passphrase", "pass", "pwd", "token", "tokens",
     "credential", "credentials", "apikey", "privatekey", "key", "keys", "auth", "pgpass", "pat"}
)
_SECRET_ENDINGS = ("password", "passwd", "secret", "token", "apikey")
_WORD_SPLIT = re.compile(r"[_\-.]+|(?<=[a-z])(?=[A-Z])")
#: The one option that may name secrets: it holds references (ARNs on ECS, host
#: variable names on docker), not values.
SECRET_REFERENCES_KEY = "secrets"
#: Options whose tables are environment variables (names -> values) of some backend.
ENVIRONMENT_KEYS = ("environment", "env_vars", "env")


def name_words(name: str) -> list[str]:
    return [word.lower() for word in _WORD_SPLIT.split(name) if word]


def secret_looking(name: str) -> bool:
    """Whether an option or environment variable name says it holds a credential."""
    return any(w in _SECRET_WORDS or w.endswith(_SECRET_ENDINGS) for w in name_words(name))


# --- values that are secrets ----------------------------------------------------------

#: Tokens of known shapes: (what, pattern). Each pattern starts with a literal, so that
#: a search skips ahead at memory speed. Shapes from the issuers' documentation.
TOKEN_SHAPES: tuple[tuple[str, re.Pattern[bytes]], ...] = tuple(
    (what, re.compile(pattern)) for what, pattern in (
        ("a GitHub token", rb"gh[pousr]_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
        ("a GitHub token", rb"github_pat_[A-Za-z0-9_]{40,}"),
        ("a GitLab token", rb"glpat-[A-Za-z0-9_\-]{20,}"),
        # Slack tokens carry the team's and the user's or bot's numeric ids ("xoxo-gossip" is prose).
        ("a Slack token", rb"xox[abposre]-[0-9]{6,}-[A-Za-z0-9\-]{8,}"),
        ("a Slack webhook", rb"hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,}"),
        ("a Google API key", rb"AIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"),
        ("a Stripe key", rb"k_(?<=[sr]k_)(?:live|test)_[0-9A-Za-z]{20,}"),
        ("a Stripe webhook secret", rb"whsec_[A-Za-z0-9]{24,}"),
        ("a Prefect Cloud API key", rb"pn[ub]_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
        ("a PyPI token", rb"pypi-AgE[A-Za-z0-9_\-]{50,}"),
        ("an npm token", rb"npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
        ("a Hugging Face token", rb"hf_[A-Za-z]{34}(?![A-Za-z0-9])"),
        ("an OpenAI API key", rb"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,}"),
        ("an Anthropic API key", rb"sk-ant-[a-z]+\d\d-[A-Za-z0-9_\-]{80,}"),
        ("a SendGrid API key", rb"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}"),
        ("a Databricks token", rb"dapi[0-9a-f]{32}(?![0-9a-f])"),
        ("a DigitalOcean token", rb"do[opr]_v1_[0-9a-f]{64}"),
        ("a JSON Web Token", rb"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}"),
        ("an Azure storage account key", rb"AccountKey=[A-Za-z0-9+/]{80,}={0,2}"),
    )
)
# An AWS access key id (long-term AKIA, temporary ASIA), and its secret: 40 characters
# of base64 (the pair is the credential; AWS's documentation examples are no secret).
# Each pattern starts with its literal, the look-behind after it: a pattern that starts
# with a look-behind is tried at every byte.
AWS_KEY_IDS = tuple(
    re.compile(prefix + rb"(?<![A-Z0-9]" + prefix + rb")[0-9A-Z]{16}(?![A-Z0-9])") for prefix in (b"AKIA", b"ASIA")
)
# A URL's user information: "://" then user[:password] then "@host".
URL_USERINFO = re.compile(rb"://([^\s/?#@\"'<>\\`]{1,512})@[A-Za-z0-9\[]")
# Connection strings with a password: "Server=...;User Id=...;Password=...;" and
# libpq's "host=... user=... password=...".
CONNECTION_PASSWORDS = tuple(
    re.compile(prefix + rb"[ \t]*=[ \t]*([^;\"'\s]{4,})")
    for prefix in (rb"assword", rb"ASSWORD", rb"wd(?<=[Pp]wd)", rb"PWD")
)

# Values that stand for a secret instead of being one.
# Short real passwords ("pw", "pass") are secrets all the same: only the words that
# documentation writes in a password's place are not.
_PLACEHOLDER_WORDS = frozenset(
    {"password", "secret", "changeme", "change-me", "redacted", "example", "none", "null", "nil", "true",
     "false", "required", "optional", "todo", "your-password", "your_password", "yourpassword"}
)
_PLACEHOLDER = re.compile(
    r"^(?:\$.*|\{.*\}|<.*>|%\(.*|\[.*\]|\*+|x+|X+|\.+|-+|_+|\d+|[A-Z][A-Z0-9_]*|"
    r"(?:arn|projects|op|vault|secretsmanager|ssm|env|file|keyring|sm|gcp|azure|aws|k8s|secret)[:/].*|"
    r"[/~.].*|!.*|&.*|@.*)$"
)
_TOKEN_LIKE_USER = re.compile(r"^[A-Za-z0-9_\-]{20,}$")


def is_placeholder(value: str) -> bool:
    text = value.strip().strip("\"'")
    return not text or text.lower() in _PLACEHOLDER_WORDS or bool(_PLACEHOLDER.match(text))


def userinfo_secret(userinfo: str, *, any_user: bool = False) -> str | None:
    """What the user information of a URL gives away, or None."""
    user, colon, password = userinfo.partition(":")
    if colon and password and not is_placeholder(password):
        return "a URL with a password"
    if any(shape.match(user.encode()) for _what, shape in TOKEN_SHAPES) or (
        _TOKEN_LIKE_USER.match(user) and any(c.isdigit() for c in user) and any(c.isalpha() for c in user)
    ):
        return "a URL with a token as its user name"
    if any_user and user and not is_placeholder(user):
        return "a URL with credentials"
    return None


def value_secret(value: str, name: str = "") -> str | None:
    """What makes ``value`` (of a variable or option called ``name``) a secret, or None.

    A URL with a password or a token in it, a token of a known shape, a connection
    string with a password, or a DSN (a ``*_DSN`` name) whose URL has a user.
    """
    data = value.encode("utf-8", "replace")
    for what, shape in TOKEN_SHAPES:
        if shape.search(data):
            return what
    if any(p.search(data) for p in AWS_KEY_IDS):
        return "an AWS access key id"  # no option needs one: even AWS's example is refused
    dsn = "dsn" in name_words(name)
    for match in URL_USERINFO.finditer(data):
        what = userinfo_secret(match.group(1).decode("utf-8", "replace"), any_user=dsn)
        if what:
            return what
    for pattern in CONNECTION_PASSWORDS:
        for match in pattern.finditer(data):
            if not is_placeholder(match.group(1).decode("utf-8", "replace")):
                return "a connection string with a password"
    return None


# --- [cluster.options]: names and values ------------------------------------------------


def credential_options(config: Mapping[str, Any]) -> list[str]:
    """Dotted keys under ``[cluster.options]`` that hold or look like credentials.

    A key counts when its name looks secret (:func:`secret_looking`), at any depth
    (an ``environment`` table, ``[{name, value}]`` lists of task arguments), or when its
    value carries a secret (:func:`value_secret`: a URL with a password, a DSN with a
    user, a token of a known shape, an AWS access key id). The ``secrets`` option
    (references, not values) is left alone, and so are the variables of an
    environment table that ``[build] allow_environment`` names.
    """
    cluster = config.get("cluster")
    options = cluster.get("options", {}) if isinstance(cluster, Mapping) else {}
    build = config.get("build")
    allowed = build.get("allow_environment", []) if isinstance(build, Mapping) else []
    allowed = {name for name in allowed if isinstance(name, str)} if isinstance(allowed, list) else set()
    found: list[str] = []

    def walk(value: object, where: str, name: str = "", environment: bool = False) -> None:
        if isinstance(value, Mapping):
            entry = value.get("name")
            if isinstance(entry, str) and "value" in value:
                # [{name, value}]: ECS's form of an environment, in task arguments.
                if entry not in allowed and (
                    secret_looking(entry) or value_secret(str(value["value"]), entry) is not None
                ):
                    found.append(f"{where}.{entry}")
                return
            for key, item in value.items():
                key = str(key)
                place = f"{where}.{key}"
                if where == "cluster.options" and key == SECRET_REFERENCES_KEY:
                    continue
                if environment and key in allowed:
                    continue
                if secret_looking(key):
                    found.append(place)
                else:
                    walk(item, place, key, key in ENVIRONMENT_KEYS)
        elif isinstance(value, list):
            for number, item in enumerate(value):
                walk(item, f"{where}[{number}]", name, environment)
        elif isinstance(value, str) and value_secret(value, name) is not None:
            found.append(where)

    if isinstance(options, Mapping):
        walk(options, "cluster.options")
    return found


#: Where each backend takes secrets, for the message that refuses one by value.
_SECRET_ROUTES = {
    "ecs": 'pass them as secrets = { NAME = "arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME" } '
           "(or an SSM parameter ARN), which ECS resolves inside the task",
    "docker": 'pass them as secrets = ["NAME"]: flowrig run reads NAME from its own environment and '
              "hands it to the run's containers over their stdin, never into their configuration",
    "local": "set them in the environment of flowrig run: the run's processes inherit it",
    "address": "set them in the environment of flowrig run and of the cluster's workers",
    "vm": "give the flow its secrets through your cloud's secret store or Prefect blocks "
          "(a VM's user data is readable by whoever may describe it)",
}
_ROUTE_OF = {"ecs": "ecs", "fargate": "ecs", "docker": "docker", "local": "local", "address": "address",
             "ec2": "vm", "azure": "vm", "gcp": "vm"}


def secrets_route(backend: object) -> str:
    """How a backend's runs get secrets without holding them by value."""
    route = _ROUTE_OF.get(str(backend))
    if route is None:
        return "give the flow its secrets at run time (Prefect blocks, your platform's secret store)"
    return _SECRET_ROUTES[route]


def check_no_credentials(config: Mapping[str, Any]) -> None:
    """Refuse credentials in ``[cluster.options]``: ``flowrig.toml`` goes into the image,
    and option values go into containers' configuration.

    Raises
    ------
    CredentialError
        Naming every such key (never a value), what to do instead on the project's
        backend, and the opt-out for an environment variable that is no secret.
    """
    found = credential_options(config)
    if not found:
        return
    cluster = config.get("cluster")
    backend = cluster.get("backend", "local") if isinstance(cluster, Mapping) else "local"
    keys = ", ".join(f"'{key}'" for key in found)
    aws = ("give the tasks an IAM role (execution_role_arn, task_role_arn) or let the runner use its "
           "own AWS credentials, and ") if any(_aws_option(key) for key in found) else ""
    raise CredentialError(
        f"{PROJECT_FILE}: {keys} in [cluster.options] hold or look like credentials, and "
        f"{PROJECT_FILE} is copied into the image and option values into the containers' configuration: "
        f"remove them; {aws}{secrets_route(backend)}; for an environment variable that is no secret, "
        "list its name under [build] allow_environment"
    )


def _aws_option(key: str) -> bool:
    return key.rpartition(".")[2].lower().startswith("aws_")
