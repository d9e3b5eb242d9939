"""The one module that talks to the Docker engine (docker-py).

Each function does one thing to the engine and turns docker-py's errors into one-line
:class:`~flowrig.errors.BadInput` or :class:`~flowrig.errors.InfrastructureError`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, TextIO

from flowrig.containers.labels import LABEL_ROLE, LABEL_RUN_ID, labels
from flowrig.containers.owner import LABEL_OWNER, current_label
from flowrig.containers.plans import STOP_TIMEOUT, ContainerPlan
from flowrig.errors import BadInput, InfrastructureError, one_line

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

logger = logging.getLogger("flowrig.docker")

#: Last log lines of a failed container folded into its one-line error message.
LOG_TAIL = 5
#: Containers removed at once by :func:`remove_run`.
REMOVE_THREADS = 8


def log_tail(text: str, lines: int = LOG_TAIL, width: int = 400) -> str:
    """The last non-empty log lines folded into one line for an error message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    folded = " | ".join(kept) or "no output"
    return folded if len(folded) <= width else "..." + folded[-(width - 3):]


def connect(timeout: int = 60) -> "DockerClient":
    """A client of the Docker engine named by the environment (``DOCKER_HOST``).

    Raises
    ------
    InfrastructureError
        When the engine does not answer.
    """
    try:
        import docker
    except ImportError:
        raise BadInput("the docker backend needs the Docker SDK for Python: pip install docker") from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise InfrastructureError(
            f"Docker is not reachable ({one_line(exc)}): start the Docker daemon or set DOCKER_HOST"
        ) from None
    return client


def _image_not_found(image: str) -> BadInput:
    # Nothing is ever pulled: images come from flowrig build on this machine.
    return BadInput(f"image {image!r} not found: build it with flowrig build PROJECT --tag {image}")


def require_image(client: "DockerClient", image: str) -> None:
    """Raise :class:`BadInput` unless ``image`` exists locally (nothing is pulled)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise _image_not_found(image) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot inspect image {image!r}: {one_line(exc)}") from None


def create_network(client: "DockerClient", name: str, run_id: str) -> str:
    """Create a run's bridge network (user-defined: containers resolve names); its id."""
    import docker

    # The owner label: a leftovers command leaves the network of a live run alone.
    owned = {**labels(run_id, "network"), LABEL_OWNER: current_label()}
    try:
        network = client.networks.create(name, driver="bridge", labels=owned, check_duplicate=True)
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot create Docker network {name}: {one_line(exc)}") from None
    return network.id


def ensure_network(client: "DockerClient", name: str, network_labels: dict[str, str]) -> str:
    """The id of the user-defined bridge network ``name``, created when missing.

    Invocations started together may each create one (Docker checks names only
    loosely): all of them use the oldest, and spare ones are removed.
    """

    def named() -> list[Any]:
        # The name filter matches substrings; only the exact name counts.
        found = [network for network in client.networks.list(names=[name]) if network.name == name]
        return sorted(found, key=lambda network: (network.attrs.get("Created", ""), network.id))

    found = named()
    if not found:
        client.networks.create(name, driver="bridge", labels=network_labels, check_duplicate=True)
        found = named()
    for spare in found[1:]:
        with contextlib.suppress(Exception):  # someone already joined it; it does no harm
            spare.remove()
    return found[0].id


