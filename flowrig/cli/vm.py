"""``flowrig vm``: what a VM of the ``ec2``, ``azure`` and ``gcp`` backends is given at
boot, and running that locally.

``cloud-init`` renders (no credentials, no API call); ``run-local`` replays rendered
files with the local Docker engine (:mod:`flowrig.backends.vm.run_local`).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from flowrig.cli.apps import command_group

if TYPE_CHECKING:
    from flowrig.backends.vm.backend import VMBackend
    from flowrig.backends.vm.cloudinit import VMRole
    from flowrig.backends.vm.preview import WorkerPreview
    from flowrig.certs import TLSMaterial
    from flowrig.project import Project

#: The backends whose runs are VMs.
VM_BACKENDS = ("azure", "ec2", "gcp")

app = command_group(
    help="VM backends (ec2, azure, gcp): print what each VM gets at boot, or run it with local Docker.",
)


class RoleChoice(str, Enum):
    scheduler = "scheduler"
    worker = "worker"
    both = "both"


def _vm_backend(name: str | None, project: "Project") -> "VMBackend":
    from flowrig.backends import get_backend
    from flowrig.backends.vm.backend import VMBackend
    from flowrig.errors import BadInput

    name = name or project.cluster.backend
    if name not in VM_BACKENDS:
        raise BadInput(
            f"backend {name!r} runs no VMs: pass --backend {'|'.join(VM_BACKENDS)}"
        )
    backend = get_backend(name)
    assert isinstance(backend, VMBackend)
    return backend


def preview_roles(
    backend: "VMBackend",
    project: "Project",
    *,
    image: str | None,
    scheduler_address: str | None,
    run_id: str,
) -> tuple["VMRole", "list[WorkerPreview]"]:
    """The scheduler's role and the first worker of each worker group (of the run,
    without groups) a run of ``project`` on ``backend`` would give its VMs: its
    ``[cluster.options]``, ``[[cluster.worker_groups]]``, image and workers' environment.

    Raises
    ------
    BadInput
        No image, a scheduler address that is not ``tls://``, bad options or groups.
    """
    from typing import cast

    from flowrig.backends.base import ClusterSpec
    from flowrig.errors import BadInput
    from flowrig.project.sizing import ClusterSize
    from flowrig.run.console import Verbosity, base_worker_environment

    image = image or project.cluster.image or os.environ.get("FLOWRIG_IMAGE")
    if not image:
        raise BadInput("no image to render: pass --image, set [cluster] image or FLOWRIG_IMAGE")
    if scheduler_address is not None and not scheduler_address.startswith("tls://"):
        raise BadInput(f"--scheduler-address must be tls://HOST:PORT, got {scheduler_address!r}")
    groups = tuple(project.cluster.worker_groups)
    backend.check_worker_groups(groups, dict(project.cluster.options))
    worker_env = base_worker_environment(run_id, Verbosity.NORMAL)
    if os.environ.get("PREFECT_API_URL"):
        # A run hands its workers a Prefect server named in its environment.
        worker_env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    spec = ClusterSpec(
        run_id=run_id,
        size=ClusterSize(max(1, project.cluster.n_workers or 1)),
        # A preview renders no certificates: per-run ones are named by their secret only.
        tls=cast("TLSMaterial", None),
        image=image,
        worker_env=worker_env,
        options=dict(project.cluster.options),
        worker_threads=project.cluster.worker_threads,
        no_client_timeout=project.cluster.no_client_timeout,
        min_workers=project.cluster.min_workers,
        allowed_environment=frozenset(project.build.allow_environment),
        groups=tuple(_group_spec(group, project.cluster.worker_threads) for group in groups),
    )
    return backend.preview_workers(spec, scheduler_address=scheduler_address)


def _group_spec(group: Any, worker_threads: int) -> Any:
    """A project's worker group as a run starts it (one worker shown)."""
    from flowrig.backends.base import WorkerGroupSpec
    from flowrig.common.routes import worker_resources

    threads = group.worker_threads or worker_threads
    return WorkerGroupSpec(group.name, 1, threads, worker_resources(group.name, threads, group.resources, group.gpu),
                           gpu=group.gpu, market=group.market, options=dict(group.options))


