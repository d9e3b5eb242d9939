"""What the AWS backends (``ecs``, ``fargate``, ``ec2``) share, with each backend beside it.

Bottom up, each module importing only those above it in this list:

- :mod:`.names`: the tags, IAM path and prefixes every AWS resource of a run is named
  with, and :class:`~.names.Account`;
- :mod:`.session`: botocore sessions with bounded retries, the caller, and botocore's
  errors as one-line flowrig errors;
- :mod:`.policies`: IAM documents as data (trust, the bootstrap's policies, a run's
  secret policy);
- :mod:`.lease`: the lease a live run renews on its resources;
- :mod:`.runner_policy`: the least-privilege policy of a runner, per backend;
- :mod:`.leftovers` (pure): what runs that are over left, grouped and judged by run;
- :mod:`.resources`: the AWS resources one run makes, each recorded with its undo on
  the run's :class:`~flowrig.backends.ledger.Ledger`;
- :mod:`.bootstrap`: what an account needs once (``flowrig aws bootstrap``);
- :mod:`.sweep` and :mod:`.remover`: leftovers found in AWS, and removed;
- :mod:`.ecs` (``ecs``, ``fargate``) and :mod:`.ec2` (``ec2`` on
  :mod:`flowrig.backends.vm`): the backends.

Only botocore is imported (inside functions, so ``flowrig --help`` never loads it).
"""
