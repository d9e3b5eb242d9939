"""The host side: ``flowrig run --backend docker`` owns the run's cluster.

:func:`run_in_container` makes a network for the run and starts the flow runner as a
container of the image, with no Docker socket: the flow and its dependencies never get
control of the Docker engine. The runner asks this process for its cluster over its
own stdin and stdout (:mod:`.control`); :class:`HostController` starts the scheduler
and workers as containers of the same image, hands every container the run's
certificates over its stdin (made here, in memory, for this run only), and removes
everything of the run on every way out.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from flowrig.backends.docker import control
from flowrig.backends.docker.naming import check_run_id, container_name, network_name
from flowrig.backends.docker.plans import RUNNER_STOP_TIMEOUT, render_runner
from flowrig.backends.watch import follow
from flowrig.certs import TLSMaterial, delivery
from flowrig.certs.defaults import RUN_DAYS
from flowrig.common.net import is_loopback_url
from flowrig.common.runid import current_run_id
from flowrig.common.signals import shielded, terminating
from flowrig.containers.engine import (
    LogPump,
    StdinWriter,
    attach_stdin,
    connect,
    create_container,
    create_network,
    oom_killed,
    remove_run,
    require_image,
    start_container,
    stop_and_remove,
    wait_for_exit,
)
from flowrig.errors import BadInput, FlowrigError, InfrastructureError, one_line

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from flowrig.backends.docker.cluster import DockerCluster
    from flowrig.backends.watch import ClusterNews
    from flowrig.project import Project

logger = logging.getLogger("flowrig.docker")

#: Seconds between two looks at how many workers have joined.
WORKERS_POLL = 0.05
#: Most pieces of news one message to the runner carries.
NEWS_PER_MESSAGE = 200


class HostController:
    """The host's end of a runner's control channel: it starts and closes the cluster.

    Whatever the runner asks, the cluster is this run's image on this run's network,
    with options validated here as well.
    """

    def __init__(
        self,
        client: "DockerClient",
        run_id: str,
        image: str,
        tls: TLSMaterial,
        stdin: StdinWriter,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.client, self.run_id, self.image, self.tls = client, run_id, image, tls
        # The host's own project says which secrets go to the workers, never the runner.
        self.secrets = dict(secrets or {})
        self._stdin = stdin
        # Held while the cluster is made, so that close() waits for a start under way
        # and closes what it made; after close() no start begins.
        self._lock = threading.Lock()
        self._closed = False
        self.cluster: "DockerCluster | None" = None
        # The cluster's news for the runner, when it asked for them; sent off the
        # cluster's loop, with the worker counts.
        self._news: list[dict[str, Any]] = []
        self._news_lock = threading.Lock()

    def take(self, line: bytes) -> bytes | None:
        """Handle the control message in ``line`` of the runner's stdout, if there is one;
        returns what of the line is the run's own output (``None``: all of it)."""
        output, message = control.split_control(line.rstrip(b"\r\n"))
        if message is None:
            return None
        actions = {"start": self._start, "close": self._close_and_reply}
        action = actions.get(message["op"])
        if action is None:
            self._reply("failed", kind="infrastructure", message=f"unknown request {message['op']!r}")
        else:
            # Starting containers takes seconds: the runner's output keeps flowing meanwhile.
            threading.Thread(target=action, args=(message,), name=f"flowrig-{message['op']}", daemon=True).start()
        return output

    def _reply(self, op: str, **fields: Any) -> None:
        try:
            self._stdin.write(control.encode(op, **fields))
        except InfrastructureError as exc:
            logger.debug("the runner did not take the answer %s: %s", op, exc)

    def _start(self, message: Mapping[str, Any]) -> None:
        try:
            cluster = self._start_cluster(message)
        except FlowrigError as exc:
            self._reply("failed", kind="bad_input" if isinstance(exc, BadInput) else "infrastructure", message=str(exc))
            return
        except Exception as exc:  # a bug or an engine error nobody mapped: still one line
            self._reply("failed", kind="infrastructure", message=f"the cluster could not start: {one_line(exc)}")
            return
        from flowrig.backends.docker.naming import scheduler_address

        self._reply("started", scheduler_address=scheduler_address(self.run_id), dashboard_link=cluster.dashboard_link)
        threading.Thread(target=self._report_workers, args=(cluster,), name="flowrig-workers", daemon=True).start()

    def _report_workers(self, cluster: "DockerCluster") -> None:
        """Tell the runner each time the number of joined workers changes (its timeline
        and progress read it), and the news about its workers, until the cluster closes."""
        reported = 0
        while self.cluster is cluster:
            joined = len(cluster.scheduler_info.get("workers", {}))
            if joined != reported:
                self._reply("workers", joined=joined)
                reported = joined
            self._send_news()
            time.sleep(WORKERS_POLL)

    def _keep_news(self, news: "ClusterNews") -> None:
        with self._news_lock:
            self._news.append(news.to_dict())

    def _send_news(self) -> None:
        with self._news_lock:
            items, self._news = self._news, []
        for at in range(0, len(items), NEWS_PER_MESSAGE):
            self._reply("news", items=items[at:at + NEWS_PER_MESSAGE])

    def _start_cluster(self, message: Mapping[str, Any]) -> "DockerCluster":
        from flowrig.backends.docker.backend import DockerBackend
        from flowrig.backends.docker.cluster import DockerCluster

        options = DockerBackend().parse_options(message.get("options") or {})
        n_workers, threads = message.get("n_workers"), message.get("worker_threads")
        adapt = message.get("adapt")
        worker_env = message.get("worker_env") or {}
        no_client_timeout = message.get("no_client_timeout")
        number = isinstance(no_client_timeout, (int, float)) and not isinstance(no_client_timeout, bool)
        if no_client_timeout is not None and not (number and no_client_timeout > 0):
            raise InfrastructureError(f"the runner asked for a no-client timeout of {no_client_timeout!r}")
        if not (isinstance(n_workers, int) and n_workers >= 0 and isinstance(threads, int) and threads >= 1):
            raise InfrastructureError(f"the runner asked for a cluster of {n_workers!r} workers of {threads!r} threads")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in worker_env.items()):
            raise InfrastructureError("the runner asked for a worker environment that is not text")
        with self._lock:
            if self._closed:
                raise InfrastructureError("the run is ending: no cluster is started")
            if self.cluster is not None:
                raise InfrastructureError("the runner asked for a second cluster")
            cluster = DockerCluster(
                self.image,
                n_workers=n_workers,
                run_id=self.run_id,
                network=network_name(self.run_id),
                publish=True,
                tls=self.tls,
                worker_threads=threads,
                environment={**worker_env, **options.environment},
                secret_environment=self.secrets,
                worker_memory=None if options.worker_memory is None else str(options.worker_memory),
                scheduler_start_timeout=float(options.scheduler_start_timeout),
                no_client_timeout=None if no_client_timeout is None else float(no_client_timeout),
                client=self.client,
            )
            self.cluster = cluster
        if message.get("news") is True:
            follow(cluster, self._keep_news)
        if adapt:
            cluster.adapt(minimum=int(adapt[0]), maximum=int(adapt[1]))
        if n_workers > 0:
            cluster.wait_for_first_workers(1, float(options.start_timeout))
        return cluster

    def _close_and_reply(self, message: Mapping[str, Any]) -> None:
        self.close()
        self._reply("closed")

    def close(self) -> None:
        """Close the cluster, if one started; safe to call more than once."""
        with self._lock:
            cluster, self.cluster, self._closed = self.cluster, None, True
        if cluster is not None:
            try:
                cluster.close()
            except Exception as exc:  # the run's sweep removes what is left
                logger.warning("closing the cluster of run %s failed: %s", self.run_id, one_line(exc))


