"""A container from its plan to its exit: create, start, its stdin, its readiness, its end."""

from __future__ import annotations

import contextlib
import queue
import re
import socket
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Iterable

from flowrig.containers.engine.client import image_not_found, log_tail
from flowrig.containers.owner import LABEL_OWNER, current_label
from flowrig.containers.plans import ContainerPlan
from flowrig.errors import InfrastructureError, one_line

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container


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
            nano_cpus=round(plan.cpus * 1e9) if plan.cpus else None,
            device_requests=[docker.types.DeviceRequest(count=plan.gpus, capabilities=[["gpu"]])]
            if plan.gpus else None,
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
        raise image_not_found(plan.image) from None
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
        self._raw = getattr(self._socket, "_sock", self._socket)
        self._send = self._raw.sendall
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
        with self._lock:
            # Closing the SocketIO alone leaves the connection open (docker-py's response
            # still holds the socket), and the container would never read end of file:
            # half-close it, which the engine passes on as the end of its stdin.
            with contextlib.suppress(OSError, AttributeError):
                self._raw.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                self._socket.close()
            with contextlib.suppress(OSError):
                self._raw.close()


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


def first_exit(containers: Iterable["Container"]) -> "queue.Queue[tuple[str, int]]":
    """A queue that receives ``(name, exit code)`` of each container as it exits."""
    results: queue.Queue[tuple[str, int]] = queue.Queue()
    for container in containers:
        threading.Thread(
            target=lambda c=container: results.put((c.name, wait_for_exit(c))), daemon=True
        ).start()
    return results


#: The engine's time of something that has not happened (``FinishedAt`` of a running container).
_ZERO_TIME = "0001-01-01"
_ENGINE_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def engine_time(text: object) -> float | None:
    """An engine timestamp (RFC 3339 with nanoseconds, ``2026-12-07T02:10:11.123456789Z``)
    as wall-clock seconds; ``None`` for its zero time or anything else."""
    match = _ENGINE_TIME.match(text) if isinstance(text, str) else None
    if match is None or text.startswith(_ZERO_TIME):  # type: ignore[union-attr]
        return None
    whole, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def lifetime(container: "Container") -> tuple[float | None, float | None]:
    """When the container started and finished, by the engine's own clock
    (``State.StartedAt``/``FinishedAt``); ``None`` for what has not happened, or for
    both once it is gone. Read it before the container is removed."""
    try:
        container.reload()
        state = container.attrs["State"]
    except Exception:  # gone already: nothing more to learn
        return None, None
    return engine_time(state.get("StartedAt")), engine_time(state.get("FinishedAt"))


def limits(container: "Container") -> tuple[float | None, int | None]:
    """The container's CPU and memory limits (vCPUs, bytes); ``None`` where it has none."""
    try:
        host = container.attrs.get("HostConfig") or {}
    except Exception:
        return None, None
    nano = host.get("NanoCpus") or 0
    memory = host.get("Memory") or 0
    return (nano / 1e9 if nano else None), (int(memory) if memory else None)


def gpu_runtime(client: "DockerClient") -> bool:
    """Whether the engine can give containers GPUs: it has NVIDIA's runtime (the NVIDIA
    Container Toolkit), which serves ``--gpus`` device requests."""
    return "nvidia" in (client.info().get("Runtimes") or {})


def engine_resources(client: "DockerClient") -> tuple[int, int]:
    """The engine's CPUs and memory in bytes (what a container without limits may use);
    ``(0, 0)`` when the engine does not say."""
    try:
        info = client.info()
        return int(info.get("NCPU") or 0), int(info.get("MemTotal") or 0)
    except Exception:
        return 0, 0
