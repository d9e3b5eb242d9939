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

This module runs inside the image build before flowrig is installed
(``flowrig/builder/buildsteps.py`` loads it by path), so it uses the standard library
only and never imports flowrig. Messages name files, lines and kinds, never a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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


def _words(name: str) -> list[str]:
    return [word.lower() for word in _WORD_SPLIT.split(name) if word]


def secret_looking(name: str) -> bool:
    """Whether an option or environment variable name says it holds a credential."""
    return any(w in _SECRET_WORDS or w.endswith(_SECRET_ENDINGS) for w in _words(name))


# In files, bare KEY or AUTH are too common to mean a secret (a sort key, an auth
# method): only these words, or names ending like an API or private key, do.
_ASSIGNED_WORDS = frozenset(
    {"password", "passwd", "passphrase", "pwd", "secret", "token", "credential", "credentials",
     "apikey", "privatekey", "pgpass", "pgpassword"}
)
_ASSIGNED_ENDINGS = ("apikey", "accesskey", "secretkey", "privatekey", "signingkey", "masterkey",
                     "authkey", "clientsecret", "authstring", "password", "passwd", "token", "secret")
# A name whose last word says it holds something else (secret_name, token_url,
# password_file, api_key_id): not a secret itself.
_NOT_SECRET_TAILS = frozenset(
    {"name", "names", "id", "ids", "arn", "path", "file", "files", "dir", "env", "var", "ref", "type",
     "length", "len", "limit", "limits", "count", "ttl", "expiry", "expires", "expiration", "header",
     "field", "prefix", "suffix", "url", "uri", "endpoint", "mode", "enabled", "required", "source",
     "kind", "format", "version", "policy", "location", "scope", "scopes", "size", "timeout", "store",
     "provider", "backend", "manager", "class", "method", "template", "pattern", "regex", "command",
     "cmd", "hash", "algorithm", "rotation", "min", "max", "label", "description", "help", "key"}
)


