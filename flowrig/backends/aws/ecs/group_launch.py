"""``[[cluster.worker_groups]]`` on ``ecs``/``fargate``: each group's worker tasks, decided
and checked before anything is created, and their task definitions rendered.

Every group gets a worker task definition of its own shape (``flowrig-RUN-worker-GROUP``:
its CPU, memory and GPUs, Fargate or EC2), its market (Fargate Spot, or the cluster's
``spot_capacity_provider``), and a command whose ``--resources`` are the group's, rendered
here from the run's project and nothing else: the project's ``worker_extra_args`` may not
add Dask resources beside groups, so no worker offers another group's slots. Pure: no
AWS call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from flowrig.backends.aws.ecs import defaults, taskdefs, validate
from flowrig.backends.aws.ecs.worker_kinds import WorkerKind
from flowrig.backends.markets import SpotSetting, group_spot
from flowrig.backends.pool.groups import group_shapes, resources_args
from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.backends.aws.ecs.options import ECSOptions

#: ``[cluster.options]`` keys a group may set otherwise in its ``options`` on ECS.
GROUP_OPTIONS = frozenset({"capacity_provider", "spot_capacity_provider", "fargate_workers"})


@dataclass(frozen=True)
class GroupLaunch:
    """How one worker group's tasks launch (the group's shape, market and flags)."""

    name: str
    threads: int
    #: Flags after the worker's own: the project's, the group's ``--resources``, TLS last.
    args: tuple[str, ...]
    size: taskdefs.RoleSize
    gpu: int
    fargate: bool
    spot: SpotSetting
    capacity_provider: str = ""
    spot_capacity_provider: str = ""

    def kind(self, task_definition: str) -> WorkerKind:
        """The launcher's view of the group, once its task definition is registered."""
        return WorkerKind(
            task_definition=task_definition, args=self.args, threads=self.threads, fargate=self.fargate,
            spot=self.spot, capacity_provider=self.capacity_provider,
            spot_capacity_provider=self.spot_capacity_provider, shape=(self.size.cpu, self.size.memory),
            gpu=self.gpu, group=self.name,
        )


def _size(where: str, cpu: float | None, memory: int | None, options: "ECSOptions", fargate: bool) -> taskdefs.RoleSize:
    """The group's task size: its own, else the run's ``worker_cpu``/``worker_mem``; a CPU
    without memory on Fargate takes the least memory Fargate pairs with it."""
    units = options.worker_cpu if cpu is None else round(cpu * 1024)
    if memory is None:
        memory = options.worker_mem
        allowed = validate.FARGATE_MEMORY.get(units, ())
        if fargate and cpu is not None and allowed and memory not in allowed:
            memory = allowed[0]
    if fargate:
        validate.check_fargate_size(where, units, memory)
    return taskdefs.RoleSize(units, memory)


def group_launches(
    backend: str, options: "ECSOptions", groups: Iterable[Any], *, fargate_workers: bool, spot: SpotSetting,
    base_args: list[str], tls_args: list[str],
) -> tuple[GroupLaunch, ...]:
    """Each group's launch, checked: its options against :data:`GROUP_OPTIONS`, its size
    (Fargate's pairs), GPUs only on EC2 capacity with a capacity provider, Spot only where a
    market for it exists.

    Raises
    ------
    BadInput
        One line naming the group, the key and the fix.
    """
    launches = []
    for group, where, cpu, memory, gpu, market, own in group_shapes(backend, groups, base_args, GROUP_OPTIONS):
        if options.worker_task_definition_arn and (cpu is not None or memory is not None or gpu or own):
            raise BadInput(
                f"{where} sets its own shape or options, which go into the task definition flowrig registers for "
                "it, and worker_task_definition_arn names one of yours: drop worker_task_definition_arn"
            )
        merged = _merged(where, options, own, backend)
        fargate = fargate_workers if "fargate_workers" not in own else bool(merged.fargate_workers)
        if backend == "fargate" and not fargate:
            raise BadInput(f"{where} sets fargate_workers = false, but the fargate backend runs workers on Fargate "
                           "only: use the ecs backend with cluster_arn")
        spot_setting = group_spot(market, spot)
        _check_group(where, merged, gpu, fargate, spot_setting, backend)
        args = [*base_args, *resources_args(group), *tls_args]
        launches.append(GroupLaunch(
            name=group.name, threads=group.threads, args=tuple(args), size=_size(where, cpu, memory, options, fargate),
            gpu=gpu, fargate=fargate, spot=spot_setting,
            capacity_provider="" if fargate else (merged.capacity_provider or ""),
            spot_capacity_provider="" if fargate else (merged.spot_capacity_provider or ""),
        ))
    return tuple(launches)


