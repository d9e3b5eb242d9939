"""A run's inputs, each resolved once: :class:`PreparedRun`.

Two front ends build one: :func:`prepare` from a command line (``flowrig run`` and the
image's ``run`` role) and a project, and :func:`prepare_config` from a
:class:`~flowrig.run.config.RunConfig` (the Python API and
:class:`~flowrig.DaskCloudProviderEnvironment`). Each input is read by one function
here, and :func:`flowrig.run.execute` only uses what they found:

- the backend: :func:`backend_of` / :func:`resolve_backend`;
- certificates a user gives: :func:`given_certificates`; the run's own:
  :func:`run_certificates`;
- the Prefect API: :func:`start_prefect_api`, then :func:`_configured_api` once Prefect
  is imported;
- the flow and Prefect's engine: :func:`_load_flow` / :func:`_import_engine`;
- the raw parameters: :func:`_raw_parameters` (validated by ``execute``).

The project itself (``flowrig.toml``) is read by :mod:`flowrig.run.launch`, once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flowrig import layout
from flowrig.project.defaults import BACKEND, MAP_CHUNK, MAX_WORKERS, MIN_WORKERS, WORKER_THREADS

if TYPE_CHECKING:
    from flowrig.api import EmbeddedPrefectAPI
    from flowrig.backends import Backend
    from flowrig.certs import TLSMaterial
    from flowrig.project import Project
    from flowrig.run.config import RunConfig
    from flowrig.run.launch import RunInputs


@dataclass(frozen=True)
class PreparedRun:
    """One run's inputs, resolved: what :func:`flowrig.run.execute` starts from.

    Parameters
    ----------
    flow
        The Prefect flow, loaded; Prefect's flow engine is imported.
    backend
        The backend, resolved.
    tls
        The run's certificates (per-run ones, given ones, or the image's baked ones).
    api
        The run's embedded Prefect API, started (not yet ready); ``None`` when
        ``PREFECT_API_URL`` or a Prefect profile names a server of the user's.
    api_url
        That server's URL, when ``api`` is ``None``.
    raw_parameters
        The parameters as given; ``execute`` validates them against the flow.
    n_workers, adapt, min_workers, max_workers, sizing_hook, sizing_hook_name
        The declarative size, its bounds and the sizing hook
        (:func:`flowrig.project.sizing.decide`).
    options
        ``[cluster.options]`` (or ``{"address": ...}``), before the sizing hook's say.
    image, worker_threads, map_chunk, no_client_timeout, flow_run_id, allow_environment, on_start, on_exit
        As in :class:`~flowrig.run.config.RunConfig`.
    project
        The project the run came from; ``None`` for the Python API.
    prices
        The price table of what the run used (:mod:`flowrig.backends.prices`);
        ``None``: the shipped one.
    """

    flow: Any
    backend: "Backend"
    tls: "TLSMaterial"
    api: "EmbeddedPrefectAPI | None"
    api_url: str | None
    raw_parameters: Mapping[str, Any] = field(default_factory=dict)
    n_workers: int | None = None
    adapt: tuple[int, int] | None = None
    min_workers: int = MIN_WORKERS
    max_workers: int = MAX_WORKERS
    sizing_hook: Callable[..., Any] | None = None
    sizing_hook_name: str = "sizing hook"
    options: Mapping[str, Any] = field(default_factory=dict)
    image: str | None = None
    worker_threads: int = WORKER_THREADS
    map_chunk: int = MAP_CHUNK
    no_client_timeout: float | None = None
    flow_run_id: str | None = None
    allow_environment: tuple[str, ...] = ()
    on_start: Callable[[], Any] | None = None
    on_exit: Callable[[], Any] | None = None
    project: "Project | None" = None
    prices: Any = None
    #: ``[[cluster.worker_groups]]`` (:class:`flowrig.project.groups.WorkerGroup`).
    worker_groups: tuple[Any, ...] = ()


# --- one function per input ----------------------------------------------------------------


def backend_name(inputs: "RunInputs", project: "Project | None") -> str:
    """The backend a command line names: ``--scheduler-address``, ``--backend``, else
    ``[cluster] backend``."""
    if inputs.scheduler_address:
        return "address"
    return inputs.backend or (project.cluster.backend if project is not None else BACKEND)


def resolve_backend(backend: "str | Backend") -> "Backend":
    """The one place a run's backend is resolved: ``backend`` itself, or the one its
    name names."""
    from flowrig.backends import resolve_backend as resolve

    return resolve(backend)


def backend_of(inputs: "RunInputs", project: "Project | None") -> "Backend":
    """The backend of a command line's run (:func:`backend_name`), resolved."""
    return resolve_backend(backend_name(inputs, project))


