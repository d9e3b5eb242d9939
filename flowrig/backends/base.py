"""The one small interface every cluster backend implements.

A backend turns a :class:`ClusterSpec` into a running Dask cluster and gives back a
:class:`StartedCluster`: the scheduler address the runner's client connects to and a
``close`` that tears everything down. Sizing, TLS and the Prefect API URL are decided
before a backend is called, so backends hold no policy of their own.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Mapping

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.backends.preflight import Check, PreflightPlan
    from flowrig.backends.usage import RoleLife
    from flowrig.backends.watch import ClusterNews
    from flowrig.certs import TLSMaterial
    from flowrig.project.sizing import ClusterSize

#: Seconds a cluster may take to reach its first worker before the run gives up (exit 3).
CLUSTER_START_TIMEOUT = 120.0

#: Why ``n_workers`` is refused in ``[cluster.options]``, and where to set it instead.
N_WORKERS_FIX = "set n_workers or adapt in [cluster] (they are validated and clamped there)"


def _scalar_text(value: Any) -> Any:
    # TOML numbers and booleans in an environment table become their text, as a shell's would.
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, (int, float)) else value


#: A number of seconds greater than zero.
Seconds = Annotated[StrictInt | StrictFloat, Field(gt=0)]
#: A table of strings (environment variables, tags); scalars become their text.
StringMap = dict[StrictStr, Annotated[StrictStr, BeforeValidator(_scalar_text)]]


class Options(BaseModel):
    """Base of every backend's ``[cluster.options]`` model: strict, no unknown keys.

    Subclasses declare the keys their backend understands, with their defaults, and
    in :attr:`refused` the keys a project may not set there, each with the fix.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: Keys decided elsewhere in flowrig -> where to set them instead.
    refused: ClassVar[Mapping[str, str]] = {}

    def given(self) -> dict[str, Any]:
        """The options the project set (defaults left out), by key."""
        return {key: getattr(self, key) for key in self.model_fields_set}


class CloudOptions(Options):
    """Base of the options of every backend that makes resources in a cloud."""

    preflight: StrictBool = Field(
        True,
        description="check the network, image, rights and quotas before anything is created (`flowrig preflight`); "
        "false: start without checking",
    )


#: How option errors name what a key must be, by pydantic error type.
_WHAT = {
    "int_type": "a whole number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "dict_type": "a table",
    "list_type": "a list",
    "greater_than": "greater than {gt}",
    "greater_than_equal": ">= {ge}",
}


def describe_option_error(exc: ValidationError, backend: str, model: type[Options]) -> str:
    """The first problem of an options model as one line naming the key and the fix."""
    error = exc.errors(include_url=False)[0]
    # The option itself; deeper parts of the location name alternatives of its type.
    key = str(error["loc"][0]) if error["loc"] else ""
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(model.model_fields))
        return f"[cluster.options] {key} not known to the {backend} backend; it takes {known}"
    if error["type"] == "value_error":
        return f"[cluster.options] {key}: {error['ctx']['error']}"
    # A key of a union type (``spot``: a boolean or "fallback") fails each alternative.
    alternatives = [e for e in exc.errors(include_url=False) if e["loc"][:1] == error["loc"][:1]]
    whats = [_what(e) for e in alternatives]
    if None in whats:
        return f"[cluster.options] {key} = {value!r}: {error['msg'].lower()}"
    whats = list(dict.fromkeys(whats))
    what = ", ".join(w.replace(" or ", ", ") for w in whats[:-1]) + " or " + whats[-1] if len(whats) > 1 else whats[0]
    return f"[cluster.options] {key} must be {what}, got {value!r}"


def _what(error: Any) -> str | None:
    """What one pydantic ``error`` says its value must be, in the words of a TOML file."""
    if error["type"] == "literal_error":
        return str(error["ctx"]["expected"]).replace("'", '"')
    what = _WHAT.get(error["type"])
    return what.format(**error.get("ctx", {})) if what is not None else None


