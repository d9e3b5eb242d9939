"""The runner in a container: ``flowrig run --backend docker`` on a host.

:func:`run_in_container` makes a network for the run and starts the flow runner as a
container of the image, with no Docker socket. It hands the runner its certificates
(made here, in memory, for this run only), its parameters and its secrets over the
runner's stdin, and serves the runner's requests for a cluster through a
:class:`~flowrig.backends.docker.controller.HostController`. Everything of the run is
removed on every way out: within seconds after Ctrl-C or SIGTERM, at once after a
second one.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flowrig.backends.docker import control
from flowrig.backends.docker.controller import (
    HostController,
    image_limits,
    inventory,
    left_behind,
    leftovers_command,
)
from flowrig.backends.docker.group_workers import check_gpu_runtime
from flowrig.backends.docker.lives import container_life
from flowrig.backends.docker.naming import check_run_id, container_name, network_name
from flowrig.backends.docker.plans import RUNNER_INTERRUPT_GRACE, render_runner
from flowrig.certs import TLSMaterial, delivery
from flowrig.certs.defaults import RUN_DAYS
from flowrig.common.net import is_loopback_url
from flowrig.common.runid import current_run_id
from flowrig.common.signals import Escalated, hurried, signal_name, terminating
from flowrig.containers.engine import (
    LogPump,
    StdinWriter,
    attach_stdin,
    connect,
    create_container,
    create_network,
    engine_resources,
    oom_killed,
    remove_run,
    require_image,
    start_container,
    stop_and_remove,
    wait_for_exit,
)
from flowrig.errors import BadInput, InfrastructureError, Terminated

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from flowrig.common.deadline import RunDeadline
    from flowrig.containers.plans import ContainerPlan
    from flowrig.project import Project
    from flowrig.run.launch import RunInputs

logger = logging.getLogger("flowrig.docker")

#: Seconds an interrupted run waits for the runner's last lines to be copied.
RUNNER_LAST_WORDS = 1.0


def run_in_container(inputs: "RunInputs", project: "Project | None", deadline: "RunDeadline | None" = None) -> int:
    """Run the image's flow once, with the runner in a container: ``flowrig run --backend docker``.

    A front end of the run path that takes the command line's inputs whole. The image
    carries its project, so the host's ``project`` (read by the caller, ``None`` when
    there is none) only supplies ``[cluster] image`` when ``inputs.image`` is not given
    and the values of its ``[cluster.options] secrets``; rebuild the image after
    editing the project. The limits every request of the runner is held to are those
    of the project in the image, which the host reads before the runner starts.
    Parameters are read here (bad JSON fails before anything starts) and validated by
    the runner; ``--output``, the verbosity, ``--timeout`` and the strictness the host
    decided reach the runner as its command line.

    The runner's stdout goes to stdout (with ``--output json`` its last line is the
    outcome) and its stderr to stderr. On every way out (success, failure, an
    exception, Ctrl-C, SIGTERM) every container labelled with the run id and the run's
    network are removed (``deadline``, the command's own, passing is such a SIGTERM):
    after Ctrl-C or SIGTERM within
    :data:`~flowrig.backends.docker.plans.RUNNER_INTERRUPT_GRACE` seconds and a few
    more, at once after a second one.

    Returns
    -------
    int
        The runner's exit code: 0 completed, 1 flow failed, 2 bad input, 3 infrastructure,
        124 the run's timeout passed.

    Raises
    ------
    BadInput
        Bad parameters, no image given, the image does not exist locally, or its
        project file is not valid.
    InfrastructureError
        Docker is not reachable, the runner container cannot be created or started, or
        it was killed (``docker kill``, out of memory) or stopped from outside the run.
    """
    from flowrig.project import parameters as params_mod

    parameters = params_mod.gather(inputs.params, inputs.params_file)
    image = _host_image(Path(inputs.project_dir), project, inputs.image)
    run_secrets = _project_secrets(project)
    client = connect()
    require_image(client, image)
    run_id = check_run_id(current_run_id())
    plan = render_runner(
        run_id, image, output=inputs.output, verbosity=inputs.verbosity.name.lower(), environ=os.environ,
        timeout=inputs.timeout, strict=inputs.strict,
    )
    if is_loopback_url(os.environ.get("PREFECT_API_URL")):
        logger.warning("PREFECT_API_URL points at this machine's loopback, which containers cannot reach")
    secrets = {name: os.environ[name] for name in control.SECRET_PASSTHROUGH if os.environ.get(name)}
    secrets.update(run_secrets)
    # The run's certificates, made here for this run only; the leaf names the runner
    # too, so the run's API serves HTTPS with it.
    tls = TLSMaterial.ephemeral(hosts=[container_name(run_id, "runner")], days=RUN_DAYS)
    key = control.new_key()

    def say(text: str) -> None:
        print(f"flowrig run {run_id}: {text}", file=sys.stderr, flush=True)

    teardown = _Teardown(client, run_id, say, timed_out=lambda: deadline is not None and deadline.fired)
    interrupted: int | None = None
    with terminating():
        try:
            return _serve(client, plan, image, tls, key, parameters, secrets, run_secrets, teardown, say)
        except KeyboardInterrupt:
            interrupted = signal.SIGINT
            raise
        except Terminated as exc:
            interrupted = exc.signum
            raise
        finally:
            teardown(interrupted, teardown.runner_running)


def _serve(
    client: "DockerClient",
    plan: "ContainerPlan",
    image: str,
    tls: TLSMaterial,
    key: bytes,
    parameters: Mapping[str, Any],
    secrets: Mapping[str, str],
    run_secrets: Mapping[str, str],
    teardown: _Teardown,
    say: Callable[[str], None],
) -> int:
    """Start the runner, hand it its inputs and serve its requests; its exit code."""
    run_id = teardown.run_id
    create_network(client, network_name(run_id), run_id)
    runner = teardown.runner = create_container(client, plan)
    limits = image_limits(runner, run_id, image)
    # Before the runner starts: worker groups with GPUs on an engine without them.
    check_gpu_runtime(client, limits.cluster.worker_groups)
    print(
        f"flowrig run {run_id}: runner container {plan.name} of {image} on network {plan.network}",
        file=sys.stderr,
        flush=True,
    )
    start_container(runner)
    teardown.runner_running = True
    stdin = teardown.stdin = attach_stdin(runner)
    stdin.write(delivery.encode(tls))
    stdin.write(control.encode("parameters", parameters=parameters, environment=secrets, key=key.hex()))
    controller = teardown.controller = HostController(
        client, run_id, image, tls, stdin, key=key, limits=limits, say=say, secrets=run_secrets,
        runner_life=container_life(runner, "runner", engine_resources(client)),
    )
    pump = teardown.pump = LogPump()
    pump.follow(runner, stdout_filter=controller.stdout_filter())
    code = wait_for_exit(runner)
    teardown.runner_running = False
    pump.join(timeout=10)
    last_word = controller.memory.summary()
    if last_word:
        say(last_word)
    if code > 128:
        # Killed (docker kill, the OOM killer) or stopped by someone else: the
        # runner could not say why, so the host does; the cluster goes below.
        raise InfrastructureError(_runner_lost(plan.name, code, oom_killed(runner)))
    return code


def _runner_lost(name: str, code: int, oom: bool) -> str:
    try:
        signame = signal.Signals(code - 128).name
    except ValueError:
        signame = f"signal {code - 128}"
    cause = "it ran out of memory" if oom else "killed or stopped from outside the run"
    return f"the runner container {name} ended by {signame} (exit {code}; {cause}); everything of the run is removed"


def _project_secrets(project: "Project | None") -> dict[str, str]:
    """The values of the host's project's ``[cluster.options] secrets``, from this
    process's environment: the runner container cannot ask for more (it could name
    any variable of the host's)."""
    if project is None or not project.cluster.options.get("secrets"):
        return {}
    from flowrig.backends.docker.backend import DockerBackend, secret_environment

    options = DockerBackend().parse_options(project.cluster.options)
    return secret_environment(options.secrets, os.environ)


def _host_image(directory: Path, project: "Project | None", image: str | None) -> str:
    """The image to run: ``--image``, else ``[cluster] image`` of the host's project."""
    if image:
        return image
    if project is None and not directory.exists():
        raise BadInput(f"project directory {str(directory)!r} does not exist")
    if project is not None and project.cluster.image:
        return project.cluster.image
    raise BadInput(
        "the docker backend needs an image: pass --image TAG or set [cluster] image; "
        "build one with flowrig build PROJECT --tag TAG"
    )


class _Teardown:
    """Everything of a run goes, on every way out; a signal hurries it.

    After the runner ended by itself, the cluster is closed gracefully (it usually is
    by then: the runner asked). After Ctrl-C or SIGTERM (or an error while the runner
    still runs) the runner gets :data:`RUNNER_INTERRUPT_GRACE` seconds to end (it
    reports its end to a Prefect API of the user's own), while the cluster's
    containers are removed by force at once. A second signal removes what is left by
    force; a third ends the command on the spot, naming what is left and the command
    that removes it.
    """

    def __init__(
        self, client: "DockerClient", run_id: str, say: Callable[[str], None], timed_out: Callable[[], bool]
    ) -> None:
        self.client, self.run_id, self.say, self.timed_out = client, run_id, say, timed_out
        self.runner: "Container | None" = None
        self.controller: HostController | None = None
        self.stdin: StdinWriter | None = None
        self.pump: LogPump | None = None
        #: Whether the runner container runs: it is then stopped, not waited for.
        self.runner_running = False

    def __call__(self, interrupted: int | None, runner_running: bool) -> None:
        try:
            with hurried():
                if interrupted is not None or runner_running:
                    self._stop_now(interrupted)
                else:
                    self._close()
        except Escalated as again:
            self._force(again.signum)

    def _close(self) -> None:
        if self.controller is not None:
            self.controller.close()
        if self.stdin is not None:
            self.stdin.close()
        remove_run(self.client, self.run_id)

    def _stop_now(self, signum: int | None) -> None:
        started = time.monotonic()
        what = inventory(self.client, self.run_id)
        if signum is not None:
            name = signal_name(signum)
            again = "Ctrl-C again" if signum == signal.SIGINT else f"a second {name}"
            hint = f" ({again} removes them at once)"
            if signum == signal.SIGTERM and self.timed_out():
                name, hint = "the run's timeout passed", ""
            self.say(f"{name}: stopping the run: removing {what}{hint}")
        stopper = None
        if self.runner is not None:
            # The runner ends its flow run in the meantime (an API of the user's own
            # sees it end); the cluster does not wait for it.
            stopper = threading.Thread(
                target=stop_and_remove, args=(self.runner, RUNNER_INTERRUPT_GRACE), name="flowrig-stop-runner",
                daemon=True,
            )
            stopper.start()
        if self.controller is not None:
            self.controller.abort()
        while stopper is not None and stopper.is_alive():
            stopper.join(0.1)  # in steps: a second signal arrives here
        if self.pump is not None:
            self.pump.join(timeout=RUNNER_LAST_WORDS)  # what the runner said as it ended
        if self.stdin is not None:
            self.stdin.close()
        remove_run(self.client, self.run_id)
        if signum is not None:
            self.say(f"stopped in {time.monotonic() - started:.1f} s; nothing of the run is left")

    def _force(self, signum: int) -> None:
        self.say(f"{signal_name(signum)} again: removing everything of the run by force")
        try:
            with hurried():
                if self.controller is not None:
                    self.controller.abort()
                remove_run(self.client, self.run_id, timeout=5)
                left = left_behind(self.client, self.run_id)
        except Escalated:
            left = ["(not checked)"]
        if left:
            self.say(f"left behind: {', '.join(left)}; remove them with: {leftovers_command(self.run_id)}")
