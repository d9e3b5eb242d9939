"""The one seam to the Docker engine: plans as data, and the only module that uses docker-py.

Owns: :class:`ContainerPlan` (everything needed to create one container, pure data),
the labels every container of a run carries (so ``flowrig docker leftovers`` finds any
run's containers, run-local's included), and :mod:`~flowrig.containers.engine`, the
only module that imports docker-py. The docker backend, ``flowrig ecs run-local`` and
the tests all create, start, watch and remove containers through it. Image builds use
the Docker CLI instead (:mod:`flowrig.builder`), since docker-py cannot use BuildKit.

May import: :mod:`flowrig.errors`, :mod:`flowrig.layout`, :mod:`flowrig.common`.
"""

from flowrig.containers.labels import LABEL_ROLE, LABEL_RUN_ID, labels
from flowrig.containers.plans import ContainerPlan

__all__ = ["LABEL_ROLE", "LABEL_RUN_ID", "ContainerPlan", "labels"]
