"""Small process-wide pieces every other package may use.

Owns: run ids (:mod:`~flowrig.common.runid`), the one way signals end a run
(:mod:`~flowrig.common.signals`), a run's deadline (:mod:`~flowrig.common.deadline`),
when a command started (:mod:`~flowrig.common.clock`), the threads that may run while
the runner forks (:mod:`~flowrig.common.forksafe`), a run's folders on this machine and
their leftovers (:mod:`~flowrig.common.runfolders`), the start-up collector pause
(:mod:`~flowrig.common.startup_gc`) and address helpers (:mod:`~flowrig.common.net`).

May import: the standard library, :mod:`flowrig.errors` and :mod:`flowrig.layout`.
"""
