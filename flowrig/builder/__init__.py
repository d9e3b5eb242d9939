"""Build the one flowrig image for a flow project.

Rendering is pure and separate from building::

    context = render_context("examples/seed", tls_dir="certs")   # data, no Docker
    write_context(context, "build-context")                     # a normalised directory
    build(context, "my-flow:1", pip_ca="corp-ca.pem")           # runs `docker build`

Importing this package is cheap (standard library only; certificates and Docker are
touched inside the functions). The names are imported eagerly on purpose: the function
``build`` shares its name with the module :mod:`flowrig.builder.build`, and an eager
import keeps ``flowrig.builder.build`` the function however the module is imported.

May import: :mod:`flowrig.project` (the file rules the image build shares),
:mod:`flowrig.certs` (the key scan), :mod:`flowrig.layout`, :mod:`flowrig.errors`. It
builds with the Docker CLI (BuildKit), never docker-py.
"""

from __future__ import annotations

from flowrig.builder.build import BuildResult, build, detect_client, find_image
from flowrig.builder.context import BuildContext, ContextFile, render_context, write_context

__all__ = [
    "BuildContext",
    "BuildResult",
    "ContextFile",
    "build",
    "detect_client",
    "find_image",
    "render_context",
    "write_context",
]
