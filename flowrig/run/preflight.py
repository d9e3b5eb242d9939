"""``flowrig preflight``: what a project's run needs from its backend, checked before
anything is created, as one report (:class:`PreflightReport`).

The checks are the backend's (:meth:`flowrig.backends.base.Backend.preflight`: the
same ones every cloud run makes at its start unless ``preflight = false``); this module
reads the project, works out the run's largest size, asks the backend, and renders the
answer as text or JSON. Rendering is apart from the checks: it only reads the report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowrig.backends.preflight import Check, PreflightPlan, failure_line

if TYPE_CHECKING:
    from flowrig.project import Project

__all__ = ["Check", "PreflightReport", "maximum_workers", "preflight", "render_json", "render_text"]


@dataclass(frozen=True)
class PreflightReport:
    """Every check of one project on one backend.

    Parameters
    ----------
    backend
        The backend's name.
    image
        The image checked (``None``: none given).
    max_workers
        The most workers the run may have at once, as checked.
    checks
        What was checked, in order.
    """

    backend: str
    image: str | None
    max_workers: int
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """No check failed (a check that could not be made is no failure)."""
        return not any(check.ok is False for check in self.checks)

    def count(self, ok: bool | None) -> int:
        return sum(1 for check in self.checks if check.ok is ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "backend": self.backend,
            "image": self.image,
            "max_workers": self.max_workers,
            "checks": [check.to_dict() for check in self.checks],
        }


def render_text(report: PreflightReport, *, passed: bool = False) -> str:
    """One line per failed check (``failed: WHAT SUBJECT: FOUND: FIX``), one per check
    not made (``not checked: ...``), each passed one with ``passed``, then a summary."""
    lines = []
    for check in report.checks:
        if check.ok is False:
            lines.append(f"failed: {failure_line(check)}")
        elif check.ok is None:
            lines.append(f"not checked: {failure_line(check)}")
        elif passed:
            lines.append(f"passed: {check.name} {check.subject}: {check.line}")
    verdict = "ready" if report.ok else "not ready: nothing was created"
    lines.append(
        f"preflight {report.backend}: {report.count(False)} failed, {report.count(True)} passed, "
        f"{report.count(None)} not checked; {verdict}"
    )
    return "\n".join(lines)


def render_json(report: PreflightReport) -> str:
    """The report as one JSON object: ``{"ok", "backend", "image", "max_workers", "checks"}``."""
    return json.dumps(report.to_dict(), sort_keys=True)


def maximum_workers(project: "Project") -> int:
    """The most workers a run of ``project`` may have at once: the adaptive maximum or
    the fixed size, clamped as every size is; ``max_workers`` when a sizing hook
    decides (it is bounded by it)."""
    from flowrig.project.defaults import N_WORKERS

    cluster = project.cluster
    if cluster.sizing:
        return cluster.max_workers
    if cluster.worker_groups:
        return sum(group.most for group in cluster.worker_groups)
    wanted = cluster.adapt.maximum if cluster.adapt else cluster.n_workers
    value = N_WORKERS if wanted is None else wanted
    return max(cluster.min_workers, min(cluster.max_workers, value))


def sized_groups(project: "Project") -> tuple[Any, ...]:
    """The project's worker groups as a run starts them, each at its most workers (its
    fixed size or adaptive maximum): what the preflight's quotas count."""
    from flowrig.backends.base import WorkerGroupSpec
    from flowrig.common.routes import worker_resources

    specs = []
    for group in project.cluster.worker_groups:
        threads = group.worker_threads or project.cluster.worker_threads
        specs.append(WorkerGroupSpec(
            group.name, group.most, threads, worker_resources(group.name, threads, group.resources, group.gpu),
            cpu=None if group.cpu is None else float(group.cpu), memory_mib=group.memory_mib, gpu=group.gpu,
            market=group.market, options=dict(group.options),
        ))
    return tuple(specs)


def preflight(project_dir: Path, backend: str | None = None, image: str | None = None) -> PreflightReport:
    """Check what a run of the project at ``project_dir`` needs from ``backend``
    (default: its ``[cluster] backend``), with ``image`` (default: ``[cluster] image``,
    else ``FLOWRIG_IMAGE``), without creating anything.

    Raises
    ------
    BadInput
        The project, its options or the backend name are wrong.
    InfrastructureError
        The backend's cloud or engine did not answer.
    """
    from flowrig.backends import resolve_backend
    from flowrig.project import load_project

    project = load_project(project_dir)
    chosen = resolve_backend(backend or project.cluster.backend)
    chosen.check_worker_groups(project.cluster.worker_groups, project.cluster.options)
    plan = PreflightPlan(
        image=image or project.cluster.image or os.environ.get("FLOWRIG_IMAGE"),
        options=dict(project.cluster.options),
        max_workers=maximum_workers(project),
        allowed_environment=frozenset(project.build.allow_environment),
        groups=sized_groups(project),
    )
    return PreflightReport(chosen.name, plan.image, plan.max_workers, tuple(chosen.preflight(plan)))
