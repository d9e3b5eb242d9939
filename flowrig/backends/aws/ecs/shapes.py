"""What an ``ecs``/``fargate`` run's workers are, checked before anything is created:
GPUs, the capacity provider they start on, and the CPU architecture against the image's.

:func:`check_options` needs the options alone (it runs with them, and in ``flowrig
preflight``); :func:`check_run` reads the image's architectures (its manifest in ECR,
else the local engine's copy) and the capacity provider's instance types, with
read-only calls, and decides the run's ``cpu_architecture``. Every refusal is one line,
exit 2, whether or not the preflight checks are on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flowrig.backends.aws.instance_types import InstanceShape, check_arch, check_gpus, describe_types
from flowrig.backends.aws.preflight.answers import Refused, ask
from flowrig.backends.aws.preflight.image import image_architectures
from flowrig.errors import BadInput

if TYPE_CHECKING:
    from flowrig.backends.aws.ecs.options import ECSOptions
    from flowrig.backends.aws.session import Session

logger = logging.getLogger("flowrig.ecs")

#: ``cpu_architecture`` <-> the architecture as image platforms name it.
PLATFORM = {"X86_64": "amd64", "ARM64": "arm64"}
ECS_ARCH = {platform: name for name, platform in PLATFORM.items()}
#: Capacity providers every cluster has, which are Fargate's, not an Auto Scaling group.
FARGATE_PROVIDERS = ("FARGATE", "FARGATE_SPOT")


def check_options(backend: str, options: "ECSOptions", fargate_workers: bool, groups: bool = False) -> None:
    """The rules between ``worker_gpu``, ``capacity_provider``, the launch type and Spot
    (with worker ``groups``, a capacity provider may be for the groups on EC2 capacity).

    Raises
    ------
    BadInput
        One line naming both options and the fix.
    """
    gpu = options.worker_gpu
    if gpu and fargate_workers:
        raise BadInput(
            f"[cluster.options] worker_gpu = {gpu}: Fargate has no GPUs: use the ecs backend with fargate_workers "
            "= false and capacity_provider naming an Auto Scaling group of GPU instances"
            + (" (the fargate backend runs workers on Fargate only)" if backend == "fargate" else "")
        )
    if gpu and options.worker_task_definition_arn:
        raise BadInput(
            f"[cluster.options] worker_gpu = {gpu} goes into the worker task definition flowrig registers, and "
            "worker_task_definition_arn names one of yours: put the GPU resourceRequirements in it and drop worker_gpu"
        )
    if gpu and not options.capacity_provider:
        raise BadInput(
            f"[cluster.options] worker_gpu = {gpu} needs capacity_provider: name the cluster's capacity provider "
            "whose Auto Scaling group runs GPU instances (g5.xlarge; g5g.xlarge for arm64)"
        )
    for key in ("capacity_provider", "spot_capacity_provider"):
        provider = getattr(options, key)
        if provider and provider.upper() in FARGATE_PROVIDERS:
            raise BadInput(
                f"[cluster.options] {key} = {provider!r} is Fargate's: leave it out (spot = true "
                "asks for Fargate Spot)"
            )
        if provider and fargate_workers and not groups:
            raise BadInput(
                f"[cluster.options] {key} = {provider!r} starts workers on EC2 instances, but they run on "
                f"Fargate: use the ecs backend with fargate_workers = false, or leave {key} out"
            )
    if options.cpu_architecture:
        check_spot(options.cpu_architecture, "cpu_architecture = " + options.cpu_architecture, options,
                   fargate_workers)


def check_spot(arch: str, source: str, options: "ECSOptions", fargate_workers: bool) -> None:
    """Refuse ARM64 workers on Fargate Spot, which runs X86_64 tasks only.

    Raises
    ------
    BadInput
        Naming where ARM64 comes from (``source``).
    """
    spot = options.worker_spot()
    if arch == "ARM64" and spot and fargate_workers:
        key = "fargate_spot" if "fargate_spot" in options.model_fields_set else "spot"
        raise BadInput(
            f"Fargate Spot runs X86_64 tasks only, and the workers are ARM64 ({source}): drop {key} (on-demand "
            "Fargate runs ARM64), or build the image for linux/amd64 (flowrig build --platform linux/amd64)"
        )


def choose_architecture(option: str | None, held: tuple[str, ...], source: str, image: str) -> str:
    """The run's ``cpu_architecture``: the option, which the image must hold when its
    architectures are known (``held``, read from ``source``); else the image's (X86_64 of
    an index holding both, as ECS's default); else ``X86_64``.

    Raises
    ------
    BadInput
        The option names an architecture the image does not hold, or the image holds
        none ECS runs.
    """
    shown = ", ".join(f"linux/{arch}" for arch in held)
    if option:
        wanted = PLATFORM[option]
        if held and wanted not in held:
            raise BadInput(
                f"the image {image} is {shown} ({source}) but cpu_architecture = {option}: drop cpu_architecture "
                f"(the run follows the image) or build it with flowrig build --platform linux/{wanted}"
            )
        return option
    if not held:
        return "X86_64"
    for platform in ("amd64", "arm64"):
        if platform in held:
            return ECS_ARCH[platform]
    raise BadInput(
        f"the image {image} is {shown} ({source}), which ECS does not run: build it with flowrig build "
        "--platform linux/amd64 or linux/arm64"
    )


def _asked(answer: Any, what: str) -> Any:
    """``answer``, or ``None`` with a warning when AWS refused the read."""
    if isinstance(answer, Refused):
        logger.warning("the worker instance types are not checked: %s was refused (%s)", what, answer)
        return None
    return answer


def provider_instance_types(session: "Session", cluster_arn: str, provider: str) -> list[str] | None:
    """The instance types of ``provider``'s Auto Scaling group (its launch template,
    mixed-instances overrides or launch configuration); ``None`` when a read is refused.

    Raises
    ------
    BadInput
        The provider does not exist, is not the cluster's, or has no Auto Scaling group.
    """
    ecs = session.client("ecs")
    clusters = _asked(ask(lambda: ecs.describe_clusters(clusters=[cluster_arn]), "describing the cluster"),
                      "ecs:DescribeClusters")
    if clusters is not None and clusters.get("clusters"):
        held = clusters["clusters"][0].get("capacityProviders") or []
        if provider not in held:
            raise BadInput(
                f"[cluster.options] capacity_provider = {provider!r} is not a capacity provider of cluster "
                f"{cluster_arn} (it has {', '.join(held) or 'none'}): add it with aws ecs "
                "put-cluster-capacity-providers, or name one of those"
            )
    described = _asked(ask(lambda: ecs.describe_capacity_providers(capacityProviders=[provider]),
                           "describing the capacity provider"), "ecs:DescribeCapacityProviders")
    if described is None:
        return None
    found = described.get("capacityProviders") or []
    group_arn = (found[0].get("autoScalingGroupProvider") or {}).get("autoScalingGroupArn") if found else None
    if not group_arn:
        raise BadInput(
            f"[cluster.options] capacity_provider = {provider!r} is no Auto Scaling group capacity provider: "
            "create one (aws ecs create-capacity-provider) for the group of your worker instances"
        )
    return _group_instance_types(session, group_arn.rsplit("autoScalingGroupName/", 1)[-1])


def _group_instance_types(session: "Session", group_name: str) -> list[str] | None:
    autoscaling = session.client("autoscaling")
    groups = _asked(ask(lambda: autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name]),
                        "describing the Auto Scaling group"), "autoscaling:DescribeAutoScalingGroups")
    if not groups or not groups.get("AutoScalingGroups"):
        return None
    group = groups["AutoScalingGroups"][0]
    mixed = group.get("MixedInstancesPolicy") or {}
    overrides = [o["InstanceType"] for o in (mixed.get("LaunchTemplate") or {}).get("Overrides") or []
                 if o.get("InstanceType")]
    if overrides:
        return overrides
    template = group.get("LaunchTemplate") or (mixed.get("LaunchTemplate") or {}).get("LaunchTemplateSpecification")
    if template:
        ec2 = session.client("ec2")
        which = ({"LaunchTemplateId": template["LaunchTemplateId"]} if template.get("LaunchTemplateId")
                 else {"LaunchTemplateName": template["LaunchTemplateName"]})
        versions = _asked(ask(lambda: ec2.describe_launch_template_versions(
            **which, Versions=[str(template.get("Version") or "$Default")]), "describing the launch template"),
            "ec2:DescribeLaunchTemplateVersions")
        data = (versions or {}).get("LaunchTemplateVersions") or [{}]
        kind = (data[0].get("LaunchTemplateData") or {}).get("InstanceType")
        return [kind] if kind else None
    if group.get("LaunchConfigurationName"):
        configs = _asked(ask(lambda: autoscaling.describe_launch_configurations(
            LaunchConfigurationNames=[group["LaunchConfigurationName"]]), "describing the launch configuration"),
            "autoscaling:DescribeLaunchConfigurations")
        kinds = [c["InstanceType"] for c in (configs or {}).get("LaunchConfigurations") or [] if c.get("InstanceType")]
        return kinds or None
    return None


def _provider_shapes(session: "Session", provider: str, cluster_arn: str) -> list[InstanceShape]:
    """The shapes of capacity provider ``provider``'s instance types; empty when not known."""
    kinds = provider_instance_types(session, cluster_arn, provider)
    if not kinds:
        logger.warning("the instance types of capacity provider %s are not known: GPUs and architecture are not "
                       "checked", provider)
        return []
    described = describe_types(session, kinds)
    return [described[kind] for kind in kinds if kind in described]


