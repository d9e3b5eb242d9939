"""What the host lets a runner ask for: the project's limits, enforced by the host (pure).

The runner runs the flow in its own process, so the host cannot tell the runner's
requests from ones the flow's code makes (:mod:`.control`). It decides each one
itself, against the ``[cluster]`` table of the project baked into the image (the
project the runner runs), read by the host before the runner starts:

- sizes: a fixed size in ``[max(1, min_workers), max_workers]``, an adaptive range
  within ``[min_workers, max_workers]``, starting at its minimum;
- ``worker_threads`` and ``no_client_timeout``: exactly the project's;
- options: those the docker backend knows (its strict model); the workers'
  ``environment`` only with names the project's ``[cluster.options] environment``
  declares; ``worker_memory`` as the sizing hook sets it (a limit, never a
  reservation); start timeouts up to :data:`MAX_START_TIMEOUT` (or the project's own,
  when longer); any other option exactly as the project has it;
- flowrig's own worker environment: only the names flowrig sets
  (:data:`WORKER_ENV_NAMES`, :data:`WORKER_ENV_PATTERNS`), the run id and
  :data:`WORKER_ENV_FIXED` unchanged;
- ``news`` (the workers' news for a Prefect server of the user's): true or false;
- worker groups: exactly the ``[[cluster.worker_groups]]`` of the project, in its
  order, with its threads, resources and shape (``cpu``, ``memory``, ``gpu``,
  ``options``); each group a fixed size or an adaptive range within its own
  ``min_workers``/``max_workers`` (a fixed one at least one worker), the groups'
  maxima within ``max_workers``, and the workers they start with the request's
  ``n_workers``; none without them. An adaptive group grows only to its accepted
  maximum (the host scales it), whatever the run's output says;
- one start and one close per run (:class:`~flowrig.backends.docker.controller.HostController`).

A request outside these is refused whole, and the run's log names it.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from flowrig.errors import BadInput
from flowrig.internals import worker_security

if TYPE_CHECKING:
    from flowrig.backends.docker.backend import DockerOptions
    from flowrig.project.models import ClusterConfig

#: The fields of a start request; anything else in one is refused.
START_FIELDS = frozenset(
    {"op", "seq", "n_workers", "adapt", "worker_threads", "options", "worker_env", "no_client_timeout", "news",
     "groups"}
)
#: The fields of each worker group in a start request (:func:`.control.groups_message`).
GROUP_FIELDS = frozenset({"name", "n_workers", "adapt", "threads", "resources", "cpu", "memory_mib", "gpu", "options"})
#: Worker environment variables flowrig itself sets for a run's workers (the run's
#: id, its log levels, its Prefect API's client settings).
WORKER_ENV_NAMES = frozenset(
    {
        "FLOWRIG_RUN_ID",
        "PREFECT_API_URL",
        "PREFECT_API_SSL_CERT_FILE",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED",
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
        "PREFECT_UI_URL",
    }
)
#: Worker environment variables flowrig sets to one value only: the loader that gives
#: a client a task opens the run's credentials (another module would be imported by
#: every client made on a worker).
WORKER_ENV_FIXED = {worker_security.LOADER_ENV: worker_security.LOADER}
#: Families of log-level settings flowrig sets for workers by verbosity.
WORKER_ENV_PATTERNS = ("PREFECT_LOGGING_*", "DASK_LOGGING__*")
#: The most variables, and the longest value, a worker environment may have.
MAX_ENV_ITEMS = 256
MAX_ENV_VALUE = 8 * 1024
#: Seconds a start timeout may be, unless the project's own is longer.
MAX_START_TIMEOUT = 3600.0
#: Options whose value the sizing hook may change within the rules above.
_START_TIMEOUTS = ("start_timeout", "scheduler_start_timeout")


class Refusal(Exception):
    """A request the project does not allow; the text says which limit and why."""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class StartRequest:
    """A start request the host accepted: what it starts."""

    n_workers: int
    adapt: tuple[int, int] | None
    worker_threads: int
    options: "DockerOptions"
    worker_env: dict[str, str]
    no_client_timeout: float | None
    #: Whether the runner wants the news of its workers (a Prefect server of the
    #: user's is told them).
    news: bool = False
    #: The worker groups to start (:class:`~flowrig.backends.base.WorkerGroupSpec`).
    groups: tuple[Any, ...] = ()

    @property
    def environment(self) -> dict[str, str]:
        """Every worker's environment: flowrig's, then the project's."""
        return {**self.worker_env, **self.options.environment}


