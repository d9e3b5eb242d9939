"""``flowrig.backends.ecs``, where the ECS backends were: :class:`ECSBackend` and
:class:`FargateBackend` by their earlier path, for code that imports them from here.

They live in :mod:`flowrig.backends.aws.ecs`, beside what they share with ``ec2``;
the registry (:data:`flowrig.backends.BACKENDS`) names them there.
"""

from __future__ import annotations

from flowrig.backends.aws.ecs.backend import ECSBackend, FargateBackend

__all__ = ["ECSBackend", "FargateBackend"]
