"""A token bucket as AWS describes its throttling: a bucket of ``burst`` tokens that
starts full and refills at ``refill`` tokens a second; a call that finds too few is
refused. The fault proxy (:mod:`tests.aws_faults`) keeps one per rate limit.
"""

from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    """A token bucket that starts full; :meth:`take` never waits (the proxy answers now).

    Parameters
    ----------
    burst, refill
        Most tokens held, and tokens added per second.
    clock
        Seconds, monotonic (tests pass their own).
    """

    def __init__(self, burst: float, refill: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = float(burst)
        self.refill = float(refill)
        self.clock = clock
        self.tokens = self.burst
        self._at = clock()

    def level(self) -> float:
        """Tokens in the bucket now."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.refill)
        self._at = now
        return self.tokens

    def take(self, tokens: float) -> bool:
        """Take ``tokens`` if the bucket holds them all; else take none."""
        if self.level() < tokens:
            return False
        self.tokens -= tokens
        return True