@app.command("cloud-init")
def cloud_init_command(
    backend: Annotated[
        Optional[str],
        typer.Option("--backend", "-b", help="ec2, azure or gcp; default: [cluster] backend of the project."),
    ] = None,
    role: Annotated[
        RoleChoice, typer.Option("--role", help="scheduler, worker or both.")
    ] = RoleChoice.both,
    image: Annotated[
        Optional[str],
        typer.Option("--image", help="Image the VMs run; default: [cluster] image, else FLOWRIG_IMAGE."),
    ] = None,
    scheduler_address: Annotated[
        Optional[str],
        typer.Option("--scheduler-address", help="tls://HOST:PORT the worker joins; default: a placeholder."),
    ] = None,
    project: Annotated[
        Path, typer.Option("--project", help="Project directory (holds flowrig.toml).")
    ] = Path("."),
    output_dir: Annotated[
        Optional[Path],
        typer.Option("--output-dir", help="Write scheduler.yaml, worker.yaml (worker-GROUP.yaml) here, not to stdout."),
    ] = None,
    group: Annotated[
        Optional[str],
        typer.Option("--group", help="Only the worker of this [[cluster.worker_groups]] group; default: each group's."),
    ] = None,
) -> None:
    """Print the cloud-init user data each role's VM gets, without credentials or API calls.

    It is what a run of the project would send: its [cluster.options] for the backend, its
    image and the workers' environment, checked for key material. Per-run certificates
    appear only as the name of their secret. With --role both, stdout holds the
    scheduler's document, then the worker's, each beginning with its #cloud-config line.
    With [[cluster.worker_groups]], the first worker of each group is shown (--group NAME:
    that group's only), its document's second line a comment that says the group's VM
    type, resources, GPUs, market and boot image (a run sends the document without it).
    """
    from flowrig.common.runid import current_run_id
    from flowrig.errors import BadInput
    from flowrig.project import load_project

    loaded = load_project(project)
    vm_backend = _vm_backend(backend, loaded)
    scheduler, workers = preview_roles(
        vm_backend, loaded, image=image, scheduler_address=scheduler_address, run_id=current_run_id()
    )
    workers = _chosen_group(workers, group)
    if role is RoleChoice.scheduler and group is not None:
        raise BadInput("--group picks a worker group's worker: pass --role worker or both with it")
    if vm_backend.options(loaded.cluster.options, frozenset(loaded.build.allow_environment)).scheduler_address:
        # Runs of this project join that scheduler: they start no scheduler VM to show.
        if role is RoleChoice.scheduler:
            raise BadInput(
                "[cluster.options] scheduler_address is set, so runs of this project start no scheduler VM: "
                "pass --role worker"
            )
        role = RoleChoice.worker
        typer.echo("[cluster.options] scheduler_address is set: no scheduler VM, the worker only", err=True)
    documents = _documents(scheduler if role is not RoleChoice.worker else None,
                           workers if role is not RoleChoice.scheduler else [])
    if output_dir is None:
        typer.echo("\n".join(documents.values()), nl=False)
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in documents.items():
            path = output_dir / f"{name}.yaml"
            path.write_text(text)
            typer.echo(f"wrote {path}", err=True)
    except OSError as exc:
        raise BadInput(f"cannot write to --output-dir {output_dir}: {exc.strerror or exc}") from None


def _documents(scheduler: "VMRole | None", workers: "list[WorkerPreview]") -> dict[str, str]:
    """Each role's user data by file name (``scheduler``, ``worker``, ``worker-GROUP``),
    checked for key material; a group's worker with its line after ``#cloud-config``."""
    from flowrig.backends.vm import launcher

    documents = {} if scheduler is None else {"scheduler": launcher.user_data(scheduler)}
    for each in workers:
        text = launcher.user_data(each.role)
        name = f"worker-{each.group}" if each.group else "worker"
        # A comment after #cloud-config: the document stays one a VM takes (and run-local replays).
        documents[name] = text if not each.group else text.replace("\n", f"\n# {each.line}\n", 1)
    return documents


def _chosen_group(workers: "list[WorkerPreview]", group: str | None) -> "list[WorkerPreview]":
    """The worker of ``group`` alone (``None``: every worker).

    Raises
    ------
    BadInput
        No such group, naming the project's.
    """
    from flowrig.errors import BadInput

    if group is None:
        return workers
    chosen = [each for each in workers if each.group == group]
    if not chosen:
        names = ", ".join(each.group for each in workers if each.group)
        raise BadInput(f"--group {group!r} is not a [[cluster.worker_groups]] group of the project: "
                       + (f"name one of {names}" if names else "it has no worker groups; drop --group"))
    return chosen


@app.command("run-local")
def run_local_command(
    cloud_init: Annotated[
        list[Path], typer.Argument(help="Cloud-init files flowrig vm cloud-init wrote (one or more roles each).")
    ],
    certs: Annotated[
        Optional[Path],
        typer.Option("--certs", help="ca.crt, tls.crt, tls.key for roles with per-run certificates (over stdin)."),
    ] = None,
    network: Annotated[
        str,
        typer.Option("--network", help="host (as on the VM), or a Docker network NAME (created when missing, kept)."),
    ] = "host",
    detach: Annotated[
        bool, typer.Option("--detach", help="Print the containers' names and leave them running.")
    ] = False,
) -> None:
    """Run each file's role with the local Docker engine, as its VM would run it.

    Same image, command, environment and hardening (read-only root, memory /tmp, no
    capabilities, no-new-privileges, a process limit), on the host's network by default.
    Per-run certificates come from --certs over stdin instead of the cloud's secret store;
    nothing logs in to a registry, so the image must be on the engine. Logs stream with
    each VM's name in front until a container exits or Ctrl-C; then every container
    started here is removed, and the exit code is the exited container's.
    """
    from flowrig.backends.vm import run_local
    from flowrig.errors import BadInput

    texts = {}
    for path in cloud_init:
        try:
            texts[str(path)] = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    if not network:
        raise BadInput("--network is empty: pass host or a Docker network name")
    replays = run_local.plan_replay(run_local.load_roles(texts), network=network, have_certs=certs is not None)
    from flowrig.run.prepared import given_certificates

    raise typer.Exit(run_local.run(replays, given_certificates(certs), detach=detach))
