"""AWS's rate limits on the calls a fargate run makes, as the tests' fault proxy
(:mod:`tests.aws_faults`) throttles them."""

from __future__ import annotations

from dataclasses import dataclass

FARGATE_THROTTLING_URL = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/throttling.html"
ECS_THROTTLING_URL = "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/request-throttling.html"


@dataclass(frozen=True)
class AwsLimit:
    """One of AWS's token buckets: ``burst`` tokens at most, ``refill`` tokens a second.

    ``per`` is what a call takes: one token (``"call"``) or one per task it asks for
    (``"task"``, RunTask's ``count``).
    """

    name: str
    operations: tuple[str, ...]
    burst: float
    refill: float
    per: str
    source: str


#: AWS's rate limits on the calls a fargate run makes, per account and Region. Where AWS
#: documents a figure the source is its page; where the page's table could not be read,
#: the figure is an assumption, said as such.
AWS_LIMITS: tuple[AwsLimit, ...] = (
    # Fargate's launch bucket per account and Region: 100 tasks at once, refilled at 20
    # tasks a second (On Demand and Spot alike).
    AwsLimit("fargate-launches", ("RunTask",), 100, 20, "task", FARGATE_THROTTLING_URL),
    # RunTask itself, on the same page: 20 calls a second, burst and sustained, at most 10
    # tasks a call.
    AwsLimit("run-task-calls", ("RunTask",), 20, 20, "call", FARGATE_THROTTLING_URL),
    # ECS's request-throttling page names a bucket per group of actions, but its table
    # could not be read here: the 20 a second is the figure others cite from it for
    # DescribeTasks (https://github.com/aws-solutions/workload-discovery-on-aws/pull/355);
    # the burst of 50 is the page's own example bucket (cluster reads). Assumed, both.
    AwsLimit("task-reads", ("DescribeTasks", "ListTasks"), 50, 20, "call",
             ECS_THROTTLING_URL + " (table not read; assumed)"),
    # Not found at all: assumed as strict as RunTask's documented call rate.
    AwsLimit("stop-task-calls", ("StopTask",), 20, 20, "call",
             ECS_THROTTLING_URL + " (not found; assumed as RunTask's calls)"),
)