@dataclass(frozen=True)
class RunnerLimits:
    """The project's limits on what a runner may ask its host for.

    Parameters
    ----------
    run_id
        The run's id (the workers' ``FLOWRIG_RUN_ID`` must be it).
    cluster
        The ``[cluster]`` table of the project in the image.
    source
        Where it was read, for messages.
    """

    run_id: str
    cluster: "ClusterConfig"
    source: str = "the image's flowrig.toml"

    @classmethod
    def from_toml(cls, run_id: str, text: bytes, source: str) -> "RunnerLimits":
        """The limits in a project file's text.

        Raises
        ------
        BadInput
            When the file is not valid TOML or not a valid project file.
        """
        from flowrig.project.models import parse_project

        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise BadInput(f"{source}: not valid TOML ({exc}): rebuild the image from a valid project") from None
        try:
            project = parse_project(data, Path("/"))
        except BadInput as exc:
            raise BadInput(f"{source}: {exc}") from None
        return cls(run_id, project.cluster, source)

    def _options(self, raw: Any) -> "DockerOptions":
        from flowrig.backends.docker.backend import DockerBackend

        if not isinstance(raw, Mapping):
            raise Refusal("options that are not a table")
        try:
            return DockerBackend().parse_options(dict(raw))
        except BadInput as exc:
            raise Refusal(str(exc)) from None

    def check_start(self, message: Mapping[str, Any]) -> StartRequest:
        """The cluster a start request may have.

        Raises
        ------
        Refusal
            The first limit the request breaks.
        """
        cluster = self.cluster
        unknown = sorted(set(message) - START_FIELDS)
        if unknown:
            raise Refusal(f"fields a start request does not have: {', '.join(unknown)}")
        n, adapt = message.get("n_workers"), message.get("adapt")
        lo_bound, hi_bound = cluster.min_workers, cluster.max_workers
        if not _is_count(n) or n < 0:
            raise Refusal(f"n_workers {n!r} is not a number of workers")
        if adapt is None and message.get("groups") is not None and cluster.worker_groups:
            size = None  # each group's size and the sum are checked with the groups
        elif adapt is None:
            if not max(1, lo_bound) <= n <= hi_bound:
                raise Refusal(
                    f"{n} workers, outside min_workers = {lo_bound} and max_workers = {hi_bound} of {self.source}"
                )
            size = None
        else:
            if not (isinstance(adapt, (list, tuple)) and len(adapt) == 2 and all(map(_is_count, adapt))):
                raise Refusal(f"adapt {adapt!r} is not a range of workers")
            lo, hi = adapt
            if not lo_bound <= lo <= hi <= hi_bound:
                raise Refusal(
                    f"adaptive {lo}-{hi} workers, outside min_workers = {lo_bound} and "
                    f"max_workers = {hi_bound} of {self.source}"
                )
            if n != lo:
                raise Refusal(f"{n} workers to start an adaptive {lo}-{hi} cluster with (it starts with {lo})")
            size = (lo, hi)
        threads = message.get("worker_threads")
        if threads != cluster.worker_threads or not _is_count(threads):
            raise Refusal(f"worker_threads {threads!r}; {self.source} has {cluster.worker_threads}")
        timeout = message.get("no_client_timeout")
        if timeout != cluster.no_client_timeout or not (timeout is None or _is_number(timeout)):
            raise Refusal(f"no_client_timeout {timeout!r}; {self.source} has {cluster.no_client_timeout!r}")
        news = message.get("news", False)
        if not isinstance(news, bool):
            raise Refusal(f"news {news!r} is not true or false")
        options = self._check_options(message.get("options") or {})
        worker_env = self._check_worker_env(message.get("worker_env") or {})
        groups = self._check_groups(message.get("groups"), n, size)
        return StartRequest(
            n_workers=n,
            adapt=size,
            worker_threads=threads,
            options=options,
            worker_env=worker_env,
            no_client_timeout=None if timeout is None else float(timeout),
            news=news,
            groups=groups,
        )

    def _check_groups(self, raw: Any, n: int, adapt: Any) -> tuple[Any, ...]:
        """The worker groups of a start request: exactly the project's shapes, each
        sized within its own bounds (a fixed size, or an adaptive range starting at its
        minimum), the maxima within ``max_workers`` and ``n`` the workers they start with."""
        cluster = self.cluster
        if not cluster.worker_groups:
            if raw is not None:
                raise Refusal(f"worker groups, which {self.source} does not have")
            return ()
        if adapt is not None or not isinstance(raw, list):
            raise Refusal(f"a cluster without the worker groups of {self.source}")
        if not all(isinstance(g, Mapping) and set(g) == GROUP_FIELDS for g in raw):
            raise Refusal(f"worker groups that are not tables of {', '.join(sorted(GROUP_FIELDS))}")
        names = [g["name"] for g in raw]
        allowed = [g.name for g in cluster.worker_groups]
        if names != allowed:
            raise Refusal(f"worker groups {names!r}; {self.source} has {allowed!r}")
        specs = [self._check_group(group, asked) for group, asked in zip(cluster.worker_groups, raw)]
        start, most = sum(g.n_workers for g in specs), sum(g.most for g in specs)
        if start != n:
            raise Refusal(f"worker groups starting with {start} workers in a start of {n}")
        if start < cluster.min_workers or most > cluster.max_workers:
            raise Refusal(f"worker groups of {start} to {most} workers, outside min_workers = {cluster.min_workers} "
                          f"and max_workers = {cluster.max_workers} of {self.source}")
        return tuple(specs)

    def _check_group(self, group: Any, asked: Mapping[str, Any]) -> Any:
        """One group of a start request: the project's shape, sized within its bounds."""
        from flowrig.backends.base import WorkerGroupSpec
        from flowrig.common.routes import worker_resources

        threads = group.worker_threads or self.cluster.worker_threads
        resources = worker_resources(group.name, threads, group.resources, group.gpu)
        shape = {"threads": threads, "resources": resources, "cpu": None if group.cpu is None else float(group.cpu),
                 "memory_mib": group.memory_mib, "gpu": group.gpu, "options": dict(group.options)}
        for key, value in shape.items():
            if asked[key] != value or type(asked[key]) is bool:
                raise Refusal(f"worker group {group.name} with {key} {asked[key]!r}; {self.source} has {value!r}")
        lo, hi = group.bounds(self.cluster.max_workers)
        n, adapt = asked["n_workers"], asked["adapt"]
        if adapt is None:
            if not _is_count(n) or not max(1, lo) <= n <= hi:
                raise Refusal(f"worker group {group.name} of {n!r} workers (its bounds: {max(1, lo)}-{hi})")
        elif not (isinstance(adapt, (list, tuple)) and len(adapt) == 2 and all(map(_is_count, adapt))
                  and lo <= adapt[0] <= adapt[1] <= hi and adapt[1] >= 1 and n == adapt[0]):
            raise Refusal(f"worker group {group.name} adapting {adapt!r} from {n!r} workers (its bounds: {lo}-{hi})")
        return WorkerGroupSpec(group.name, n, threads, resources, adapt=None if adapt is None else tuple(adapt),
                               cpu=shape["cpu"], memory_mib=group.memory_mib, gpu=group.gpu,
                               options=dict(group.options))

    def _check_options(self, raw: Any) -> "DockerOptions":
        asked = self._options(raw)
        project = self._options(self.cluster.options)
        extra = sorted(set(asked.environment) - set(project.environment))
        if extra:
            raise Refusal(
                f"worker environment {', '.join(extra)}, which [cluster.options] environment of "
                f"{self.source} does not declare"
            )
        _check_env_sizes(asked.environment)
        for name in type(asked).model_fields:
            value, allowed = getattr(asked, name), getattr(project, name)
            if name in ("environment", "worker_memory"):
                continue
            if name in _START_TIMEOUTS:
                if float(value) > max(float(allowed), MAX_START_TIMEOUT):
                    raise Refusal(f"{name} {value!r} s, more than {max(float(allowed), MAX_START_TIMEOUT):g} s")
                continue
            if value != allowed:
                raise Refusal(f"option {name} {value!r}; {self.source} has {allowed!r}")
        return asked

    def _check_worker_env(self, raw: Any) -> dict[str, str]:
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise Refusal("a worker environment that is not text")
        env = dict(raw)
        foreign = sorted(
            name for name in env
            if name not in WORKER_ENV_NAMES and name not in WORKER_ENV_FIXED
            and not any(fnmatch.fnmatchcase(name, p) for p in WORKER_ENV_PATTERNS)
        )
        if foreign:
            raise Refusal(f"worker environment {', '.join(foreign)}, which flowrig does not set for workers")
        changed = sorted(name for name, value in WORKER_ENV_FIXED.items() if env.get(name, value) != value)
        if changed:
            raise Refusal(f"worker environment {', '.join(changed)} other than flowrig sets it")
        if env.get("FLOWRIG_RUN_ID", self.run_id) != self.run_id:
            raise Refusal(f"workers of another run ({env['FLOWRIG_RUN_ID']!r})")
        _check_env_sizes(env)
        return env


def _check_env_sizes(env: Mapping[str, str]) -> None:
    if len(env) > MAX_ENV_ITEMS:
        raise Refusal(f"{len(env)} worker environment variables (at most {MAX_ENV_ITEMS})")
    long = sorted(name for name, value in env.items() if len(value) > MAX_ENV_VALUE)
    if long:
        raise Refusal(f"worker environment values longer than {MAX_ENV_VALUE} characters: {', '.join(long)}")


def summary(message: Mapping[str, Any]) -> str:
    """A request in a few words, for the log line that refuses it."""
    op = message.get("op")
    if op != "start":
        return repr(op)
    n = message.get("n_workers")
    if message.get("adapt"):
        return f"'start' of adaptive {message['adapt']!r} workers"
    return f"'start' of {n!r} worker{'' if n == 1 else 's'}"
