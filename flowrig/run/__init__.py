"""The one run path: a run's config and outcome, its execution, the command line's
front end and the Prefect 1 style front end.

Owns: :class:`RunConfig`, :class:`RunOutcome` and :class:`RunRecord`
(:mod:`~flowrig.run.config`), a run's inputs each resolved once into a
:class:`~flowrig.run.prepared.PreparedRun` (:mod:`~flowrig.run.prepared`: backend,
certificates, API, flow, raw parameters), :func:`execute` (:mod:`~flowrig.run.execute`:
parameters, sizing, cluster, flow, teardown; the flow's call and final state in
:mod:`~flowrig.run.flow_call`), ``flowrig run``'s path from its inputs
(:mod:`~flowrig.run.launch`), the runner in a container that a docker run on a host
starts (:mod:`~flowrig.run.in_container`), a run's timings (:mod:`~flowrig.run.timings`), what is
printed: the outcome (:mod:`~flowrig.run.report`), the console's levels
(:mod:`~flowrig.run.console`), the tasks' progress (:mod:`~flowrig.run.progress`) and
their own log lines (:mod:`~flowrig.run.tasklog`), and
:class:`DaskCloudProviderEnvironment` (:mod:`~flowrig.run.prefect1`).

May import: :mod:`flowrig.backends`, :mod:`flowrig.api`, :mod:`flowrig.project`,
:mod:`flowrig.certs`, :mod:`flowrig.containers`, :mod:`flowrig.internals`,
:mod:`flowrig.common`; never the CLI.
Backends plug in through :func:`flowrig.backends.get_backend`. The public names are
exported by :mod:`flowrig` itself.
"""