def create_container(client: "DockerClient", plan: ContainerPlan) -> "Container":
    """Create (but do not start) the container ``plan`` describes."""
    import docker

    api = client.api
    try:
        host_config = api.create_host_config(
            network_mode=plan.network,
            port_bindings={port: ("127.0.0.1",) for port in plan.publish} or None,
            binds={src: {"bind": dst, "mode": "rw"} for src, dst in plan.binds.items()} or None,
            group_add=list(plan.group_add) or None,
            mem_limit=plan.memory,
            init=plan.init or None,
            read_only=plan.read_only or None,
            tmpfs=dict(plan.tmpfs) or None,
            shm_size=plan.shm_size,
            cap_drop=list(plan.cap_drop) or None,
            security_opt=list(plan.security_opt) or None,
            pids_limit=plan.pids_limit,
        )
        networking = api.create_networking_config(
            {plan.network: api.create_endpoint_config(aliases=list(plan.aliases) or None)}
        )
        config = api.create_container_config(
            plan.image,
            command=list(plan.command) if plan.command is not None else None,
            entrypoint=list(plan.entrypoint) if plan.entrypoint else None,
            hostname=plan.hostname,
            user=plan.user,
            working_dir=plan.working_dir,
            environment=dict(plan.environment),
            # Who made it (:mod:`flowrig.containers.owner`): a leftovers command never
            # touches the containers of a process that still runs.
            labels={**plan.labels, LABEL_OWNER: current_label()},
            ports=list(plan.publish) or None,
            host_config=host_config,
            networking_config=networking,
            stop_timeout=plan.stop_timeout,
            stdin_open=plan.stdin_open,
            detach=True,
        )
        # The one attach is its starter's: when that stream closes (the starter is done
        # with it, or has gone), the container reads end of file.
        config["StdinOnce"] = plan.stdin_open
        created = api.create_container_from_config(config, name=plan.name)
        return client.containers.get(created["Id"])
    except docker.errors.ImageNotFound:
        raise _image_not_found(plan.image) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot create container {plan.name}: {one_line(exc)}") from None


def start_container(container: "Container") -> None:
    """Start a created container."""
    import docker

    try:
        container.start()
    except docker.errors.APIError as exc:
        raise InfrastructureError(
            f"container {container.name} did not start: {one_line(exc)}; "
            f"last log lines: {container_logs_tail(container)}"
        ) from None


class StdinWriter:
    """The write end of a running container's stdin (its engine attach stream).

    Lines written here reach the container's process in order; :meth:`close` ends its
    stdin (end of file), unless the container keeps it open for more attaches.
    """

    def __init__(self, container: "Container") -> None:
        import docker

        self.name = container.name
        try:
            self._socket = container.client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"cannot attach to the stdin of {container.name}: {one_line(exc)}") from None
        # docker-py hands back a socket.SocketIO for a local engine, a raw socket otherwise.
        raw = getattr(self._socket, "_sock", self._socket)
        self._send = raw.sendall
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """Send ``data``; a container that has gone is an infrastructure error."""
        with self._lock:
            try:
                self._send(data)
            except OSError as exc:
                raise InfrastructureError(f"container {self.name} stopped reading its stdin: {exc}") from None

    def close(self) -> None:
        """Close the stream (the container reads end of file); safe to call more than once."""
        with self._lock, contextlib.suppress(OSError):
            self._socket.close()


def attach_stdin(container: "Container") -> StdinWriter:
    """A writer to ``container``'s stdin (created with ``stdin_open``)."""
    return StdinWriter(container)


def container_logs_tail(container: "Container") -> str:
    """The container's last log lines folded into one line (``""`` when gone)."""
    with contextlib.suppress(Exception):
        return log_tail(container.logs(stdout=True, stderr=True, tail=50).decode(errors="replace"))
    return ""


def published_port(container: "Container", port: int) -> int:
    """Host port that ``port`` of the (running) container is published on."""
    container.reload()
    bindings = (container.ports or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "", "0.0.0.0"):
            return int(binding["HostPort"])
    raise InfrastructureError(f"container {container.name} has no published port for {port}")


