"""Which log records are lines a task or flow printed under ``log_prints=True``.

Prefect sends such a print to the run's logger at INFO, from inside
``prefect.logging.loggers.print_as_log`` (which ``patch_print`` puts in place of
``print``), with nothing on the record that tells it from the code's own
``logger.info``. A person wants a task's prints by default but its INFO lines only with
``--verbose``: a logging filter tells them apart by finding ``print_as_log`` among the
frames that are logging the record (filters run inside the logging call).

Fenced here: that prints are logged from within ``print_as_log`` itself, synchronously
(tests/e2e/local/test_internals.py checks it on the locked Prefect).
"""

from __future__ import annotations

import sys

#: Frames between a filter and the print that logged the record: the logging calls
#: (adapter, logger, handle, filter) are fewer than ten.
_DEPTH = 24


def logged_by_print() -> bool:
    """Whether the record being logged now comes from ``print`` under ``log_prints``.

    Call it from a logging filter or handler, while the record is being logged.
    """
    from prefect.logging.loggers import print_as_log

    code = print_as_log.__code__
    frame = sys._getframe(1)
    for _ in range(_DEPTH):
        if frame is None:
            return False
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False