@dataclass(frozen=True)
class WorkerGroupSpec:
    """One worker group of a run's cluster (``[[cluster.worker_groups]]``), sized and shaped.

    Parameters
    ----------
    name
        The group's name; its workers are named ``NAME-1``, ``NAME-2``...
    n_workers
        Workers the group starts with (its adaptive minimum when it adapts).
    threads
        Threads of each of its workers.
    resources
        The Dask resources each of its workers offers: ``flowrig-group-NAME`` (one per
        thread, what the group's tasks ask for), ``GPU`` when it has GPUs, then the
        group's own.
    adapt
        ``(minimum, maximum)`` when the group scales itself with its tasks' demand.
    cpu, memory_mib, gpu
        vCPUs, memory (MiB) and GPUs of each worker; ``None``: the backend's default.
    market
        ``"on-demand"``, ``"spot"`` or ``"fallback"``; ``None``: the backend's ``spot``.
    options
        ``[cluster.options]`` keys the group's workers have otherwise (only keys its
        backend's :attr:`Backend.group_options` names, checked before a start).
    """

    name: str
    n_workers: int
    threads: int
    resources: Mapping[str, float] = field(default_factory=dict)
    adapt: tuple[int, int] | None = None
    cpu: float | None = None
    memory_mib: int | None = None
    gpu: int = 0
    market: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def most(self) -> int:
        """The most workers the group may have."""
        return self.adapt[1] if self.adapt else self.n_workers

    def worker_name(self, number: int) -> str:
        """The name of the group's worker ``number``, ``NAME-number``."""
        return f"{self.name}-{number}"

    def worker_names(self) -> list[str]:
        """The names of the workers the group starts with, ``NAME-1`` to ``NAME-N``."""
        return [self.worker_name(i) for i in range(1, self.n_workers + 1)]


@dataclass(frozen=True)
class ClusterSpec:
    """Everything a backend needs to start one run's cluster.

    Parameters
    ----------
    run_id
        Short unique id of the run; backends put it in names, labels and tags.
    size
        Fixed size or adaptive range, already validated and clamped.
    tls
        Certificates every role uses (mutual TLS is always on).
    image
        Container image for the scheduler and workers (container backends only).
    worker_env
        Environment every worker gets, e.g. ``PREFECT_API_URL`` of the run's API.
    options
        Backend-specific options from ``[cluster.options]``, passed through untouched.
    worker_threads
        Threads per worker.
    no_client_timeout
        Seconds the scheduler stays up once no client is connected (its runner was
        lost); ``None``: the scheduler's default (:mod:`flowrig.roles.lifetime`).
    min_workers
        The project's ``min_workers`` (see :attr:`start_minimum`).
    allowed_environment
        Environment variable names ``[build] allow_environment`` says hold no secret,
        whatever their names or values look like; a backend's own environment checks
        let them through as the project's checks do.
    on_news
        Called with what the cluster's workers do (started, joined, lost and why,
        replaced; :mod:`flowrig.backends.watch`), from the cluster's own thread, from
        as soon as the cluster exists until it closes. ``None``: nobody listens, and
        nothing is watched.
    groups
        The worker groups, when the project has ``[[cluster.worker_groups]]``
        (only for a backend whose :attr:`Backend.takes_worker_groups`): the cluster's
        workers are theirs, and ``size`` is their sum.
    """

    run_id: str
    size: "ClusterSize"
    tls: "TLSMaterial"
    image: str | None = None
    worker_env: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    worker_threads: int = 1
    no_client_timeout: float | None = None
    min_workers: int = 0
    allowed_environment: frozenset[str] = frozenset()
    on_news: "Callable[[ClusterNews], None] | None" = None
    groups: tuple[WorkerGroupSpec, ...] = ()

    @property
    def start_minimum(self) -> int:
        """Workers that must join before the run goes on, when some cannot start.

        The adaptive minimum for an adaptive cluster (0: the run waits for none), else
        ``min_workers`` (at most the fixed size), and at least one worker, since a fixed
        cluster without workers runs nothing.
        """
        if self.size.adapt:
            return self.size.adapt[0]
        return max(1, min(self.min_workers, self.size.n_workers))


