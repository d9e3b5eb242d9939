"""From a project on disk and a command line to a :class:`~flowrig.runner.RunConfig`.

Shared by ``flowrig run`` on the host and the image's ``run`` role.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Iterable

from flowrig import defaults
from flowrig.errors import BadInput, Terminated
from flowrig.runner import RunConfig, RunOutcome


def parameters_of_flow_run(flow_run_id: str) -> dict[str, Any]:
    """Parameters of an existing flow run, read from the configured Prefect API.

    This is how a container started by a Prefect worker for a deployment's flow run
    (``PREFECT__FLOW_RUN_ID`` set) learns its parameters.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(flow_run_id)
        except Exception as exc:
            raise BadInput(
                f"cannot read flow run {flow_run_id} from the Prefect API: {exc}"
            ) from None
    return dict(flow_run.parameters or {})


def config_from_project(
    project_dir: str | Path,
    *,
    params: Iterable[str] = (),
    params_file: str | Path | None = None,
    backend: str | None = None,
    image: str | None = None,
    certs: str | Path | None = None,
    scheduler_address: str | None = None,
) -> RunConfig:
    """Load a project and the run's inputs into a :class:`RunConfig`.

    Raises
    ------
    BadInput
        For a missing or invalid project, flow, sizing hook, parameters or certificates.
    """
    from flowrig import loader
    from flowrig import parameters as params_mod
    from flowrig.project import load_project

    project = load_project(project_dir)
    flow = loader.load_flow(project.flow_path, project.flow_function)
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    raw = params_mod.gather(params, params_file)
    if flow_run_id:
        raw = {**parameters_of_flow_run(flow_run_id), **raw}
    hook = None
    if project.cluster.sizing:
        path, _, name = project.cluster.sizing.rpartition(":")
        hook = loader.load_function(project.root / path, name, "sizing hook")
    tls = None
    if certs is not None:
        from flowrig.certs import TLSMaterial

        tls = TLSMaterial.from_dir(Path(certs))
    options = dict(project.cluster.options)
    chosen = backend or project.cluster.backend
    if scheduler_address:
        chosen, options = "address", {"address": scheduler_address}
    adapt = project.cluster.adapt
    return RunConfig(
        flow=flow,
        parameters=raw,
        backend=chosen,
        n_workers=project.cluster.n_workers,
        adapt=(adapt.minimum, adapt.maximum) if adapt else None,
        min_workers=project.cluster.min_workers,
        max_workers=project.cluster.max_workers,
        sizing_hook=hook,
        sizing_hook_name=project.cluster.sizing or "sizing hook",
        options=options,
        tls=tls,
        image=image or project.cluster.image or os.environ.get("FLOWRIG_IMAGE"),
        worker_threads=project.cluster.worker_threads,
        flow_run_id=flow_run_id,
    )


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


class SignalRecord:
    """Whether SIGTERM or SIGINT reached this process, whoever handled it.

    During a flow run Prefect installs its own SIGTERM handler, and the exception it
    raises can come out wrapped in another one (pydantic turns it into a serialisation
    error when the signal lands mid-serialisation), so the run just "fails". The
    wakeup file descriptor sees every signal at the C level, before any Python
    handler runs, so a terminated run is known as such whatever happened above it.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def received(self) -> int | None:
        """The last termination signal seen, if any (SIGTERM wins over SIGINT)."""
        seen: set[int] = set()
        try:
            while chunk := os.read(self._read, 512):
                seen.update(chunk)
        except BlockingIOError:
            pass
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum in seen:
                return int(signum)
        return None

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._read)
        os.close(self._write)


def run_project(
    project_dir: str | Path,
    *,
    output: str = "text",
    backend: str | None = None,
    scheduler_address: str | None = None,
    **inputs: Any,
) -> RunOutcome:
    """Run a project from a command line.

    SIGTERM tears down like Ctrl-C, logs go to stderr, and the outcome is printed
    (JSON as the last stdout line). The run's Prefect API starts first, so that its
    start-up overlaps with importing the flow; it is stopped on every path.

    Parameters
    ----------
    inputs
        ``params``, ``params_file``, ``image``, ``certs``: see :func:`config_from_project`.
    """
    signal.signal(signal.SIGTERM, _raise_terminated)
    record = SignalRecord()
    try:
        outcome = _run_project(project_dir, backend, scheduler_address, output, inputs)
    except Terminated:
        raise
    except BaseException:
        # Everything is torn down by now; a run that a signal ended exits as terminated,
        # whatever the signal turned into on its way up.
        if (signum := record.received()) is None:
            raise
        raise Terminated(signum) from None
    else:
        if (signum := record.received()) is not None:
            raise Terminated(signum)
        return outcome
    finally:
        record.close()


def _run_project(
    project_dir: str | Path,
    backend: str | None,
    scheduler_address: str | None,
    output: str,
    inputs: dict[str, Any],
) -> RunOutcome:
    import sys

    from flowrig.backends import get_backend
    from flowrig.gcpause import collector_paused
    from flowrig.project import load_project
    from flowrig.runner import execute, print_outcome, start_prefect_api

    early = load_project(project_dir)
    chosen = get_backend("address" if scheduler_address else (backend or early.cluster.backend))
    api = start_prefect_api(chosen)
    try:
        with collector_paused():  # loading the flow imports Prefect
            config = config_from_project(
                project_dir, backend=backend, scheduler_address=scheduler_address, **inputs
            )
    except BaseException:
        if api is not None:
            api.stop()
        raise
    config.backend = chosen
    outcome = execute(
        config, api=api, announce=lambda line: print(line, file=sys.stderr, flush=True)
    )
    print_outcome(outcome, output)
    return outcome


def default_project_dir() -> Path:
    """The baked project in the image, else the current directory."""
    if os.environ.get("FLOWRIG_IN_IMAGE") and defaults.IMAGE_PROJECT_DIR.is_dir():
        return defaults.IMAGE_PROJECT_DIR
    return Path.cwd()