def _merged(where: str, options: "ECSOptions", own: Mapping[str, Any], backend: str) -> "ECSOptions":
    """The run's options with the group's own, validated as ``[cluster.options]`` are."""
    from pydantic import ValidationError

    from flowrig.backends.base import describe_option_error

    given = {key: getattr(options, key) for key in options.model_fields_set}
    try:
        return type(options).model_validate({**given, **own})
    except ValidationError as exc:
        line = describe_option_error(exc, backend, type(options)).replace("[cluster.options] ", "options.", 1)
        raise BadInput(f"{where} {line}") from None


def _check_group(where: str, options: "ECSOptions", gpu: int, fargate: bool, spot: SpotSetting, backend: str) -> None:
    """A group's GPUs and market against where its tasks run."""
    if gpu and fargate:
        raise BadInput(
            f"{where} gpu = {gpu}: Fargate has no GPUs: run the group on EC2 capacity with the ecs backend "
            "(options = { fargate_workers = false, capacity_provider = \"NAME\" }, NAME an Auto Scaling group of "
            "GPU instances)" + (" instead of fargate" if backend == "fargate" else "")
        )
    if gpu and not options.capacity_provider:
        raise BadInput(
            f"{where} gpu = {gpu} needs a capacity provider: set options = {{ capacity_provider = \"NAME\" }} on "
            "the group (or capacity_provider in [cluster.options]), NAME an Auto Scaling group of GPU instances"
        )
    if gpu and options.worker_task_definition_arn:
        raise BadInput(
            f"{where} gpu = {gpu} goes into the group's task definition flowrig registers, and "
            "worker_task_definition_arn names one of yours: drop worker_task_definition_arn"
        )
    if spot and not fargate and not options.spot_capacity_provider:
        raise BadInput(
            f"{where} asks for Spot workers on the cluster's EC2 capacity, which needs a capacity provider of Spot "
            "instances: set spot_capacity_provider (in [cluster.options] or the group's options), or run the "
            "group on Fargate (fargate_workers = true)"
        )
    for key in ("capacity_provider", "spot_capacity_provider"):
        provider = getattr(options, key)
        if provider and provider.upper() in ("FARGATE", "FARGATE_SPOT"):
            raise BadInput(f"{where} {key} = {provider!r} is Fargate's: leave it out (market = \"spot\" asks for "
                           "Fargate Spot)")


def group_task_definition(params: Mapping[str, Any], run_name: str, launch: GroupLaunch) -> dict[str, Any]:
    """A rendered worker task definition made the group's: its own family
    (``flowrig-RUN-worker-GROUP``) and a ``flowrig-group`` tag."""
    out = dict(params)
    out["family"] = taskdefs.family_name(run_name, f"worker-{launch.name}")
    out["tags"] = sorted([*params.get("tags", []), {"key": "flowrig-group", "value": launch.name}],
                         key=lambda tag: tag["key"])
    return out


def group_settings(settings: taskdefs.TaskDefinitionSettings, launch: GroupLaunch,
                   environment: Mapping[str, str]) -> taskdefs.TaskDefinitionSettings:
    """The run's worker task definition settings with the group's shape, flags and market."""
    return replace(
        settings,
        sizes={**settings.sizes, "worker": launch.size},
        compatibilities=("FARGATE",) if launch.fargate else ("EC2",),
        worker_gpu=launch.gpu,
        worker_threads=launch.threads,
        worker_args=launch.args,
        environment={**environment, **taskdefs.spot_environment(launch.spot)},
        worker_stop_timeout=defaults.SPOT_STOP_TIMEOUT if launch.spot else None,
    )