def given_certificates(security: "TLSMaterial | str | Path | None") -> "TLSMaterial | None":
    """Certificates a user gives (``--certs``, ``security=``): the one read of such a
    directory.

    Raises
    ------
    BadInput
        A directory without valid ``ca.crt``, ``tls.crt`` and ``tls.key``.
    TypeError
        ``security`` of another kind.
    """
    if security is None:
        return None
    from flowrig.certs import TLSMaterial

    if isinstance(security, TLSMaterial):
        return security
    if isinstance(security, (str, Path)):
        return TLSMaterial.from_dir(Path(security))
    raise TypeError(
        "security must be a flowrig.certs.TLSMaterial or a directory with ca.crt, tls.crt, tls.key"
    )


def run_certificates(
    backend: "Backend", given: "TLSMaterial | None", options: Mapping[str, Any] | None = None
) -> "TLSMaterial":
    """The run's certificates (:meth:`TLSMaterial.for_run`): the image's baked ones only
    when ``backend`` with these ``[cluster.options]`` has roles it does not start;
    per-run ones also name the address its API is reached at, so that the API can
    serve HTTPS with them."""
    from flowrig.certs import TLSMaterial

    image_roles = backend.roles_use_image_certificates(options or {})
    return TLSMaterial.for_run(given, hosts=[backend.prefect_api_hosts()[1]], image_roles=image_roles)


def start_prefect_api(
    backend: "Backend", tls: "TLSMaterial", spawned: "EmbeddedPrefectAPI | None" = None
) -> "EmbeddedPrefectAPI | None":
    """Start the run's embedded Prefect API, or return ``None`` when one is configured.

    Called as early as possible: the server's start-up then overlaps with loading the
    flow and starting the cluster. ``spawned``, a server the run spawned before it knew
    its certificates (:func:`spawn_prefect_api`), is configured and used when it listens
    where ``backend`` needs it, else stopped. Only the environment is read here:
    Prefect's own settings (profiles, .env) need an import of prefect that takes
    seconds; :func:`_configured_api` checks them once the flow imported it.
    """
    from flowrig.api import EmbeddedPrefectAPI

    hosts = backend.prefect_api_hosts()
    if spawned is not None:
        if not os.environ.get("PREFECT_API_URL") and spawned.bind_host == hosts[0]:
            return spawned.adopt(hosts[1], tls)
        spawned.stop()
    if os.environ.get("PREFECT_API_URL"):
        return None
    return EmbeddedPrefectAPI.for_run(hosts, tls).start()


def spawn_prefect_api(backend: str) -> "EmbeddedPrefectAPI | None":
    """The run's embedded API process, spawned at the first step of a run on
    ``backend`` (a name: nothing is imported for it), to be configured by
    :func:`start_prefect_api` once the run's certificates exist; ``None`` when the run
    will not need one here.

    Its import of Prefect's server, most of the API's start-up, then overlaps with
    everything the runner does before it has certificates (reading ``flowrig.toml``,
    the backend, the certificates themselves). Only ``local`` is known without an
    import to serve on loopback with its runner here; the other backends start their
    API as before.
    """
    if backend != "local" or os.environ.get("PREFECT_API_URL"):
        return None
    from flowrig.api import EmbeddedPrefectAPI

    return EmbeddedPrefectAPI().spawn()


def _configured_api(api: "EmbeddedPrefectAPI | None") -> tuple["EmbeddedPrefectAPI | None", str | None]:
    """The run's API and the URL of a server of the user's: a Prefect profile that
    names one wins over the server started here, which is then stopped."""
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value() or None
    if api is not None and configured:
        api.stop()
        return None, configured
    return api, configured


def _load_flow(project: "Project") -> Any:
    """The project's flow function."""
    from flowrig.project import flow_loader

    return flow_loader.load_flow(project.flow_path, project.flow_function)


def _import_engine() -> None:
    """Prefect's flow engine, imported once per run before the cluster starts."""
    from flowrig.internals.prefect_engine import import_flow_engine

    import_flow_engine()


def _raw_parameters(inputs: "RunInputs", project: "Project", flow: Any, flow_run_id: str | None) -> dict[str, Any]:
    """Given (the docker backend's host) < the flow run's (a deployment's run, read from
    the API; a flow run of another flow is refused and marked Failed) < ``--params-file``
    < ``--param``."""
    from flowrig.project import parameters as params_mod

    raw = {**(inputs.given_parameters or {}), **params_mod.gather(inputs.params, inputs.params_file)}
    if flow_run_id:
        from flowrig.run import flow_runs

        request = flow_runs.read_flow_run(flow_run_id)
        flow_runs.refuse_other_flow(request, flow.name, project.flow)
        raw = {**request.parameters, **raw}
    return raw


def _sizing_hook(project: "Project") -> Callable[..., Any] | None:
    """``[cluster] sizing``'s function, loaded."""
    if not project.cluster.sizing:
        return None
    from flowrig.project import flow_loader

    path, _, name = project.cluster.sizing.rpartition(":")
    return flow_loader.load_function(project.root / path, name, "sizing hook")