def _assigned_secret_name(name: str) -> bool:
    """Whether a name given a value in a configuration file says the value is secret."""
    words = _words(name)
    joined = "".join(words)
    if not words or (words[-1] in _NOT_SECRET_TAILS and not joined.endswith(_ASSIGNED_ENDINGS)):
        return False
    return any(w in _ASSIGNED_WORDS for w in words) or joined.endswith(_ASSIGNED_ENDINGS)


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
_AWS_KEY_IDS = tuple(
    re.compile(prefix + rb"(?<![A-Z0-9]" + prefix + rb")[0-9A-Z]{16}(?![A-Z0-9])") for prefix in (b"AKIA", b"ASIA")
)
_AWS_SECRET = re.compile(rb"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_EXAMPLES = (b"AKIAIOSFODNN7EXAMPLE", b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
# The AWS credentials file format (also in .env, YAML or JSON): its secret keys, in
# the credentials file's case and the environment's.
_AWS_SECRET_KEYS = tuple(
    re.compile(prefix + rb"[\"']?[ \t]*[=:][ \t]*[\"']?([A-Za-z0-9/+=]{16,})")
    for prefix in (rb"aws_(?:secret_access_key|session_token)", rb"AWS_(?:SECRET_ACCESS_KEY|SESSION_TOKEN)")
)
# An Authorization header holding its credential.
_AUTH_HEADER = re.compile(
    rb"uthorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:Bearer|Basic|Token|token|bearer|basic)[ \t]+[A-Za-z0-9._~+/=\-]{16,}"
)
# A URL's user information: "://" then user[:password] then "@host".
_URL_USERINFO = re.compile(rb"://([^\s/?#@\"'<>\\`]{1,512})@[A-Za-z0-9\[]")
# .netrc: "machine HOST ... password VALUE" (tokens may be on separate lines).
_NETRC_MACHINE = re.compile(rb"machine[ \t]+[^\s]+")
_NETRC_PASSWORD = re.compile(rb"password[ \t]+([^\s]+)")
# Docker's config.json: registry credentials under "auths", or identity tokens.
_DOCKER_AUTH = re.compile(rb"\"(?:auth|identitytoken|registrytoken)\"[ \t]*:[ \t]*\"([A-Za-z0-9+/=._\-]{8,})\"")
# Connection strings with a password: "Server=...;User Id=...;Password=...;" and
# libpq's "host=... user=... password=...".
_CONNECTION_PASSWORDS = tuple(
    re.compile(prefix + rb"[ \t]*=[ \t]*([^;\"'\s]{4,})")
    for prefix in (rb"assword", rb"ASSWORD", rb"wd(?<=[Pp]wd)", rb"PWD")
)
_CONNECTION_CONTEXT = re.compile(rb";|\b(?:host|server|user|uid|dbname|Data Source|Host|Server|User)[ \t]*=")
# "name: value" and "name = value" lines of configuration formats.
_ASSIGNMENT = re.compile(
    rb"^[ \t]*(?:export[ \t]+|-[ \t]+)?[\"']?([A-Za-z_][A-Za-z0-9_.\-]{0,120})[\"']?[ \t]*[:=][ \t]*"
    rb"(?:\"([^\"\n]*)\"|'([^'\n]*)'|([^\s\"'#;,{}\[\]][^\s#;,]*))",
    re.MULTILINE,
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


def _placeholder(value: str) -> bool:
    text = value.strip().strip("\"'")
    return not text or text.lower() in _PLACEHOLDER_WORDS or bool(_PLACEHOLDER.match(text))


def _userinfo_secret(userinfo: str, *, any_user: bool = False) -> str | None:
    """What the user information of a URL gives away, or None."""
    user, colon, password = userinfo.partition(":")
    if colon and password and not _placeholder(password):
        return "a URL with a password"
    if any(shape.match(user.encode()) for _what, shape in TOKEN_SHAPES) or (
        _TOKEN_LIKE_USER.match(user) and any(c.isdigit() for c in user) and any(c.isalpha() for c in user)
    ):
        return "a URL with a token as its user name"
    if any_user and user and not _placeholder(user):
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
    if any(p.search(data) for p in _AWS_KEY_IDS):
        return "an AWS access key id"  # no option needs one: even AWS's example is refused
    dsn = "dsn" in _words(name)
    for match in _URL_USERINFO.finditer(data):
        what = _userinfo_secret(match.group(1).decode("utf-8", "replace"), any_user=dsn)
        if what:
            return what
    for pattern in _CONNECTION_PASSWORDS:
        for match in pattern.finditer(data):
            if not _placeholder(match.group(1).decode("utf-8", "replace")):
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


# --- project files ------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A credential by value in a project file.

    Attributes
    ----------
    path
        The file, relative to the project (POSIX).
    line
        Its line (1-based).
    what
        What was found ("a URL with a password", "a GitHub token"...), never the value.
    index
        Whether it is a package index's credential (a requirements file, pip's, uv's
        or conda's configuration), which the build takes from ``--pip-netrc`` instead.
    """

    path: str
    line: int
    what: str
    index: bool = False

    @property
    def place(self) -> str:
        return f"{self.path}:{self.line}"


#: Suffixes of code and prose: their "name = value" lines are code, not configuration,
#: so only tokens, URLs and credential formats are looked for in them.
_CODE_SUFFIXES = frozenset(
    {".py", ".pyi", ".pyx", ".ipynb", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".go", ".java", ".kt",
     ".scala", ".rb", ".rs", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".php", ".pl", ".sh", ".bash",
     ".zsh", ".ps1", ".r", ".jl", ".lua", ".swift", ".sql", ".md", ".rst", ".html", ".htm", ".css",
     ".tex", ".svg", ".xml", ".csv", ".tsv"}
)
#: Files whose credentials are a package index's (pip, uv, conda, Poetry).
_INDEX_NAMES = frozenset({"pip.conf", "pip.ini", "uv.toml", ".condarc", "condarc", "pyproject.toml",
                          "poetry.toml", "auth.toml", "pdm.toml"})
# A requirements line that names where pip gets packages: an index, a link, a direct
# reference ("pkg @ https://..."), a VCS URL.
_PIP_OPTION = re.compile(
    rb"^\s*(?:-i|--index-url|--extra-index-url|-f|--find-links|--trusted-host)\b|\s@\s|^\s*(?:git|hg|svn|bzr)\+"
)
#: Bytes read at a time; a match never spans more than :data:`_OVERLAP` bytes.
_CHUNK = 8 * 1024 * 1024
_OVERLAP = 4096
_SNIFF = 8192


def _is_index_file(path: str, requirements: frozenset[str]) -> bool:
    name = path.rpartition("/")[2].lower()
    return path in requirements or name in _INDEX_NAMES or (name.startswith("requirements") and name.endswith(".txt"))


def findings_in_bytes(data: bytes, path: str, requirements: frozenset[str] = frozenset()) -> list[Finding]:
    """Every credential by value in the content ``data`` of the project file ``path``.

    Parameters
    ----------
    data
        The file's bytes (UTF-8, Latin-1, UTF-16 with or without a byte order mark;
        binary files are searched for tokens and URLs only).
    path
        The file relative to the project, for the findings and for its kind (a
        configuration format, code, a package index's file).
    requirements
        Files that pip reads as requirements (the project's and its includes).
    """
    import io

    return list(_findings(io.BytesIO(data), path, requirements))


def findings_in_file(root: Path, path: str, requirements: frozenset[str] = frozenset()) -> list[Finding]:
    """:func:`findings_in_bytes` for ``root / path``, read in chunks (any size)."""
    try:
        handle = open(root / path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return []  # unreadable: `docker build` cannot copy it either
    with handle:
        return list(_findings(handle, path, requirements))


def _findings(stream: BinaryIO, path: str, requirements: frozenset[str]) -> Iterator[Finding]:
    head = stream.read(_SNIFF)
    utf16 = _utf16_codec(head)
    binary = utf16 is None and b"\x00" in head
    suffix = os.path.splitext(path.rpartition("/")[2])[1].lower()
    config = not binary and suffix not in _CODE_SUFFIXES
    index = _is_index_file(path, requirements)
    seen: set[int] = set()
    text = _decoded(stream, head, utf16)
    line_base = 1
    tail = b""
    while True:
        chunk = next(text, None)
        if chunk is None and not tail:
            return
        data = tail + (chunk or b"")
        last = chunk is None
        # Matches must start in the first part; the overlap is scanned again next time.
        limit = len(data) if last else max(len(data) - _OVERLAP, 0)
        # One finding per line: the most specific, an index's when any is.
        by_line: dict[int, tuple[int, str, bool]] = {}
        for offset, rank, what, is_index in sorted(_matches(data, limit, config=config, binary=binary, index=index)):
            line = line_base + data.count(b"\n", 0, offset)
            best = by_line.get(line, (rank, what, False))
            by_line[line] = (*min(best[:2], (rank, what)), best[2] or is_index)
        for line, (_rank, what, is_index) in sorted(by_line.items()):
            if line not in seen:
                seen.add(line)
                yield Finding(path, line, what, is_index)
        if last:
            return
        line_base += data.count(b"\n", 0, limit)
        tail = data[limit:]


def _utf16_codec(head: bytes) -> str | None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    sample = head[:4096]
    if len(sample) >= 64:
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        half = len(sample) // 2
        if odd >= 0.9 * half and even <= 0.1 * half:
            return "utf-16-le"
        if even >= 0.9 * half and odd <= 0.1 * half:
            return "utf-16-be"
    return None


def _decoded(stream: BinaryIO, head: bytes, utf16: str | None) -> Iterator[bytes]:
    """The stream's text in chunks, as UTF-8 when it was UTF-16."""
    import codecs

    decoder = codecs.getincrementaldecoder(utf16)("replace") if utf16 else None
    data = head
    while True:
        more = stream.read(_CHUNK)
        data += more
        if decoder is not None:
            yield decoder.decode(data, final=not more).encode("utf-8", "replace")
        elif data:
            yield data
        if not more:
            return
        data = b""


# How specific a finding is: of several on one line, the message names the most
# specific (a token's issuer before "a URL with a password", before "a value for X").
_TOKEN, _FORMAT, _CONTEXT, _NAME = range(4)


def _matches(
    data: bytes, limit: int, *, config: bool, binary: bool, index: bool
) -> Iterator[tuple[int, int, str, bool]]:
    """(offset, rank, what, is an index credential) of every finding starting before ``limit``."""
    for what, shape in TOKEN_SHAPES:
        for match in shape.finditer(data, 0, len(data)):
            if match.start() < limit:
                yield match.start(), _TOKEN, what, False
    yield from _aws_pairs(data, limit)
    for match in _URL_USERINFO.finditer(data):
        if match.start() >= limit:
            break
        what = _userinfo_secret(match.group(1).decode("utf-8", "replace"))
        if what:
            yield match.start(), _FORMAT, what, index or bool(_PIP_OPTION.search(_line_at(data, match.start())))
    if binary:
        return
    for pattern in _AWS_SECRET_KEYS:
        for match in pattern.finditer(data, 0, len(data)):
            if match.start() < limit and match.group(1) not in _AWS_EXAMPLES:
                yield match.start(), _FORMAT, "an AWS secret (the AWS credentials format)", False
    for match in _AUTH_HEADER.finditer(data):
        if match.start() < limit:
            yield match.start(), _CONTEXT, "an Authorization header with a credential", False
    if any(_netrc_token(data, m.start()) for m in _NETRC_MACHINE.finditer(data)):
        for match in _NETRC_PASSWORD.finditer(data):
            value = match.group(1).decode("utf-8", "replace")
            if match.start() < limit and _netrc_token(data, match.start()) and not _placeholder(value):
                yield match.start(), _FORMAT, "a password in the .netrc format", index
    if b'"auths"' in data or b'"identitytoken"' in data:
        for match in _DOCKER_AUTH.finditer(data):
            if match.start() < limit:
                yield match.start(), _FORMAT, "a registry credential (Docker's config.json format)", False
    for pattern in _CONNECTION_PASSWORDS:
        for match in pattern.finditer(data, 0, len(data)):
            if match.start() >= limit:
                break
            line = _line_at(data, match.start())
            if _CONNECTION_CONTEXT.search(line) and not _placeholder(match.group(1).decode("utf-8", "replace")):
                yield match.start(), _CONTEXT, "a connection string with a password", False
    if config:
        for match in _ASSIGNMENT.finditer(data, 0, limit):
            name = match.group(1).decode("ascii", "replace")
            value = next(group for group in match.groups()[1:] if group is not None).decode("utf-8", "replace")
            if _assigned_secret_name(name) and len(value) >= 8 and not _placeholder(value) and " " not in value:
                yield match.start(), _NAME, f"a value for {name}", index


def _line_at(data: bytes, offset: int) -> bytes:
    """The line of ``data`` that holds ``offset``."""
    end = data.find(b"\n", offset)
    return data[data.rfind(b"\n", 0, offset) + 1 : end if end != -1 else len(data)]


def _netrc_token(data: bytes, offset: int) -> bool:
    """Whether ``offset`` starts a token of the .netrc format (at a line's or a blank's end)."""
    return offset == 0 or data[offset - 1 : offset] in (b" ", b"\t", b"\n", b"\r")


def _aws_pairs(data: bytes, limit: int) -> Iterator[tuple[int, int, str, bool]]:
    """AWS access key ids that come with a secret key in the same text."""
    ids = [m for p in _AWS_KEY_IDS for m in p.finditer(data)
           if m.start() < limit and m.group(0) not in _AWS_EXAMPLES]
    if not ids:
        return
    secrets = [m for m in _AWS_SECRET.finditer(data) if m.group(0) not in _AWS_EXAMPLES
               and any(c in m.group(0) for c in b"/+0123456789") and not m.group(0).isdigit()]
    for key_id in ids:
        if secrets:
            yield key_id.start(), _TOKEN, "an AWS access key id with its secret key", False


# --- the whole project ---------------------------------------------------------------------


def allowed(finding: Finding, allow: Iterable[str]) -> bool:
    """Whether ``[build] allow_credentials`` lists the finding's file or its line."""
    for entry in allow:
        path, colon, line = entry.rpartition(":")
        if colon and line.isdigit():
            if _same(path, finding.path) and int(line) == finding.line:
                return True
        elif _same(entry, finding.path) or finding.path.startswith(entry.rstrip("/") + "/"):
            return True
    return False


def _same(entry: str, path: str) -> bool:
    return os.path.normpath(entry).lstrip("/") == os.path.normpath(path)


#: Files larger than this are data, not configuration: the key scan reads them whole,
#: the search for credentials does not (it takes about 15-40 s per GiB). Each one
#: left unsearched is named to the user.
SCAN_MAX_BYTES = 64 * 1024 * 1024


def project_findings(
    root: Path, paths: Iterable[str], allow: Iterable[str] = (), requirements: Iterable[str] = ()
) -> tuple[list[Finding], list[str]]:
    """Findings in the project files ``paths`` (relative to ``root``) that ``allow``
    (``[build] allow_credentials``) does not list, and the files too large to search
    (:data:`SCAN_MAX_BYTES`).

    ``requirements`` are the files pip reads as requirements (their credentials are a
    package index's).
    """
    allow = list(allow)
    index_files = frozenset(requirements)
    found: list[Finding] = []
    unscanned: list[str] = []
    for path in paths:
        if path == PROJECT_FILE:
            continue  # its [cluster.options] have their own rule: check_no_credentials
        try:
            size = (root / path).stat().st_size
        except OSError:
            continue
        if size > SCAN_MAX_BYTES:
            unscanned.append(path)
            continue
        found.extend(f for f in findings_in_file(root, path, index_files) if not allowed(f, allow))
    return found, unscanned


#: Findings named in one message; the rest are counted.
_SHOWN = 6


def describe(findings: list[Finding], *, prefix: str = "", netrc_hint: str = "") -> str:
    """The one line that refuses ``findings``, naming each place and kind, never a value."""
    shown = ", ".join(f"{prefix}{f.place} ({f.what})" for f in findings[:_SHOWN])
    more = f" and {len(findings) - _SHOWN} more" if len(findings) > _SHOWN else ""
    index = (f"; give pip a package index's credentials in a .netrc file instead: {netrc_hint}"
             if netrc_hint and any(f.index for f in findings) else "")
    return (
        f"secrets by value would go into the image: {shown}{more}: remove them and give them to the run "
        f"at run time (a secret store, Prefect blocks, [cluster.options] secrets){index}; if one is no "
        f'secret, list it under [build] allow_credentials in {PROJECT_FILE} ("file" or "file:line")'
    )