def _runner_lost(name: str, code: int, oom: bool) -> str:
    try:
        signame = signal.Signals(code - 128).name
    except ValueError:
        signame = f"signal {code - 128}"
    cause = "it ran out of memory" if oom else "killed or stopped from outside the run"
    return f"the runner container {name} ended by {signame} (exit {code}; {cause}); everything of the run is removed"


def _host_project(directory: Path | None) -> "Project | None":
    """The host's project at ``directory``, when there is one (a bad one is bad input)."""
    if directory is None or not directory.exists():
        return None
    from flowrig.project import load_project
    from flowrig.project.defaults import PROJECT_FILE

    if (directory / PROJECT_FILE).is_file() or directory.is_file():
        return load_project(directory)
    return None


def _project_secrets(project: "Project | None") -> dict[str, str]:
    """The values of the host's project's ``[cluster.options] secrets``, from this
    process's environment: the runner container cannot ask for more (it could name
    any variable of the host's)."""
    if project is None or not project.cluster.options.get("secrets"):
        return {}
    from flowrig.backends.docker.backend import DockerBackend, secret_environment

    options = DockerBackend().parse_options(project.cluster.options)
    return secret_environment(options.secrets, os.environ)


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
    timeout: float | None = None,
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
        The runner's exit code: 0 completed, 1 flow failed, 2 bad input, 3 infrastructure,
        124 the run's timeout passed.

    Raises
    ------
    BadInput
        Bad parameters, no image given, or the image does not exist locally.
    InfrastructureError
        Docker is not reachable, the runner container cannot be created or started, or
        it was killed (``docker kill``, out of memory) or stopped from outside the run.
    """
    from flowrig.project import parameters as params_mod

    parameters = params_mod.gather(params, params_file)
    project = project or _host_project(Path(directory) if directory is not None else None)
    image = _host_image(Path(directory) if directory is not None else None, project, image)
    run_secrets = _project_secrets(project)
    client = connect()
    require_image(client, image)
    run_id = check_run_id(current_run_id())
    plan = render_runner(run_id, image, output=output, verbosity=verbosity, environ=os.environ, timeout=timeout)
    if is_loopback_url(os.environ.get("PREFECT_API_URL")):
        logger.warning("PREFECT_API_URL points at this machine's loopback, which containers cannot reach")
    secrets = {name: os.environ[name] for name in control.SECRET_PASSTHROUGH if os.environ.get(name)}
    secrets.update(run_secrets)
    # The run's certificates, made here for this run only; the leaf names the runner
    # too, so the run's API serves HTTPS with it.
    tls = TLSMaterial.ephemeral(hosts=[container_name(run_id, "runner")], days=RUN_DAYS)
    runner: "Container | None" = None
    controller: HostController | None = None
    stdin: StdinWriter | None = None
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
            stdin = attach_stdin(runner)
            stdin.write(delivery.encode(tls))
            stdin.write(control.encode("parameters", parameters=parameters, environment=secrets))
            controller = HostController(client, run_id, image, tls, stdin, run_secrets)
            pump = LogPump()
            pump.follow(runner, take=controller.take)
            code = wait_for_exit(runner)
            finished = True
            pump.join(timeout=10)
            if code > 128:
                # Killed (docker kill, the OOM killer) or stopped by someone else: the
                # runner could not say why, so the host does; the cluster goes below.
                raise InfrastructureError(_runner_lost(plan.name, code, oom_killed(runner)))
            return code
        finally:
            with shielded():
                if runner is not None and not finished:
                    # Interrupted: the runner finishes its run first (its teardown asks
                    # the controller to close the cluster).
                    stop_and_remove(runner, timeout=RUNNER_STOP_TIMEOUT)
                if controller is not None:
                    controller.close()
                if stdin is not None:
                    stdin.close()
                remove_run(client, run_id)
