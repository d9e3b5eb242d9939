"""What one role of a run got: its market, its shape and the key of its price.

Shared by the lives of :mod:`flowrig.backends.usage` and the price table of
:mod:`flowrig.backends.prices`, which import it and not each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

#: The market of a role that runs on the user's own machine: never priced.
LOCAL = "local"
#: The market of a role on Spot capacity (Fargate Spot, EC2 Spot).
SPOT = "spot"
ON_DEMAND = "on-demand"
#: Longest name or key a life read from another process may carry.
_TEXT_MAX = 200


@dataclass(frozen=True)
class Placement:
    """What one role got: the shape it is charged for and the key of its price.

    Parameters
    ----------
    market
        ``on-demand``, ``spot``, or ``local`` (the user's own machine: no price).
    vcpu
        vCPUs the role may use (a task's or instance's size; the host's for local
        and docker roles, which have no CPU limit).
    memory_gib
        Memory in GiB (its limit where it has one, else the host's).
    gpus
        GPUs the role holds.
    price_key
        What prices it, e.g. ``fargate:us-east-1:X86_64`` or
        ``ec2:us-east-1:m7i.large``; ``""``: nothing does.
    """

    market: str = ON_DEMAND
    vcpu: float = 0.0
    memory_gib: float = 0.0
    gpus: int = 0
    price_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"market": self.market, "vcpu": self.vcpu, "memory_gib": round(self.memory_gib, 3),
                "gpus": self.gpus, "price_key": self.price_key}

    @classmethod
    def from_dict(cls, data: Any) -> "Placement":
        """A placement from :meth:`to_dict` (another process's); ``ValueError`` when it is not one."""
        if not isinstance(data, Mapping):
            raise ValueError("a placement must be a table")
        market, key = data.get("market", ON_DEMAND), data.get("price_key", "")
        numbers = [data.get("vcpu", 0.0), data.get("memory_gib", 0.0), data.get("gpus", 0)]
        if not (isinstance(market, str) and isinstance(key, str) and len(market) + len(key) <= _TEXT_MAX):
            raise ValueError("a placement's market and price key must be short strings")
        if not all(is_amount(n) for n in numbers):
            raise ValueError("a placement's vcpu, memory_gib and gpus must be numbers >= 0")
        return cls(market=market, vcpu=float(numbers[0]), memory_gib=float(numbers[1]), gpus=int(numbers[2]),
                   price_key=key)


def is_amount(value: Any) -> bool:
    """Whether ``value`` is a finite number >= 0 (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