@dataclass
class StartedCluster:
    """A running cluster as the runner sees it.

    Parameters
    ----------
    scheduler_address
        ``tls://host:port`` the runner's client connects to.
    dashboard_link
        URL of the Dask dashboard, when the backend serves one.
    close
        Tears the cluster down; safe to call more than once.
    cluster
        The underlying ``distributed`` cluster object, when there is one.
    scheduler_up, marks
        When the scheduler started to listen, and other marks of the start by timeline key
        (``time.perf_counter()``), when the backend knows them apart from the whole start.
    workers_joined
        How many workers have joined so far, for a backend whose scheduler is counted
        elsewhere (not in this process); ``None`` to read ``cluster``.
    dashboard_reach
        Where the dashboard link opens from when that is not this machine's browser
        ("reachable from inside the VPC only..."), or how to get a dashboard when there
        is none; ``None``: the link opens here.
    lives
        The lives of the cluster's roles so far (:class:`~flowrig.backends.usage.RoleLife`),
        complete once ``close`` returned; ``None`` for a backend that does not log them.
    """

    scheduler_address: str
    dashboard_link: str | None
    close: Callable[[], None]
    cluster: Any = None
    scheduler_up: float | None = None
    marks: Mapping[str, float] = field(default_factory=dict)
    workers_joined: Callable[[], int] | None = None
    dashboard_reach: str | None = None
    lives: "Callable[[], list[RoleLife]] | None" = None


def dashboard_reach(served: bool, network: str) -> str:
    """Where the dashboard of a scheduler elsewhere (a task, a VM) opens from, in words:
    its port is open to ``network`` alone, plain HTTP without a login, and only when
    the project asked for it (``served``); else how to ask."""
    if served:
        return f"reachable from inside {network} only, plain HTTP without a login"
    return f"[cluster.options] dashboard = true opens it to {network}"


class CloseOnce:
    """Calls ``close`` the first time only; later calls do nothing.

    Makes a cluster's teardown a safe :attr:`StartedCluster.close`, which may be
    called more than once.
    """

    def __init__(self, close: Callable[[], Any]) -> None:
        self._close: Callable[[], Any] | None = close
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            close, self._close = self._close, None
        if close is not None:
            close()


