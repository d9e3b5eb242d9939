"""Pushing a built image to its registry, and a multi-platform image where the engine
cannot hold one (``flowrig build --platform linux/amd64,linux/arm64 --push``).

An engine keeps one image per tag, of one platform, unless it keeps images in the
containerd store. Without that store, every BuildKit still builds one platform at a time
(another architecture emulated through qemu's binfmt handlers), and a registry holds an
index that names several: so each platform is built and pushed as ``TAG-ARCH``, then an
image index ``TAG`` naming them is made in the registry (``docker manifest``, which
reads the members there and writes the index there; nothing of it stays on this machine).
A registry on loopback is spoken to over plain HTTP, as the engine itself does.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Callable

from flowrig.errors import BadInput, InfrastructureError

#: Seconds a push or an index may take (layers of a few hundred MB).
PUSH_TIMEOUT = 1800


@dataclass(frozen=True)
class Reference:
    """An image reference split as a registry reads it: ``host/path:tag``."""

    host: str
    path: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}:{self.tag}"

    def with_tag(self, tag: str) -> "Reference":
        return Reference(self.host, self.path, tag)

    @property
    def loopback(self) -> bool:
        """A registry on this machine: plain HTTP, as the engine allows there."""
        name = self.host.rsplit(":", 1)[0] if not self.host.startswith("[") else self.host.split("]")[0] + "]"
        return name in ("localhost", "[::1]") or name.startswith("127.")


def reference(tag: str) -> Reference:
    """``tag`` as a registry reference.

    Raises
    ------
    BadInput
        A tag that names no registry (``seed:1`` would go to Docker Hub), or a digest.
    """
    first, _, rest = tag.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost") or "@" in tag:
        raise BadInput(
            f"--push needs a tag that names its registry, e.g. 127.0.0.1:5000/seed:1 or "
            f"ACCOUNT.dkr.ecr.REGION.amazonaws.com/seed:1 (not {tag!r})"
        )
    path, _, version = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "latest")
    return Reference(first, path, version)


def platform_tag(tag: str, platform: str) -> str:
    """The tag of one platform's member of a multi-platform ``tag``: ``TAG-ARCH``."""
    ref = reference(tag)
    return str(ref.with_tag(f"{ref.tag}-{platform.split('/')[1]}"))


def _docker(client: str, args: list[str], what: str, fix: str) -> None:
    env = {**os.environ, "DOCKER_CLI_EXPERIMENTAL": "enabled"}  # `docker manifest` on 20.10 clients
    try:
        done = subprocess.run([client, *args], capture_output=True, text=True, timeout=PUSH_TIMEOUT, env=env,
                              check=False)
    except FileNotFoundError:
        raise InfrastructureError(f"docker client {client} not found: install Docker") from None
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"{what} did not finish in {PUSH_TIMEOUT} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise InfrastructureError(f"{what} failed: {lines[-1] if lines else done.returncode}: {fix}")


def push(client: str, tag: str) -> None:
    """``docker push tag`` (every platform of it, from a containerd store).

    Raises
    ------
    InfrastructureError
        The registry refused or was out of reach; the message names ``docker login``.
    """
    ref = reference(tag)
    _docker(client, ["push", tag], f"pushing {tag}",
            f"check that {ref.host} answers and that `docker login {ref.host}` was done")


def push_index(client: str, tag: str, members: list[str]) -> None:
    """Make the image index ``tag`` in its registry, naming the pushed ``members`` (each
    of one platform). An index of that tag made earlier on this machine is replaced.

    Raises
    ------
    InfrastructureError
        The registry refused the index, or the client has no ``docker manifest``.
    """
    ref = reference(tag)
    insecure = ["--insecure"] if ref.loopback else []
    env = {**os.environ, "DOCKER_CLI_EXPERIMENTAL": "enabled"}
    # A list of this name left by an earlier index on this machine would be amended, not replaced.
    subprocess.run([client, "manifest", "rm", tag], capture_output=True, timeout=60, env=env, check=False)
    fix = f"check that {ref.host} answers, that `docker login {ref.host}` was done, and that {client} has " \
          "`docker manifest`"
    _docker(client, ["manifest", "create", *insecure, tag, *members], f"making the image index {tag}", fix)
    _docker(client, ["manifest", "push", *insecure, "--purge", tag], f"pushing the image index {tag}", fix)


def build_each_and_index(client: str, tag: str, platforms: tuple[str, ...],
                         build_one: Callable[[str, str], object]) -> list[str]:
    """Build each of ``platforms`` as ``TAG-ARCH`` (``build_one(platform, tag)``), push it,
    then make the index ``tag`` of them all in the registry; the members' tags.

    Raises
    ------
    BadInput
        ``tag`` names no registry (checked before anything is built).
    InfrastructureError
        A build, a push or the index failed.
    """
    reference(tag)
    members = []
    for platform in platforms:
        member = platform_tag(tag, platform)
        build_one(platform, member)
        push(client, member)
        members.append(member)
    push_index(client, tag, members)
    return members