# --- the two front ends ----------------------------------------------------------------------


def prepare(
    inputs: "RunInputs",
    project: "Project",
    backend: "Backend | None" = None,
    spawned: "EmbeddedPrefectAPI | None" = None,
) -> PreparedRun:
    """A command line's run of ``project``: backend (``backend`` when the caller
    resolved it already), certificates, API, flow and parameters.

    The API starts first (``spawned``, when the caller spawned it already:
    :func:`start_prefect_api`), so that its start-up overlaps with importing the flow;
    it is stopped again when anything after it fails, ``spawned`` included. A container a Prefect worker started
    for a flow run (``PREFECT__FLOW_RUN_ID`` set) reads that flow run's parameters.

    Raises
    ------
    BadInput
        A missing or invalid flow, sizing hook, parameters or certificates, or a flow
        run of another flow.
    """
    from flowrig.backends.prices import load_prices

    try:
        backend = backend or backend_of(inputs, project)
        # A bad price file is bad input before anything starts.
        prices = load_prices(project.root, project.run.prices)
        options = {"address": inputs.scheduler_address} if inputs.scheduler_address else dict(project.cluster.options)
        tls = run_certificates(backend, given_certificates(inputs.certs), options)
    except BaseException:
        if spawned is not None:
            spawned.stop()
        raise
    api = start_prefect_api(backend, tls, spawned)
    try:
        if backend.name == "local" and not layout.in_image():
            # Local workers are forked from this interpreter: a requirement it lacks would
            # fail a task only once the cluster is up (an image installed them at build).
            # Checked while the API starts, off its path.
            from flowrig.project.requirements import check_environment

            check_environment(project)
        return dataclasses.replace(_from_project(inputs, project, backend, tls, api, options), prices=prices)
    except BaseException:
        if api is not None:
            api.stop()
        raise


def _from_project(
    inputs: "RunInputs",
    project: "Project",
    backend: "Backend",
    tls: "TLSMaterial",
    api: "EmbeddedPrefectAPI | None",
    options: Mapping[str, Any],
) -> PreparedRun:
    from flowrig.common.startup_gc import collector_paused

    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    # Loading the flow imports Prefect: a start-up phase of a process flowrig owns.
    with collector_paused():
        flow = _load_flow(project)
        raw = _raw_parameters(inputs, project, flow, flow_run_id)
        hook = _sizing_hook(project)
        _import_engine()
    api, api_url = _configured_api(api)
    cluster = project.cluster
    return PreparedRun(
        flow=flow,
        backend=backend,
        tls=tls,
        api=api,
        api_url=api_url,
        raw_parameters=raw,
        n_workers=cluster.n_workers,
        adapt=(cluster.adapt.minimum, cluster.adapt.maximum) if cluster.adapt else None,
        min_workers=cluster.min_workers,
        max_workers=cluster.max_workers,
        sizing_hook=hook,
        sizing_hook_name=cluster.sizing or "sizing hook",
        options=options,
        image=inputs.image or cluster.image or os.environ.get("FLOWRIG_IMAGE"),
        worker_threads=cluster.worker_threads,
        map_chunk=cluster.map_chunk,
        no_client_timeout=cluster.no_client_timeout,
        flow_run_id=flow_run_id,
        allow_environment=tuple(project.build.allow_environment),
        project=project,
        worker_groups=tuple(cluster.worker_groups),
    )


def prepare_config(config: "RunConfig") -> PreparedRun:
    """A :class:`~flowrig.run.config.RunConfig`'s run (the Python API): backend,
    certificates and API resolved, Prefect's engine imported.

    Raises
    ------
    BadInput
        Bad certificates or an unknown backend.
    flowrig.errors.InfrastructureError
        When the Prefect API cannot start.
    """
    backend = resolve_backend(config.backend)
    tls = run_certificates(backend, given_certificates(config.tls), config.options)
    api = start_prefect_api(backend, tls)
    try:
        _import_engine()
        api, api_url = _configured_api(api)
    except BaseException:
        if api is not None:
            api.stop()
        raise
    return PreparedRun(
        flow=config.flow,
        backend=backend,
        tls=tls,
        api=api,
        api_url=api_url,
        raw_parameters=dict(config.parameters),
        n_workers=config.n_workers,
        adapt=config.adapt,
        min_workers=config.min_workers,
        max_workers=config.max_workers,
        sizing_hook=config.sizing_hook,
        sizing_hook_name=config.sizing_hook_name,
        options=config.options,
        image=config.image,
        worker_threads=config.worker_threads,
        map_chunk=config.map_chunk,
        no_client_timeout=config.no_client_timeout,
        flow_run_id=config.flow_run_id,
        allow_environment=tuple(config.allow_environment),
        on_start=config.on_start,
        on_exit=config.on_exit,
        worker_groups=tuple(config.worker_groups),
    )