def wait_for_log(container: "Container", marker: str, timeout: float, what: str) -> None:
    """Block until ``marker`` appears in the container's log.

    Raises
    ------
    InfrastructureError
        When the container exits first or ``timeout`` seconds pass; the message holds
        the container's last log lines.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = container.logs(stdout=True, stderr=True).decode(errors="replace")
        if marker in text:
            return
        container.reload()
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            raise InfrastructureError(
                f"the {what} container {container.name} exited (code {code}) before it was ready: "
                f"{log_tail(text)}"
            )
        if time.monotonic() > deadline:
            raise InfrastructureError(
                f"the {what} container {container.name} was not ready within {timeout:.0f} s: {log_tail(text)}"
            )
        time.sleep(0.2)


def wait_for_exit(container: "Container") -> int:
    """Block until the container exits; its exit code (137 when it vanished)."""
    try:
        return int(container.wait()["StatusCode"])
    except Exception:
        return 137


def oom_killed(container: "Container") -> bool:
    """Whether the kernel killed the (exited) container for running out of memory."""
    try:
        container.reload()
        return bool(container.attrs["State"].get("OOMKilled"))
    except Exception:  # gone already: nothing more to learn
        return False


def exit_state(container: "Container") -> tuple[int, bool] | None:
    """``(exit code, OOM-killed)`` of a container that has ended; ``None`` while it runs
    or once it is gone."""
    try:
        container.reload()
        state = container.attrs["State"]
    except Exception:  # gone already: nothing more to learn
        return None
    if state.get("Running") or state.get("Status") in ("created", "running", "restarting"):
        return None
    return int(state.get("ExitCode") or 0), bool(state.get("OOMKilled"))


def stop_and_remove(container: "Container", timeout: int = STOP_TIMEOUT) -> None:
    """Stop a container (SIGTERM, SIGKILL after ``timeout`` s) and remove it; quiet if gone."""
    import docker

    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.stop(timeout=timeout)
    remove_container(container)


def remove_container(container: "Container") -> bool:
    """Remove a container by force; ``False`` when it was gone already."""
    import docker

    try:
        container.remove(force=True)
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        # "removal already in progress" is fine; anything else is worth a line.
        if "in progress" not in str(exc):
            logger.warning("removing container %s failed: %s", container.name, one_line(exc))
        return False


def remove_named(client: "DockerClient", name: str) -> bool:
    """Remove the container called ``name`` by force, if there is one; whether there was."""
    import docker

    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        logger.debug("looking up container %s failed: %s", name, one_line(exc))
        return False
    return remove_container(container)


def run_containers(client: "DockerClient", run_id: str, roles: Iterable[str] | None = None) -> list["Container"]:
    """All containers (running or not) labelled with ``run_id``, optionally of some roles.

    A container removed between the listing and its inspection is left out.
    """
    import docker

    wanted = None if roles is None else set(roles)
    found = []
    for item in client.api.containers(all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"}):
        if wanted is not None and (item.get("Labels") or {}).get(LABEL_ROLE) not in wanted:
            continue
        with contextlib.suppress(docker.errors.NotFound):
            found.append(client.containers.get(item["Id"]))
    return found


def remove_run(
    client: "DockerClient",
    run_id: str,
    *,
    roles: Iterable[str] | None = None,
    network: bool = True,
    timeout: float = 30.0,
) -> list[str]:
    """Remove a run's containers (all, or those of ``roles``) and, with ``network``, its networks.

    Containers are removed by force: by the time this runs, their processes have had
    their chance to stop. A network still in use by a container being removed is
    retried until ``timeout``.

    Returns
    -------
    list of str
        Names of what was removed.
    """
    from concurrent.futures import ThreadPoolExecutor

    import docker

    containers = run_containers(client, run_id, roles)
    # At once: a run of many workers is gone in the time of one removal.
    with ThreadPoolExecutor(max_workers=max(1, min(REMOVE_THREADS, len(containers)))) as pool:
        done = list(pool.map(remove_container, containers))
    removed = [c.name for c, gone in zip(containers, done) if gone]
    if not network:
        return removed
    deadline = time.monotonic() + timeout
    for net in client.networks.list(filters={"label": f"{LABEL_RUN_ID}={run_id}"}):
        while True:
            try:
                net.remove()
                removed.append(net.name)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:
                if time.monotonic() > deadline:
                    logger.warning("removing network %s failed: %s", net.name, one_line(exc))
                    break
                time.sleep(0.25)
    return removed


def labelled(client: "DockerClient") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every container and network carrying a run id label, as the engine lists them."""
    label = {"label": LABEL_RUN_ID}
    return client.api.containers(all=True, filters=label), client.api.networks(filters=label)


