"""The run's embedded Prefect API: one real Prefect server per run, private to it.

Owns: the server process (:mod:`~flowrig.api.serve`), its start, readiness and stop
from the runner's side (:mod:`~flowrig.api.server`), the migrated database template
runs copy and the server processes' environment (:mod:`~flowrig.api.template`), and the
client settings that point a run at it.

May import: :mod:`flowrig.internals` (Prefect's server internals are fenced there),
:mod:`flowrig.common`, :mod:`flowrig.layout`, :mod:`flowrig.errors`.
"""

from flowrig.api.server import START_TIMEOUT, EmbeddedPrefectAPI
from flowrig.api.template import ensure_template, template_path

__all__ = ["START_TIMEOUT", "EmbeddedPrefectAPI", "ensure_template", "template_path"]