def _providers(options: "ECSOptions", fargate_workers: bool, groups: tuple[Any, ...]) -> list[tuple[str, str, int]]:
    """``(where, capacity provider, GPUs)`` of every EC2 capacity provider the workers
    start on: the run's, or each worker group's (on-demand and Spot)."""
    if groups:
        return [(f"[[cluster.worker_groups]] {g.name} {key} = {provider!r} runs", provider, g.gpu)
                for g in groups if not g.fargate
                for key, provider in (("capacity_provider", g.capacity_provider),
                                      ("spot_capacity_provider", g.spot_capacity_provider)) if provider]
    if fargate_workers:
        return []
    return [(f"[cluster.options] {key} = {provider!r} runs", provider, options.worker_gpu)
            for key, provider in (("capacity_provider", options.capacity_provider),
                                  ("spot_capacity_provider", options.spot_capacity_provider)) if provider]


def check_run(session: "Session", options: "ECSOptions", cluster_arn: str, image: str,
              fargate_workers: bool, groups: tuple[Any, ...] = ()) -> str:
    """The run's ``cpu_architecture``, after the image, Spot and the capacity providers'
    instance types (the run's, or each worker group's) were checked against it
    (read-only calls). Without the option, the run takes the image's architecture that
    the providers' instances run.

    Raises
    ------
    BadInput
        Any mismatch, in one line naming the fix.
    """
    held, source = image_architectures(session, image)
    shapes: dict[str, list[InstanceShape]] = {}
    checks = []
    for where, provider, gpu in _providers(options, fargate_workers, groups):
        if provider not in shapes:
            shapes[provider] = _provider_shapes(session, provider, cluster_arn)
        checks.append((where, shapes[provider], gpu))
    provided = [shape for found in shapes.values() for shape in found]
    runnable = [arch for arch in PLATFORM.values() if provided and all(arch in s.archs for s in provided)]
    fits = tuple(arch for arch in (held or runnable) if arch in runnable)
    arch = choose_architecture(options.cpu_architecture, fits or held, source, image)
    if not options.cpu_architecture and not groups:
        check_spot(arch, f"the image's architecture, from {source}", options, fargate_workers)
    for group in groups:
        if arch == "ARM64" and group.fargate and group.spot:
            raise BadInput(
                f"Fargate Spot runs X86_64 tasks only, and [[cluster.worker_groups]] {group.name} is on Spot with "
                f"ARM64 workers: set its market = \"on-demand\", or build the image for linux/amd64"
            )
    for where, found, gpu in checks:
        for shape in found:
            check_gpus(shape, gpu, where, "gpu" if groups else "worker_gpu")
            check_arch(shape, (PLATFORM[arch],), where, image)
    return arch
