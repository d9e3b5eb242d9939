"""The host side: ``flowrig run --backend docker`` runs the flow runner in a container.

:func:`run_in_container` makes a network for the run and starts the runner as a
container of the image, with the Docker socket mounted, then streams its output and
removes everything of the run on every way out.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from flowrig.backends.docker.naming import check_run_id, network_name
from flowrig.backends.docker.plans import DOCKER_SOCKET, RUNNER_STOP_TIMEOUT, render_runner
from flowrig.common.net import is_loopback_url
from flowrig.common.runid import current_run_id
from flowrig.common.signals import shielded, terminating
from flowrig.containers.engine import (
    LogPump,
    connect,
    create_container,
    create_network,
    remove_run,
    require_image,
    start_container,
    stop_and_remove,
    wait_for_exit,
)
from flowrig.errors import BadInput

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from flowrig.project import Project

logger = logging.getLogger("flowrig.docker")


def _socket_of(client: "DockerClient") -> tuple[str, int | None]:
    """Path and group of the daemon's Unix socket, to mount into the runner container."""
    base = str(client.api.base_url)
    host = os.environ.get("DOCKER_HOST", "")
    path = host[len("unix://"):] if host.startswith("unix://") else DOCKER_SOCKET
    if not (base.startswith("http+docker://") and Path(path).exists()):
        raise BadInput(
            f"the docker backend mounts the Docker socket into the runner container, but Docker is "
            f"reached at {host or base}: use a local daemon through a Unix socket"
        )
    return path, os.stat(path).st_gid


def _host_image(directory: Path | None, project: "Project | None", image: str | None) -> str:
    """The image to run: ``--image``, else ``[cluster] image`` of the host's project."""
    if image:
        return image
    if project is None and directory is not None:
        if not directory.exists():
            raise BadInput(f"project directory {str(directory)!r} does not exist")
        from flowrig.project import load_project
        from flowrig.project.defaults import PROJECT_FILE

        if (directory / PROJECT_FILE).is_file() or directory.is_file():
            project = load_project(directory)
    if project is not None and project.cluster.image:
        return project.cluster.image
    raise BadInput(
        "the docker backend needs an image: pass --image TAG or set [cluster] image; "
        "build one with flowrig build PROJECT --tag TAG"
    )


def run_in_container(
    directory: str | Path | None,
    *,
    project: "Project | None" = None,
    image: str | None,
    params: Iterable[str] = (),
    params_file: str | Path | None = None,
    output: str = "text",
    verbosity: str = "normal",
) -> int:
    """Run the image's flow once, with the runner in a container: ``flowrig run --backend docker``.

    The image carries its project, so the host's project only supplies ``[cluster]
    image`` when ``image`` is not given (``project``, when the caller read it already,
    else read from ``directory``); rebuild the image after editing the project.
    Parameters are read here (bad JSON fails before anything starts) and validated by
    the runner.

    The runner's stdout goes to stdout (with ``--output json`` its last line is the
    outcome) and its stderr to stderr. On every way out (success, failure, an
    exception, Ctrl-C, SIGTERM) every container labelled with the run id and the run's
    network are removed; after Ctrl-C or SIGTERM the runner first gets
    :data:`~flowrig.backends.docker.plans.RUNNER_STOP_TIMEOUT` seconds to stop its cluster.

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
    from flowrig.project import parameters as params_mod

    parameters = params_mod.gather(params, params_file)
    image = _host_image(Path(directory) if directory is not None else None, project, image)
    client = connect()
    require_image(client, image)
    socket_path, socket_gid = _socket_of(client)
    run_id = check_run_id(current_run_id())
    plan = render_runner(
        run_id,
        image,
        parameters=parameters,
        output=output,
        verbosity=verbosity,
        socket_path=socket_path,
        socket_gid=socket_gid,
        environ=os.environ,
    )
    if is_loopback_url(os.environ.get("PREFECT_API_URL")):
        logger.warning("PREFECT_API_URL points at this machine's loopback, which containers cannot reach")
    runner: "Container | None" = None
    finished = False
    with terminating():
        try:
            create_network(client, network_name(run_id), run_id)
            runner = create_container(client, plan)
            print(
                f"flowrig run {run_id}: runner container {plan.name} of {image} on network {plan.network}",
                file=sys.stderr,
                flush=True,
            )
            start_container(runner)
            pump = LogPump()
            pump.follow(runner)
            code = wait_for_exit(runner)
            finished = True
            pump.join(timeout=10)
            return code
        finally:
            with shielded():
                if runner is not None and not finished:
                    # Interrupted: the runner tears its own cluster down first.
                    stop_and_remove(runner, timeout=RUNNER_STOP_TIMEOUT)
                remove_run(client, run_id)
