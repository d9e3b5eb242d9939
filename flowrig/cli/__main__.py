"""``python -m flowrig.cli``: the ``flowrig`` command."""

from flowrig.cli import main

main()
