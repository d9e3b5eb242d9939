"""The one place that runs ``docker build``: the CLI, with BuildKit when it can.

docker-py cannot use BuildKit, so builds shell out to the docker client. The Dockerfile
builds with either builder; BuildKit is preferred (it runs independent stages in
parallel), and a client that cannot use it (an old engine, or a new client without
buildx) builds the same file with the legacy builder.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flowrig.builder import defaults
from flowrig.builder.context import BuildContext, write_context

# What a written context may get besides, for a build: re-exported here, where builds are.
from flowrig.builder.context_additions import add_pip_ca as add_pip_ca
from flowrig.builder.context_additions import add_pip_netrc_mount as add_pip_netrc_mount
from flowrig.builder.platforms import (
    check_base_image,
    check_builder,
    containerd_store,
    engine_architecture,
    parse_platforms,
)
from flowrig.errors import BadInput, InfrastructureError

# tempfile and buildsteps are imported where a build runs, so importing the package
# (as `flowrig --help` does) adds next to nothing to what typer already loaded.

_NETRC_NEEDS_BUILDKIT = (
    "--pip-netrc needs BuildKit (a build secret), and {client} has none: use a docker "
    "client with buildx (Docker 23+), or set FLOWRIG_DOCKER to one"
)

# " ---> 0123abcd4567": an image the legacy builder made for one step.
_LEGACY_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12})\s*$")


@dataclass(frozen=True)
class DockerClient:
    """A docker executable and whether ``docker build`` can use BuildKit with it."""

    path: str
    buildkit: bool


@dataclass(frozen=True)
class BuildResult:
    """What a successful build made.

    Attributes
    ----------
    tag
        The image's tag.
    image_id
        Its id (``sha256:...``).
    seconds
        Wall time of ``docker build``.
    buildkit
        Whether BuildKit built it.
    context_hash
        :attr:`BuildContext.digest`, also in the image's
        :data:`flowrig.builder.defaults.IMAGE_CONTEXT_LABEL` label.
    """

    tag: str
    image_id: str
    seconds: float
    buildkit: bool
    context_hash: str


@lru_cache(maxsize=1)
def detect_client() -> DockerClient:
    """The docker client to build with.

    ``FLOWRIG_DOCKER``, else every ``docker`` on PATH in order; the first that accepts
    ``DOCKER_BUILDKIT=1 docker build --help`` and offers ``--secret`` wins. A client
    without buildx fails that check (Docker 23+ refuses BuildKit without it); Debian's
    20.10 client passes it. With none, the first client builds with the legacy builder.

    Raises
    ------
    InfrastructureError
        No docker client at all.
    """
    override = os.environ.get("FLOWRIG_DOCKER")
    candidates = [override] if override else _clients_on_path(defaults.DOCKER_CLIENT)
    if not candidates:
        raise InfrastructureError(
            "no docker client on PATH: install Docker, or set FLOWRIG_DOCKER to its client"
        )
    for client in candidates:
        if _supports_buildkit(client):
            return DockerClient(client, buildkit=True)
    return DockerClient(candidates[0], buildkit=False)


def _clients_on_path(name: str) -> list[str]:
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            real = os.path.realpath(candidate)
            if real not in {os.path.realpath(f) for f in found}:
                found.append(candidate)
    return found


def _supports_buildkit(client: str) -> bool:
    try:
        done = subprocess.run(
            [client, "build", "--help"],
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "--secret" in done.stdout


def build_command(
    context: BuildContext,
    tag: str,
    directory: str | Path,
    *,
    buildkit: bool,
    no_cache: bool = False,
    client: str = defaults.DOCKER_CLIENT,
    tls_nonce: str | None = None,
    pip_netrc: str | Path | None = None,
    multi_platform: bool = False,
    engine_arch: str = "",
) -> list[str]:
    """The ``docker build`` command line for a written context (pure).

    Intermediate containers are always removed (``--rm --force-rm``), and the image
    is labelled with the context's hash. ``tls_nonce`` becomes ``TLS_NONCE``, which a
    context that makes its own CA needs (:attr:`BuildContext.makes_its_own_ca`); it
    is not part of the context, so the context's hash stays the same. A CA bundle for
    pip travels in the context (:func:`add_pip_ca`), not on the command line. A
    ``.netrc`` (``pip_netrc``) is a BuildKit secret, for a context whose Dockerfile
    mounts it (:func:`add_pip_netrc_mount`). The context's ``PLATFORM`` becomes
    ``--platform`` (BuildKit names the architecture in the image's label); a legacy build
    names ``engine_arch`` instead, the only one it builds for.

    Raises
    ------
    BadInput
        ``pip_netrc`` or a platform without BuildKit; several platforms without
        ``multi_platform`` (an image store that holds them under one tag).
    """
    platforms = parse_platforms(context.build_args.get("PLATFORM"))
    check_builder(platforms, buildkit=buildkit, client=client, multi_platform=multi_platform)
    command = [client, "build", "--rm", "--force-rm", "--tag", tag]
    command += ["--label", f"{defaults.IMAGE_CONTEXT_LABEL}={context.digest}"]
    for name, value in context.build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    if tls_nonce is not None:
        command += ["--build-arg", f"TLS_NONCE={tls_nonce}"]
    if platforms:
        command += ["--platform", ",".join(platforms)]
    elif not buildkit and engine_arch:
        command += ["--build-arg", f"TARGETARCH={engine_arch}"]
    if buildkit:
        command += ["--progress", "plain"]
        if pip_netrc is not None:
            command += ["--secret", f"id={defaults.PIP_NETRC_SECRET_ID},src={pip_netrc}"]
    elif pip_netrc is not None:
        # A legacy builder has no build secrets: it could only copy the file into a
        # layer of the build cache.
        raise BadInput(_NETRC_NEEDS_BUILDKIT.format(client=client))
    if no_cache:
        command.append("--no-cache")
    command.append(str(directory))
    return command


def build(
    context: BuildContext,
    tag: str,
    pip_ca: str | Path | None = None,
    *,
    quiet: bool = False,
    no_cache: bool = False,
    pip_netrc: str | Path | None = None,
) -> BuildResult:
    # long: the public API's numpy-style docstring is 38 lines; the code is 48.
    """Build a context into an image tagged ``tag``.

    Parameters
    ----------
    context
        From :func:`flowrig.builder.render_context`.
    tag
        The image's tag (``name:version``).
    pip_ca
        A CA bundle pip in the build should trust (a TLS-intercepting proxy, a private
        index): copied into the context for a build stage the image does not keep
        (:func:`add_pip_ca`).
    quiet
        Do not stream Docker's progress to stderr.
    pip_netrc
        A .netrc file with the credentials of the project's private package index: a
        BuildKit secret that only the install of the project's requirements sees.
        Legacy builders have no build secrets, so it needs BuildKit.
    no_cache
        Build every step again (``--no-cache``). Docker 20.10's BuildKit can panic
        when such a build overlaps another build of the same steps
        (moby/buildkit#2303); prefer it on an otherwise idle engine.

    Returns
    -------
    BuildResult

    Raises
    ------
    BadInput
        The base image is neither local nor pullable, ``pip_ca`` is not a file, or a
        build step rejected the project (a requirement pip cannot satisfy, a module
        the flow imports that the image cannot import): one line naming it.
    InfrastructureError
        Docker is unreachable or the build failed for another reason (the last lines
        of its output are printed above the message; a build step's own diagnosis,
        the package index unreachable say, is the message).
    """
    import tempfile

    if pip_ca is not None and not Path(pip_ca).is_file():
        raise BadInput(f"pip CA bundle {pip_ca} is not a file: pass an existing PEM bundle")
    if pip_netrc is not None and not Path(pip_netrc).is_file():
        raise BadInput(f"--pip-netrc {pip_netrc} is not a file: pass a .netrc with the index's credentials")
    client = detect_client()
    if pip_netrc is not None and not client.buildkit:
        # Before anything is written or run (build_command refuses it as well).
        raise BadInput(_NETRC_NEEDS_BUILDKIT.format(client=client.path))
    platforms = parse_platforms(context.build_args.get("PLATFORM"))
    multi_platform = len(platforms) > 1 and containerd_store(client.path)
    check_builder(platforms, buildkit=client.buildkit, client=client.path, multi_platform=multi_platform)
    _ensure_base_image(client.path, context.build_args["BASE_IMAGE"])
    check_base_image(client.path, context.build_args["BASE_IMAGE"], platforms)
    old_id = _image_id(client.path, tag)
    dangling_before = _dangling(client.path)
    with tempfile.TemporaryDirectory(prefix="flowrig-context-") as scratch:
        directory = write_context(context, Path(scratch) / "context")
        if pip_ca is not None:
            add_pip_ca(directory, pip_ca)
        if pip_netrc is not None:
            add_pip_netrc_mount(directory)
        command = build_command(
            context,
            tag,
            directory,
            buildkit=client.buildkit,
            no_cache=no_cache,
            client=client.path,
            # A new CA for every build: never one from the cache of an earlier build.
            tls_nonce=secrets.token_hex(16) if context.makes_its_own_ca else None,
            pip_netrc=Path(pip_netrc).resolve() if pip_netrc is not None else None,
            multi_platform=multi_platform,
            engine_arch="" if client.buildkit else engine_architecture(client.path),
        )
        env = {**os.environ, "DOCKER_BUILDKIT": "1" if client.buildkit else "0"}
        started = time.monotonic()
        returncode, tail, step_errors, step_images = _stream(command, env, quiet=quiet)
        seconds = time.monotonic() - started
    if returncode != 0:
        _remove_new_dangling(client.path, dangling_before, step_images)
        _raise_build_failure(returncode, tail, step_errors, quiet=quiet)
    if old_id and old_id != _image_id(client.path, tag):
        # The tag moved: its previous image would be left dangling.
        _remove_new_dangling(client.path, dangling_before, {old_id})
    image_id = _image_id(client.path, tag) or ""
    return BuildResult(tag, image_id, seconds, client.buildkit, context.digest)


def find_image(context: BuildContext, tag: str | None = None) -> str | None:
    """An existing image built from exactly this context (by its hash label), if any.

    With ``tag``, only that image is considered.
    """
    client = detect_client().path
    if tag is not None:
        labels = _run(
            [client, "image", "inspect", "--format",
             f'{{{{index .Config.Labels "{defaults.IMAGE_CONTEXT_LABEL}"}}}}', tag],
            check=False,
        )
        return tag if labels.returncode == 0 and labels.stdout.strip() == context.digest else None
    found = _run(
        [client, "images", "--quiet", "--no-trunc", "--filter",
         f"label={defaults.IMAGE_CONTEXT_LABEL}={context.digest}"],
        check=False,
    )
    ids = found.stdout.split()
    return ids[0] if found.returncode == 0 and ids else None


# --- helpers ---------------------------------------------------------------------------


def _run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise InfrastructureError(f"docker client {command[0]} not found: install Docker") from None
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"`{' '.join(command[:3])}` did not answer in 300 s") from None
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise InfrastructureError(
            f"`{' '.join(command[:3])}` failed: {message[-1] if message else done.returncode}"
        )
    return done


def _ensure_base_image(client: str, image: str) -> None:
    if _run([client, "image", "inspect", image], check=False).returncode == 0:
        return
    if _run([client, "version", "--format", "{{.Server.Version}}"], check=False).returncode != 0:
        raise InfrastructureError("the Docker engine does not answer: start it, or set DOCKER_HOST")
    if _run([client, "pull", "--quiet", image], check=False).returncode != 0:
        raise BadInput(
            f"base image {image!r} not found locally and could not be pulled: "
            "pass --base-image with an image you have"
        )


def _image_id(client: str, tag: str) -> str | None:
    done = _run([client, "image", "inspect", "--format", "{{.Id}}", tag], check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _dangling(client: str) -> set[str]:
    done = _run([client, "images", "--quiet", "--no-trunc", "--filter", "dangling=true"], check=False)
    return set(done.stdout.split())


def _remove_new_dangling(client: str, before: set[str], made_here: set[str]) -> None:
    """Remove images that became dangling during this build and that it made.

    ``made_here`` holds full ids or the 12-character short ids the legacy builder
    prints; dangling images of anyone else's concurrent build are left alone.
    """
    def ours(image_id: str) -> bool:
        bare = image_id.removeprefix("sha256:")
        return any(bare.startswith(m.removeprefix("sha256:")) for m in made_here)

    doomed = sorted(i for i in _dangling(client) - before if ours(i))
    if doomed:
        # No --force: an image a container still uses stays.
        _run([client, "rmi", *doomed], check=False)


def _stream(
    command: list[str], env: dict[str, str], *, quiet: bool
) -> tuple[int, list[str], list[tuple[str, str]], set[str]]:
    """Run the build, echo its output to stderr (unless quiet).

    Returns the exit code, the last lines of output, the one-line diagnoses of build
    steps that failed (prefix, message), and the ids of images the legacy builder made.
    """
    from flowrig.builder import buildsteps

    tail: deque[str] = deque(maxlen=defaults.BUILD_LOG_TAIL)
    step_errors: list[tuple[str, str]] = []
    step_images: set[str] = set()
    try:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except FileNotFoundError:
        raise InfrastructureError(f"docker client {command[0]} not found: install Docker") from None
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if not quiet:
                sys.stderr.write(line)
                sys.stderr.flush()
            line = line.rstrip("\n")
            tail.append(line)
            for prefix in (buildsteps.ERROR_PREFIX, buildsteps.FAILURE_PREFIX):
                if prefix in line:
                    step_errors.append((prefix, line.split(prefix, 1)[1].strip()))
            match = _LEGACY_STEP_IMAGE.match(line)
            if match:
                step_images.add(match.group(1))
        returncode = process.wait()
    except BaseException:
        process.terminate()
        process.wait()
        raise
    return returncode, list(tail), step_errors, step_images


def _raise_build_failure(
    returncode: int, tail: list[str], step_errors: list[tuple[str, str]], *, quiet: bool
) -> None:
    from flowrig.builder import buildsteps

    if step_errors:
        # A build step said why it failed, in one line (see buildsteps.py): the project
        # (exit 2), or something else (exit 3).
        prefix, message = step_errors[-1]
        raise (BadInput if prefix == buildsteps.ERROR_PREFIX else InfrastructureError)(message)
    if quiet:
        sys.stderr.write("\n".join(tail) + "\n")
    meaningful = [_clean(line) for line in tail if _clean(line)]
    last = meaningful[-1] if meaningful else f"exit code {returncode}"
    raise InfrastructureError(f"docker build failed: {last}")


def _clean(line: str) -> str:
    # BuildKit prefixes lines with "#12 3.456 "; the message is what follows.
    return re.sub(r"^#\d+ (?:\d+\.\d+ )?", "", line).strip()