class EventWatch:
    """Docker events of one run's containers, handed to a callback in a thread.

    Call :meth:`stop` when the run ends (the engine's event stream is closed).
    """

    def __init__(self, client: "DockerClient", run_id: str, events: Iterable[str],
                 callback: "Callable[[dict[str, Any]], None]") -> None:
        filters = {"type": ["container"], "event": list(events), "label": [f"{LABEL_RUN_ID}={run_id}"]}
        try:
            self._stream = client.api.events(filters=filters, decode=True)
        except Exception as exc:  # the run does without: the engine shows no events
            logger.debug("no Docker events for run %s: %s", run_id, one_line(exc))
            self._stream = None
            return
        self._callback = callback
        threading.Thread(target=self._follow, name="flowrig-docker-events", daemon=True).start()

    def _follow(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends when stopped
            for event in self._stream:
                try:
                    self._callback(event)
                except Exception as exc:
                    logger.debug("a Docker event was not handled: %s", one_line(exc))

    def stop(self) -> None:
        """Stop watching; safe to call more than once."""
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()


def watch_events(client: "DockerClient", run_id: str, events: Iterable[str],
                 callback: "Callable[[dict[str, Any]], None]") -> EventWatch:
    """Follow ``events`` (e.g. ``oom``) of the containers labelled with ``run_id``."""
    return EventWatch(client, run_id, events, callback)


def _emit(target: TextIO, data: bytes) -> None:
    """Write ``data`` to ``target`` as bytes when it has a buffer (so no decoding splits a
    character across chunks), else as text; then flush."""
    if not data:
        return
    sink = getattr(target, "buffer", None)
    if sink is not None:
        sink.write(data)
    else:
        target.write(data.decode(errors="replace"))
    target.flush()


class StreamFilter(Protocol):
    """What :class:`LogPump` runs a stream through (a control channel sharing it)."""

    def feed(self, chunk: bytes) -> bytes:
        """The output ready to copy after ``chunk``."""

    def end(self) -> bytes:
        """What is left to copy once the stream ended."""


class LogPump:
    """Copies containers' output to this process's streams as it comes, in threads.

    Parameters
    ----------
    prefix
        Put ``"<prefix> | "`` in front of each line (``None``: copy bytes as they are).
    """

    def __init__(self, prefix: bool = False) -> None:
        self._threads: list[tuple[str, threading.Thread]] = []
        self._lock = threading.Lock()
        self._prefix = prefix

    def follow(self, container: "Container", label: str = "", *, stdout: TextIO | None = None,
               stderr: TextIO | None = None, both_to: TextIO | None = None,
               stdout_filter: StreamFilter | None = None) -> None:
        """Stream ``container``'s output: its stdout and stderr to ours, or both to one stream.

        ``stdout_filter`` gets its stdout first (a control channel sharing the stream)
        and says what of it to copy.
        """
        if both_to is not None:
            self._start(container, label, both_to, stdout=True, stderr=True)
            return
        self._start(container, label, stdout or sys.stdout, stdout=True, stderr=False, stream_filter=stdout_filter)
        self._start(container, label, stderr or sys.stderr, stdout=False, stderr=True)

    def _start(self, container: "Container", label: str, target: TextIO, *, stdout: bool, stderr: bool,
               stream_filter: StreamFilter | None = None) -> None:
        thread = threading.Thread(
            target=self._copy, args=(container, label, target, stdout, stderr, stream_filter), daemon=True
        )
        thread.start()
        self._threads.append((label, thread))

    def _copy(self, container: "Container", label: str, target: TextIO, stdout: bool, stderr: bool,
              stream_filter: StreamFilter | None = None) -> None:
        pending = b""
        with contextlib.suppress(Exception):  # the container may vanish mid-stream
            for chunk in container.logs(stream=True, follow=True, stdout=stdout, stderr=stderr):
                if stream_filter is not None:
                    _emit(target, stream_filter.feed(chunk))
                    continue
                if not self._prefix:
                    _emit(target, chunk)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                with self._lock:
                    for line in lines:
                        target.write(f"{label} | {line.decode(errors='replace')}\n")
                    target.flush()
        if stream_filter is not None:
            # The last line, unfinished: a control message in it is taken all the same.
            _emit(target, stream_filter.end())
        elif pending and self._prefix:
            with self._lock:
                target.write(f"{label} | {pending.decode(errors='replace')}\n")
                target.flush()

    def join(self, timeout: float, label: str | None = None) -> None:
        """Wait up to ``timeout`` seconds for every stream (or those of ``label``) to end."""
        deadline = time.monotonic() + timeout
        for name, thread in self._threads:
            if label is None or name == label:
                thread.join(max(deadline - time.monotonic(), 0))


def first_exit(containers: Iterable["Container"]) -> "queue.Queue[tuple[str, int]]":
    """A queue that receives ``(name, exit code)`` of each container as it exits."""
    results: queue.Queue[tuple[str, int]] = queue.Queue()
    for container in containers:
        threading.Thread(
            target=lambda c=container: results.put((c.name, wait_for_exit(c))), daemon=True
        ).start()
    return results


def image_user(client: "DockerClient", image: str) -> str:
    """The user ``image`` runs as when none is given (its ``USER``; ``""`` is root).

    Raises
    ------
    BadInput
        When the image does not exist locally (nothing is pulled).
    """
    import docker

    try:
        return str(client.images.get(image).attrs.get("Config", {}).get("User") or "")
    except docker.errors.ImageNotFound:
        raise _image_not_found(image) from None
    except docker.errors.APIError as exc:
        if exc.status_code == 400:  # the engine's word for a malformed reference
            raise BadInput(f"{image!r} is not an image name Docker accepts ({one_line(exc)})") from None
        raise InfrastructureError(f"cannot inspect image {image!r}: {one_line(exc)}") from None


#: The most a file read from a container may hold (``/etc/passwd`` is a few KB).
CONTAINER_FILE_MAX_BYTES = 1024 * 1024


def container_file(container: "Container", path: str) -> bytes | None:
    """A regular file of a (created, maybe not started) container, or ``None`` when it
    has none there (or only something else: a directory, a link)."""
    import io
    import tarfile

    import docker

    try:
        stream, stat = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot read {path} of container {container.name}: {one_line(exc)}") from None
    if int(stat.get("size", 0)) > CONTAINER_FILE_MAX_BYTES:
        return None
    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.next()
        if member is None or not member.isfile():
            return None
        handle = archive.extractfile(member)
        return handle.read(CONTAINER_FILE_MAX_BYTES) if handle is not None else None


def image_attributes(client: "DockerClient", image: str) -> dict[str, Any]:
    """``docker image inspect`` of a local image (nothing is pulled).

    Raises
    ------
    BadInput
        When the image does not exist locally or its name is malformed.
    """
    import docker

    try:
        return dict(client.images.get(image).attrs)
    except docker.errors.ImageNotFound:
        raise _image_not_found(image) from None
    except docker.errors.APIError as exc:
        if exc.status_code == 400:
            raise BadInput(f"{image!r} is not an image name Docker accepts ({one_line(exc)})") from None
        raise InfrastructureError(f"cannot inspect image {image!r}: {one_line(exc)}") from None


def image_file(client: "DockerClient", image: str, path: str) -> bytes | None:
    """A regular file of a local image, read from a container that is created and
    removed but never started: nothing of the image runs."""
    import docker

    try:
        container = client.containers.create(image, command=["true"], network_disabled=True)
    except docker.errors.ImageNotFound:
        raise _image_not_found(image) from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot read {path} of image {image!r}: {one_line(exc)}") from None
    try:
        return container_file(container, path)
    finally:
        remove_container(container)
