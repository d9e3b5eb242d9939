"""``ec2``: a run's scheduler and workers as EC2 instances of its image, a VM backend
(:mod:`flowrig.backends.vm`) on what the AWS backends share (:mod:`flowrig.backends.aws`).

- :mod:`.options`: its ``[cluster.options]``;
- :mod:`.backend`: :class:`~.backend.EC2Backend`;
- :mod:`.instances`: a VM's RunInstances parameters (pure), and termination that waits;
- :mod:`.resources`: the run's instance role and profile and its instances, removed after it;
- :mod:`.cloud`: :class:`~.cloud.EC2Cloud`, the VM template's cloud for EC2.
"""
