"""The one seam to the Docker engine: plans as data, and the only package that uses docker-py.

Owns: :class:`ContainerPlan` (everything needed to create one container, pure data),
the labels every container of a run carries (so ``flowrig docker leftovers`` finds any
run's containers, run-local's included), :mod:`~flowrig.containers.engine`, the only
package that imports docker-py, and :mod:`~flowrig.containers.group`, the one loop that
runs a group of containers until the first essential one exits (``flowrig ecs
run-local`` and ``flowrig vm run-local``). The docker backend, both run-local commands
and the tests all create, start, watch and remove containers through the engine. Image builds use
the Docker CLI instead (:mod:`flowrig.builder`), since docker-py cannot use BuildKit.

May import: :mod:`flowrig.errors`, :mod:`flowrig.layout`, :mod:`flowrig.common`.
"""

from flowrig.containers.labels import LABEL_ROLE, LABEL_RUN_ID, labels
from flowrig.containers.plans import ContainerPlan

__all__ = ["LABEL_ROLE", "LABEL_RUN_ID", "ContainerPlan", "labels"]
