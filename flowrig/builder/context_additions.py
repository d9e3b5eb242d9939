"""What a written build context may get for one build, beside what
:func:`~flowrig.builder.context.render_context` put in it: a CA bundle for pip, and the
``.netrc`` secret mount. Neither changes the context's hash: the image is the same."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flowrig.builder import defaults
from flowrig.builder.dockerfile import DOCKERFILE, PIP_CA, with_pip_netrc
from flowrig.errors import BadInput


def add_pip_ca(directory: str | Path, pip_ca: str | Path) -> Path:
    """Copy a CA bundle for pip into a written context, as :data:`~flowrig.builder.dockerfile.PIP_CA`.

    Only the Dockerfile's ``build`` stage reads it; the image copies nothing else from
    that stage, so the bundle reaches no layer of the image. Its time is the context's
    fixed one, so the same bundle keeps the cache warm.

    Raises
    ------
    BadInput
        ``pip_ca`` is not a file.
    """
    source = Path(pip_ca)
    if not source.is_file():
        raise BadInput(f"pip CA bundle {source} is not a file: pass an existing PEM bundle")
    target = Path(directory) / PIP_CA
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)
    os.utime(target, (defaults.CONTEXT_MTIME, defaults.CONTEXT_MTIME))
    return target


def add_pip_netrc_mount(directory: str | Path) -> Path:
    """Rewrite a written context's Dockerfile to mount the ``.netrc`` build secret.

    Only the install of the project's requirements gets the mount
    (:func:`flowrig.builder.dockerfile.with_pip_netrc`); the file keeps the context's
    fixed time. The context's hash (:attr:`BuildContext.digest`) stays that of the
    context without it: the image the build makes is the same.
    """
    path = Path(directory) / DOCKERFILE
    path.write_text(with_pip_netrc(path.read_text(encoding="utf-8")), encoding="utf-8")
    os.utime(path, (defaults.CONTEXT_MTIME, defaults.CONTEXT_MTIME))
    return path
