"""Small process-wide pieces every other package may use.

Owns: run ids (:mod:`~flowrig.common.runid`), the one way signals end a run
(:mod:`~flowrig.common.signals`), the start-up collector pause
(:mod:`~flowrig.common.gcpause`) and address helpers (:mod:`~flowrig.common.net`).

May import: the standard library, :mod:`flowrig.errors` and :mod:`flowrig.layout`.
"""
