"""Client-side pacing of a run's ECS calls, below the rates at which AWS throttles them.

AWS throttles each account per Region with token buckets: a bucket of ``burst`` tokens
that refills at a steady rate, one token per call (per task for Fargate's launches). A
run that calls faster than the refill is answered ``ThrottlingException`` and botocore
retries blindly, with backoff, from a retry budget the whole client shares: a
500-worker start or teardown then spends its time in backoff, and a call that runs out
of attempts fails a batch of workers or leaves a task running for the sweep. So the
launcher takes its tokens from its own buckets first (:class:`Pacer`), set a little
below AWS's (other runs and tools of the account draw from the same ones), and waits
instead of being refused.

AWS's figures (per account and Region):

- Fargate task launches: a bucket of 100 tasks refilled at 20 a second; RunTask calls:
  20 a second, burst and sustained, 10 tasks at most per call
  (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/throttling.html).
- StopTask: no figure found on ECS's request-throttling page as it could be read
  (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/request-throttling.html);
  paced as RunTask's calls, which AWS documents.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``burst`` tokens at most, refilled at ``per_second``."""

    burst: float
    per_second: float


# Bursts at 90 % of AWS's too, not only refills: a call's round trip varies, so calls
# granted a refill apart can reach AWS closer together; the slack absorbs that jitter
# (and a little of another caller's use of the account's buckets).
#: Fargate's launch bucket (100, 20 a second), paced at 90 % of it.
LAUNCHES = Rate(90, 18)
#: RunTask's call bucket (20, 20 a second), paced at 90 % of it.
RUN_TASK_CALLS = Rate(18, 18)
#: StopTask's bucket: AWS's figure not found, paced as RunTask's calls.
STOP_TASK_CALLS = Rate(18, 18)
#: Threads that stop a run's tasks at once: enough to keep the paced rate with a round
#: trip of a few hundred milliseconds per call.
STOP_THREADS = 8


class Pacer:
    """A token bucket that makes its caller wait instead of refusing it.

    It starts full. :meth:`wait` takes its tokens at once, also when that leaves the
    bucket below zero, and sleeps until the refill has paid them back: callers from
    several threads are served in the order they came, each at the paced rate.

    Parameters
    ----------
    rate
        The bucket's size and refill.
    clock, sleep
        Monotonic seconds, and how to wait (tests pass their own).
    """

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate.burst <= 0 or rate.per_second <= 0:
            raise ValueError(f"a rate needs a burst and a refill above zero, not {rate}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(rate.burst)
        self._at = clock()

    def wait(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, waiting until the bucket has refilled them; the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate.burst, self._tokens + (now - self._at) * self.rate.per_second)
            self._at = now
            self._tokens -= tokens
            delay = -self._tokens / self.rate.per_second if self._tokens < 0 else 0.0
        if delay > 0:
            self._sleep(delay)
        return delay
