"""The host side: ``flowrig run --backend docker`` runs the flow runner in a container.

:func:`run_in_container` makes a network for the run and starts the runner as a
container of the image, with the Docker socket mounted, then streams its output and
removes everything of the run on every way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from flowrig import defaults
from flowrig.backends._util import is_loopback_url
from flowrig.backends.docker.engine import (
    connect,
    create_container,
    create_network,
    remove_run,
    require_image,
    start_container,
    stop_and_remove,
)
from flowrig.backends.docker.naming import ENV_RUN_ID, check_run_id, network_name, new_run_id
from flowrig.backends.docker.plans import render_runner
from flowrig.errors import BadInput

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

logger = logging.getLogger("flowrig.docker")


def _socket_of(client: "DockerClient") -> tuple[str, int | None]:
    """Path and group of the daemon's Unix socket, to mount into the runner container."""
    base = str(client.api.base_url)
    host = os.environ.get("DOCKER_HOST", "")
    path = host[len("unix://"):] if host.startswith("unix://") else defaults.DOCKER_SOCKET
    if not (base.startswith("http+docker://") and Path(path).exists()):
        raise BadInput(
            f"the docker backend mounts the Docker socket into the runner container, but Docker is "
            f"reached at {host or base}: use a local daemon through a Unix socket"
        )
    return path, os.stat(path).st_gid


def _host_image(project: str | Path | None, image: str | None) -> str:
    """The image to run: ``--image``, else ``[cluster] image`` of the host's project."""
    if image:
        return image
    if project is not None:
        path = Path(project)
        if not path.exists():
            raise BadInput(f"project directory {str(path)!r} does not exist")
        if (path / defaults.PROJECT_FILE).is_file() or path.is_file():
            from flowrig.project import load_project

            found = load_project(path).cluster.image
            if found:
                return found
    raise BadInput(
        "the docker backend needs an image: pass --image TAG or set [cluster] image; "
        "build one with flowrig build PROJECT --tag TAG"
    )


class _LogPump:
    """Copies a container's stdout to ours and its stderr to our stderr, as it comes."""

    def __init__(self, container: "Container") -> None:
        self.threads = [
            threading.Thread(target=self._copy, args=(container, True, sys.stdout), daemon=True),
            threading.Thread(target=self._copy, args=(container, False, sys.stderr), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _copy(container: "Container", stdout: bool, target: Any) -> None:
        sink = getattr(target, "buffer", None)
        with contextlib.suppress(Exception):  # the container may vanish mid-stream
            for chunk in container.logs(stream=True, follow=True, stdout=stdout, stderr=not stdout):
                if sink is not None:
                    sink.write(chunk)
                else:
                    target.write(chunk.decode(errors="replace"))
                target.flush()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """SIGTERM raises :class:`flowrig.errors.Terminated`, so ``finally`` blocks tear down."""
    from flowrig.errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM during teardown must not leave half a run behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_in_container(
    project: str | Path | None,
    *,
    image: str | None,
    params: Iterable[str] = (),
    params_file: str | Path | None = None,
    output: str = "text",
) -> int:
    """Run the image's flow once, with the runner in a container: ``flowrig run --backend docker``.

    The image carries its project, so ``project`` only supplies ``[cluster] image`` when
    ``image`` is not given; rebuild the image after editing the project. Parameters are
    read here (bad JSON fails before anything starts) and validated by the runner.

    The runner's stdout goes to stdout (with ``--output json`` its last line is the
    outcome) and its stderr to stderr. On every way out (success, failure, an
    exception, Ctrl-C, SIGTERM) every container labelled with the run id and the run's
    network are removed; after Ctrl-C or SIGTERM the runner first gets
    :data:`~flowrig.defaults.DOCKER_RUNNER_STOP_TIMEOUT` seconds to stop its cluster.

    Returns
    -------
    int
        The runner's exit code: 0 completed, 1 flow failed, 2 bad input, 3 infrastructure.

    Raises
    ------
    BadInput
        Bad parameters, no image given, or the image does not exist locally.
    InfrastructureError
        Docker is not reachable, or the runner container cannot be created or started.
    """
    from flowrig import parameters as params_mod

    parameters = params_mod.gather(params, params_file)
    image = _host_image(project, image)
    client = connect()
    require_image(client, image)
    socket_path, socket_gid = _socket_of(client)
    run_id = check_run_id(os.environ.get(ENV_RUN_ID) or new_run_id())
    plan = render_runner(
        run_id,
        image,
        parameters=parameters,
        output=output,
        socket_path=socket_path,
        socket_gid=socket_gid,
        environ=os.environ,
    )
    if is_loopback_url(os.environ.get("PREFECT_API_URL")):
        logger.warning("PREFECT_API_URL points at this machine's loopback, which containers cannot reach")
    runner: "Container | None" = None
    finished = False
    with _sigterm_as_exception():
        try:
            create_network(client, network_name(run_id), run_id)
            runner = create_container(client, plan)
            print(
                f"flowrig run {run_id}: runner container {plan.name} of {image} on network {plan.network}",
                file=sys.stderr,
                flush=True,
            )
            start_container(runner)
            pump = _LogPump(runner)
            code = int(runner.wait()["StatusCode"])
            finished = True
            pump.join(timeout=10)
            return code
        finally:
            with _signals_ignored():
                if runner is not None and not finished:
                    # Interrupted: the runner tears its own cluster down first.
                    stop_and_remove(runner, timeout=defaults.DOCKER_RUNNER_STOP_TIMEOUT)
                remove_run(client, run_id)