class Backend(abc.ABC):
    """Starts clusters of one kind.

    A backend is a name, an options model and :meth:`start`; register it in
    :data:`flowrig.backends.BACKENDS`.
    """

    #: Name used on the command line and in ``flowrig.toml``.
    name: ClassVar[str]
    #: The ``[cluster.options]`` this backend understands (``None``: passed through).
    options_model: ClassVar[type[Options] | None] = None
    #: Whether ``flowrig run`` on a host runs the flow runner in a container of the
    #: run's image (:mod:`flowrig.run.in_container`) rather than in its own process;
    #: inside the image the runner always runs in the process.
    runner_in_container: ClassVar[bool] = False
    #: Whether the backend starts ``[[cluster.worker_groups]]`` (:attr:`ClusterSpec.groups`);
    #: a run with groups on any other backend is refused before anything starts.
    takes_worker_groups: ClassVar[bool] = False
    #: The worker group fields (``cpu``, ``memory``, ``gpu``, ``market``, ``adapt``) this
    #: backend cannot honour -> the fix; a group that sets one is refused before a start.
    group_refusals: ClassVar[Mapping[str, str]] = {}
    #: The ``[cluster.options]`` keys a worker group may set otherwise in its ``options``.
    group_options: ClassVar[frozenset[str]] = frozenset()

    def refuse_foreign_groups(self, groups: Any) -> None:
        """Refuse ``[[cluster.worker_groups]]`` on a backend that does not start them.

        Raises
        ------
        BadInput
            When there are groups and this backend does not take them.
        """
        if groups and not self.takes_worker_groups:
            raise BadInput(
                f"[[cluster.worker_groups]] do not run on the {self.name} backend: drop the groups, or run with "
                "a backend that starts them (docker, local, fargate, ecs, ec2, gcp, azure)"
            )

    def check_worker_groups(self, groups: Any, options: Mapping[str, Any]) -> None:
        """Refuse what this backend cannot do with ``[[cluster.worker_groups]]``
        (:class:`~flowrig.project.groups.WorkerGroup`): groups at all, a field it cannot
        honour (:attr:`group_refusals`), an ``options`` key it does not take per group
        (:attr:`group_options`) or a value its options model refuses.

        Raises
        ------
        BadInput
            One line naming the group, the field and the fix.
        """
        self.refuse_foreign_groups(groups)
        for group in groups:
            where = f"[[cluster.worker_groups]] group '{group.name}'"
            for key, fix in self.group_refusals.items():
                if group.sets(key):
                    raise BadInput(f"{where} sets {key}, which the {self.name} backend cannot honour: {fix}")
            foreign = sorted(set(group.options) - self.group_options)
            if foreign:
                taken = ", ".join(sorted(self.group_options)) or "none"
                raise BadInput(
                    f"{where} options.{foreign[0]} is not taken per group by the {self.name} backend (it takes "
                    f"{taken}): set it in [cluster.options] for every worker, or drop it"
                )
            if group.options and self.options_model is not None:
                try:
                    self.parse_options({**options, **group.options})
                except BadInput as exc:
                    raise BadInput(f"{where} options: {exc}") from None

    def parse_options(self, options: Mapping[str, Any]) -> Any:
        """``[cluster.options]`` validated by :attr:`options_model`.

        Raises
        ------
        BadInput
            One line naming the option at fault, before anything is started.
        """
        if self.options_model is None:
            return dict(options)
        for key, fix in self.options_model.refused.items():
            if key in options:
                raise BadInput(f"[cluster.options] {key} is not accepted by the {self.name} backend: {fix}")
        try:
            return self.options_model.model_validate(dict(options))
        except ValidationError as exc:
            raise BadInput(describe_option_error(exc, self.name, self.options_model)) from None

    def roles_use_image_certificates(self, options: Mapping[str, Any]) -> bool:
        """Whether roles that flowrig does not start take part in a run with these
        ``[cluster.options]`` (a scheduler already running, task definitions of the
        project's own): those can only use the image's baked certificates, so the
        run must too. Otherwise (the default) flowrig starts every role and hands it
        the run's own certificates, and baked ones are never used.

        Only the options' raw values are read; they are validated at :meth:`start`.
        """
        return False

    def prefect_api_hosts(self) -> tuple[str, str]:
        """Where the runner's embedded Prefect API binds, and how workers reach it.

        Returns
        -------
        (bind_host, advertised_host)
            Loopback for in-process clusters; container backends override this.
        """
        return "127.0.0.1", "127.0.0.1"

    def preflight(self, plan: "PreflightPlan") -> "list[Check]":
        """What can be checked before a run of ``plan`` creates anything (read-only calls
        only): the image, the network, the runner's rights, quotas.

        Raises
        ------
        BadInput
            Invalid options (as :meth:`start` would refuse them).
        InfrastructureError
            The backend's API did not answer.
        """
        from flowrig.backends.preflight import Check

        return [Check("backend", self.name, None, f"the {self.name} backend has no preflight checks")]

    def prepare(self) -> None:
        """Get ready to start a cluster soon; called once the flow is imported, while
        the runner still runs one thread (before any watcher or cluster thread).

        Nothing by default; the local backend forks its fork server here.
        """

    @abc.abstractmethod
    def start(self, spec: ClusterSpec) -> StartedCluster:
        """Start the cluster described by ``spec`` and wait until it can take work.

        Raises
        ------
        flowrig.errors.InfrastructureError
            When the cluster cannot start or does not become ready in time.
        flowrig.errors.BadInput
            When ``spec.options`` are invalid for this backend.
        """
