"""``azure``, ``ec2`` and ``gcp``: a run's scheduler and workers as cloud VMs of its image.

One implementation for every cloud: cloud-init rendered by flowrig (:mod:`.cloudinit`),
VMs named, started, watched and replaced through :mod:`.launcher` in a
:class:`~flowrig.backends.pool.PoolCluster`, and the shared start and teardown in
:mod:`.backend`. Each cloud adds its options and one :class:`~.cloud.Cloud`:
:mod:`.ec2`, :mod:`.azure`, :mod:`.gcp`. ``flowrig vm cloud-init`` prints what a VM
would get and ``flowrig vm run-local`` replays it with the local engine (:mod:`.run_local`).
"""
