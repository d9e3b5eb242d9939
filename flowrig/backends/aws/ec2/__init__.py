"""``ec2``: a run's scheduler and workers as EC2 instances of its image, a VM backend
(:mod:`flowrig.backends.vm`) on what the AWS backends share (:mod:`flowrig.backends.aws`).

- :mod:`.options`: its ``[cluster.options]``;
- :mod:`.backend`: :class:`~.backend.EC2Backend`;
- :mod:`.cloud`: the instances, their role and profile, and the run's AWS resources.
"""
