"""The one run path: a run's config and outcome, its execution, the command line's
front end and the Prefect 1 style front end.

Owns: :class:`RunConfig` and :class:`RunOutcome` (:mod:`~flowrig.run.config`),
:func:`execute` (:mod:`~flowrig.run.execute`: API, sizing, cluster, flow, teardown),
``flowrig run``'s path from its inputs (:mod:`~flowrig.run.launch`), what is printed
(:mod:`~flowrig.run.report`), and :class:`DaskCloudProviderEnvironment`
(:mod:`~flowrig.run.compat`).

May import: :mod:`flowrig.backends`, :mod:`flowrig.api`, :mod:`flowrig.project`,
:mod:`flowrig.certs`, :mod:`flowrig.internals`, :mod:`flowrig.common`; never the CLI.
Backends plug in through :func:`flowrig.backends.get_backend`. The public names are
exported by :mod:`flowrig` itself.
"""
