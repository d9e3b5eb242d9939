"""Secrets by value in a project's files: every place, kind and line, never the value.

What counts, and the placeholders that do not, are :mod:`flowrig.project.secret_rules`'s;
this module reads files of any size in chunks (UTF-8, Latin-1 or UTF-16; binary files for
tokens and URLs only) and adds what only a file holds: credential file formats (AWS
credentials, ``.netrc``, Docker's ``config.json``, connection strings), ``Authorization``
headers, and in configuration files a literal value given to a name that says it is
secret. ``[build] allow_credentials`` exempts a file or a line.

It runs inside the image build before flowrig is installed (``flowrig/builder/buildsteps.py``
loads it by path, and it then loads ``secret_rules.py`` from beside it), so it uses the
standard library only and never imports flowrig.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


def _secret_rules():
    """:mod:`flowrig.project.secret_rules`, or in the image build the ``secret_rules.py``
    beside this file (once: ``buildsteps.py`` may have loaded it already)."""
    if __package__:
        # Relative, as in no other module: this file has no package when the build loads it.
        from . import secret_rules

        return secret_rules
    import importlib.util
    import sys

    module = sys.modules.get("flowrig_secret_rules")
    if module is None:
        path = Path(__file__).with_name("secret_rules.py")
        spec = importlib.util.spec_from_file_location("flowrig_secret_rules", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


_rules = _secret_rules()
PROJECT_FILE = _rules.PROJECT_FILE
TOKEN_SHAPES = _rules.TOKEN_SHAPES
_AWS_KEY_IDS, _URL_USERINFO = _rules.AWS_KEY_IDS, _rules.URL_USERINFO
_CONNECTION_PASSWORDS = _rules.CONNECTION_PASSWORDS
_placeholder, _userinfo_secret, _words = _rules.is_placeholder, _rules.userinfo_secret, _rules.name_words


# --- names that say secret, in files -------------------------------------------------------

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


# --- credential file formats -------------------------------------------------------------

# An AWS secret key: 40 characters of base64 (with an access key id, :func:`_aws_pairs`).
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
# .netrc: "machine HOST ... password VALUE" (tokens may be on separate lines).
_NETRC_MACHINE = re.compile(rb"machine[ \t]+[^\s]+")
_NETRC_PASSWORD = re.compile(rb"password[ \t]+([^\s]+)")
# Docker's config.json: registry credentials under "auths", or identity tokens.
_DOCKER_AUTH = re.compile(rb"\"(?:auth|identitytoken|registrytoken)\"[ \t]*:[ \t]*\"([A-Za-z0-9+/=._\-]{8,})\"")
# What makes a "password=" a connection string's (secret_rules.CONNECTION_PASSWORDS).
_CONNECTION_CONTEXT = re.compile(rb";|\b(?:host|server|user|uid|dbname|Data Source|Host|Server|User)[ \t]*=")
# "name: value" and "name = value" lines of configuration formats.
_ASSIGNMENT = re.compile(
    rb"^[ \t]*(?:export[ \t]+|-[ \t]+)?[\"']?([A-Za-z_][A-Za-z0-9_.\-]{0,120})[\"']?[ \t]*[:=][ \t]*"
    rb"(?:\"([^\"\n]*)\"|'([^'\n]*)'|([^\s\"'#;,{}\[\]][^\s#;,]*))",
    re.MULTILINE,
)


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
