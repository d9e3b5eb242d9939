"""The labels that tie a container or network to its run (pure)."""

from __future__ import annotations

#: Every container and network a run creates carries both. The run id label is how a
#: run's leftovers are found after the process that made them was killed.
LABEL_RUN_ID = "flowrig.run-id"
LABEL_ROLE = "flowrig.role"


def labels(run_id: str, role: str) -> dict[str, str]:
    """Labels that tie a container or network to its run and say what it is."""
    return {LABEL_RUN_ID: run_id, LABEL_ROLE: role}
