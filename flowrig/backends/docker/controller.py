"""The host side of a docker run: :class:`HostController` owns the run's cluster.

The runner container that :mod:`flowrig.run.in_container` starts has no Docker socket:
the flow and its dependencies never get control of the Docker engine. The runner asks
this process for its cluster over its control channel (:mod:`.control`);
:class:`HostController` decides every request against the limits of the project baked
into the image (:mod:`.policy`), starts the scheduler and workers as containers of the
same image, hands every container the run's certificates over its stdin, says when a
worker runs out of memory (:mod:`.memory`), and closes or aborts the cluster when the
run ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flowrig import layout
from flowrig.backends.docker import control
from flowrig.backends.docker.memory import MemoryWatch
from flowrig.backends.docker.naming import network_name, scheduler_address
from flowrig.backends.docker.policy import Refusal, RunnerLimits, StartRequest, summary
from flowrig.backends.watch import follow
from flowrig.certs import TLSMaterial
from flowrig.containers.engine import (
    StdinWriter,
    container_file,
    remove_run,
    run_containers,
)
from flowrig.errors import BadInput, FlowrigError, InfrastructureError, one_line
from flowrig.project.defaults import PROJECT_FILE

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from flowrig.backends.docker.cluster import DockerCluster
    from flowrig.backends.usage import RoleLife
    from flowrig.backends.watch import ClusterNews

logger = logging.getLogger("flowrig.docker")

#: Seconds between two looks at how many workers have joined.
WORKERS_POLL = 0.05
#: Most pieces of news one message to the runner carries.
NEWS_PER_MESSAGE = 200
#: Seconds between two looks at the scheduler's memory restarts.
MEMORY_POLL = 1.0
#: Seconds an interrupted run waits for a cluster start under way to give up (its
#: containers were removed under it) before it sweeps again.
START_ABORT_WAIT = 5.0
#: Refusals said one by one; beyond them, one line says that more are not shown.
REFUSALS_SHOWN = 10
#: The project file in an image, which the host reads for the run's limits.
IMAGE_PROJECT_FILE = layout.IMAGE_PROJECT_DIR / PROJECT_FILE


def leftovers_command(run_id: str) -> str:
    """The command that removes what a run left."""
    return f"flowrig docker leftovers --run-id {run_id} --remove"


class HostController:
    """The host's end of a runner's control channel: it starts and closes the cluster.

    Every request is checked here, whoever made it: its signature (:mod:`.control`),
    its sequence number, and what it asks for against ``limits``. The host starts one
    cluster and closes it once; a refused request is named in the run's output.
    """

    def __init__(
        self,
        client: "DockerClient",
        run_id: str,
        image: str,
        tls: TLSMaterial,
        stdin: StdinWriter,
        *,
        key: bytes,
        limits: RunnerLimits,
        say: Callable[[str], None],
        secrets: Mapping[str, str] | None = None,
        runner_life: "RoleLife | None" = None,
    ) -> None:
        self.client, self.run_id, self.image, self.tls = client, run_id, image, tls
        #: The runner container's life so far (its end is the runner's to see).
        self.runner_life = runner_life
        self.limits = limits
        self.say = say
        # The host's own project says which secrets go to the workers: the runner
        # cannot ask for any (it could name any variable of the host's).
        self.secrets = dict(secrets or {})
        self._stdin = stdin
        self._key = key
        self._lock = threading.Lock()
        self._seq = 0
        self._start_taken = False
        self._close_taken = False
        self._closed = False
        self._told_unsigned = False
        #: Requests refused so far.
        self.refused = 0
        self.cluster: "DockerCluster | None" = None
        self._clusters: list["DockerCluster"] = []
        self._starting: threading.Thread | None = None
        self.memory = MemoryWatch(client, run_id, say)
        # The cluster's news for the runner, when it asked for them; sent off the
        # cluster's loop, with the worker counts.
        self._news: list[dict[str, Any]] = []
        self._news_lock = threading.Lock()

    def stdout_filter(self) -> control.Demux:
        """What the runner's stdout goes through: the run's output, its requests apart."""
        return control.Demux(self._on_message, self._on_printed)

    # --- what arrives --------------------------------------------------------------

    def _refuse(self, text: str) -> None:
        with self._lock:
            self.refused += 1
            shown = self.refused
        if shown <= REFUSALS_SHOWN:
            self.say(text)
        elif shown == REFUSALS_SHOWN + 1:
            self.say("more requests were refused; they are not shown")

    def _on_printed(self, printed: bytes) -> None:
        # Printed by the run (a parameter echoed, a line at import time): output, never
        # a request, since the runner's requests never pass through the run's output.
        payload = printed[len(control.PREFIX):]
        self._refuse(
            f"ignored a control request the run printed ({control.describe(payload)}): "
            "the host takes requests only from the runner's own channel"
        )

    def _on_message(self, payload: bytes) -> None:
        try:
            message = control.open_message(self._key, payload)
        except control.Refused as exc:
            self._refuse(f"refused a control message ({control.describe(payload)}): {exc}")
            if not self._told_unsigned:
                # An image whose flowrig is older than the host's waits for an answer.
                self._told_unsigned = True
                self._reply(
                    "failed", kind="bad_input",
                    message=f"the host refused a request of this runner ({exc}): rebuild the image with "
                    "the flowrig that runs it (flowrig build)",
                )
            return
        seq, op = message["seq"], message["op"]
        with self._lock:
            stale = seq <= self._seq
            self._seq = max(self._seq, seq)
        if stale:
            self._refuse(f"refused the request {summary(message)}: its sequence number {seq} was used before")
            return
        if op == "start":
            self._take_start(message)
        elif op == "close":
            self._take_close(message)
        else:
            self._refuse(f"refused the request {summary(message)}: no such request")
            self._reply("failed", re=seq, kind="infrastructure", message=f"unknown request {op!r}")

    def _take_start(self, message: Mapping[str, Any]) -> None:
        seq = message["seq"]
        try:
            request = self.limits.check_start(message)
        except Refusal as exc:
            self._refuse(f"refused the runner's request {summary(message)}: {exc}")
            self._reply(
                "failed", re=seq, kind="bad_input", message=f"the host refused the cluster this run asked for: {exc}"
            )
            return
        with self._lock:
            why = (
                "the run is ending" if self._closed
                else "a second start: a run gets one cluster" if self._start_taken else None
            )
            if why is None:
                self._start_taken = True
        if why is not None:
            self._refuse(f"refused the runner's request {summary(message)}: {why}")
            self._reply("failed", re=seq, kind="infrastructure", message=f"the host refused to start a cluster: {why}")
            return
        # Starting containers takes seconds: the runner's output keeps flowing meanwhile.
        self._starting = threading.Thread(target=self._start, args=(request, seq), name="flowrig-start", daemon=True)
        self._starting.start()

    def _take_close(self, message: Mapping[str, Any]) -> None:
        seq = message["seq"]
        with self._lock:
            second, self._close_taken = self._close_taken, True
        if second:
            self._refuse(f"refused the runner's request {summary(message)}: its cluster was closed once")
            self._reply("failed", re=seq, kind="infrastructure", message="the cluster was closed already")
            return

        def close() -> None:
            self.close()
            self._reply("closed", re=seq, lives=[life.to_dict() for life in self.lives()])

        threading.Thread(target=close, name="flowrig-close", daemon=True).start()

    def _reply(self, op: str, **fields: Any) -> None:
        try:
            self._stdin.write(control.encode(op, **fields))
        except InfrastructureError as exc:
            logger.debug("the runner did not take the answer %s: %s", op, exc)

    # --- the cluster ---------------------------------------------------------------

    def _start(self, request: StartRequest, seq: int) -> None:
        try:
            cluster = self._start_cluster(request)
        except FlowrigError as exc:
            self._reply("failed", re=seq, kind="bad_input" if isinstance(exc, BadInput) else "infrastructure",
                        message=str(exc))
            return
        except Exception as exc:  # a bug or an engine error nobody mapped: still one line
            self._reply(
                "failed", re=seq, kind="infrastructure", message=f"the cluster could not start: {one_line(exc)}"
            )
            return
        # The marks go on the wall clock, which the runner's container shares with this process.
        now, wall = time.perf_counter(), time.time()
        marks = {key: wall - (now - at) for key, at in cluster.start_marks.items()}
        self._reply(
            "started", re=seq, scheduler_address=scheduler_address(self.run_id), dashboard_link=cluster.dashboard_link,
            marks=marks,
        )
        threading.Thread(target=self._watch, args=(cluster,), name="flowrig-workers", daemon=True).start()

    def _watch(self, cluster: "DockerCluster") -> None:
        """Tell the runner each time the number of joined workers changes (its timeline
        and progress read it), the news about its workers when the runner asked for
        them, and look for memory restarts, until the cluster closes."""
        reported = 0
        polled = time.monotonic()
        while self.cluster is cluster:
            workers = cluster.scheduler_info.get("workers", {})
            self.memory.note_workers(workers)
            if len(workers) != reported:
                reported = len(workers)
                self._reply("workers", joined=reported)
            if time.monotonic() - polled >= MEMORY_POLL:
                polled = time.monotonic()
                self.memory.poll(cluster)
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

    def _start_cluster(self, request: StartRequest) -> "DockerCluster":
        from flowrig.backends.docker.cluster import DockerCluster
        from flowrig.backends.docker.group_workers import check_gpu_runtime

        options = request.options
        self.memory.limit = None if options.worker_memory is None else str(options.worker_memory)
        check_gpu_runtime(self.client, request.groups)
        cluster = DockerCluster(
            self.image,
            n_workers=request.n_workers,
            groups=request.groups,
            run_id=self.run_id,
            network=network_name(self.run_id),
            publish=True,
            tls=self.tls,
            worker_threads=request.worker_threads,
            environment=request.environment,
            secret_environment=self.secrets,
            worker_memory=self.memory.limit,
            scheduler_start_timeout=float(options.scheduler_start_timeout),
            no_client_timeout=request.no_client_timeout,
            drain_timeout=float(options.drain_timeout),
            client=self.client,
        )
        with self._lock:
            self._clusters.append(cluster)
            keep = not self._closed
            if keep:
                self.cluster = cluster
        if not keep:
            # The run ended while the cluster started: it goes at once.
            cluster.abort()
            raise InfrastructureError("the run is ending: its cluster is removed")
        if request.news:
            follow(cluster, self._keep_news)
        if request.adapt:
            cluster.adapt(minimum=request.adapt[0], maximum=request.adapt[1])
        if request.n_workers > 0:
            # Every worker it starts with; every group's, or a group's tasks could wait for ever.
            cluster.wait_for_first_workers(
                request.n_workers, float(options.start_timeout), all_of_them=bool(request.groups)
            )
        return cluster

    def close(self) -> None:
        """Close the cluster gracefully, if one started; safe to call more than once."""
        with self._lock:
            cluster, self.cluster, self._closed = self.cluster, None, True
        if cluster is not None:
            self.memory.poll(cluster)  # the last restarts, while the scheduler answers
            try:
                cluster.close()
            except Exception as exc:  # the run's sweep removes what is left
                logger.warning("closing the cluster of run %s failed: %s", self.run_id, one_line(exc))
        self.memory.stop()

    def lives(self) -> list["RoleLife"]:
        """The lives of the run's containers: the runner's, and those of every cluster
        started (complete once it is closed)."""
        with self._lock:
            clusters = list(self._clusters)
        found = [self.runner_life] if self.runner_life is not None else []
        for cluster in clusters:
            found += cluster.life_log.lives()
        return found

    def abort(self) -> None:
        """Remove the cluster's containers at once (an interrupted run); nothing of it
        starts again, and a start under way removes what it made."""
        with self._lock:
            self.cluster, self._closed = None, True
            clusters = list(self._clusters)
        self.memory.stop()
        for cluster in clusters:
            try:
                cluster.abort()
            except Exception as exc:  # the run's sweep removes what is left
                logger.debug("aborting the cluster of run %s: %s", self.run_id, one_line(exc))
        remove_run(self.client, self.run_id, roles=("scheduler", "worker"), network=False)
        starting = self._starting
        if starting is not None and starting.is_alive():
            # A start under way may create a container after that sweep; with its
            # scheduler gone it fails within a second or two and removes what it made.
            starting.join(START_ABORT_WAIT)
            remove_run(self.client, self.run_id, roles=("scheduler", "worker"), network=False)


def image_limits(runner: "Container", run_id: str, image: str) -> RunnerLimits:
    """The limits of the project baked into the image, read from the runner's
    container before it starts (nothing of the run has run yet)."""
    where = f"{IMAGE_PROJECT_FILE} in {image}"
    text = container_file(runner, str(IMAGE_PROJECT_FILE))
    if text is None:
        raise BadInput(
            f"{where} is missing or not a regular file: the host reads the run's limits there; "
            "rebuild the image with flowrig build"
        )
    return RunnerLimits.from_toml(run_id, text, where)


def inventory(client: "DockerClient", run_id: str) -> str:
    """What of a run is there, in words: ``the runner, the scheduler and 2 workers``."""
    roles = [c.labels.get("flowrig.role", "?") for c in run_containers(client, run_id)]
    parts = [f"the {role}" for role in ("runner", "scheduler") if role in roles]
    workers = roles.count("worker")
    if workers:
        parts.append(f"{workers} worker{'s' if workers > 1 else ''}")
    if not parts:
        return "its network"
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def left_behind(client: "DockerClient", run_id: str) -> list[str]:
    try:
        return [c.name for c in run_containers(client, run_id)]
    except Exception:  # the engine does not answer: say the command anyway
        return ["(the engine did not say)"]
