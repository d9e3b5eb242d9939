"""A run's certificates, handed to a role container at its start and kept in memory.

Per-run certificates never enter an image, a task definition, a RunTask override,
a label or an environment that the container engine or the cloud API shows. Whoever
starts a role sets ``FLOWRIG_TLS_FROM`` to say how they arrive:

``stdin``
    one JSON line on the container's standard input (the docker backend writes it
    through the engine's attach stream, then closes it);
``secret``
    the ``FLOWRIG_TLS_SECRET`` variable, which ECS fills inside the container from the
    run's own Secrets Manager secret (the task definition names only its ARN);
``aws-secret``, ``azure-keyvault``, ``gcp-secret``
    the secret named by ``FLOWRIG_TLS_SECRET_REF`` in that cloud's secret store, which
    the role reads itself with its VM's identity (:mod:`flowrig.certs.stores`): a VM's
    user data, readable by whoever may describe the VM, holds only where it is.

The role writes them into a private directory on a memory file system
(``/dev/shm/flowrig-tls``), removes the delivery variables from its environment, and points
Dask at the directory (``FLOWRIG_TLS_DIR``). The line is :func:`encode`'s::

    {"ca": "-----BEGIN CERTIFICATE-----...", "cert": "...", "key": "...", "environment": {...}}

``environment`` (optional) holds the run's secrets by name (the docker backend's
``[cluster.options] secrets``, read from the environment of ``flowrig run``): the role
starts with them in its process environment, which the container's configuration,
``docker inspect`` and a task definition never show.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import BinaryIO, Mapping, MutableMapping

from flowrig import layout
from flowrig.certs import stores
from flowrig.certs.material import TLSMaterial
from flowrig.certs.validation import Labels, inspect
from flowrig.errors import BadInput

#: How a role's certificates arrive: ``stdin``, ``secret`` or one of :data:`stores.SOURCES`.
FROM_ENV = "FLOWRIG_TLS_FROM"
#: The variable ECS fills from the run's secret (``secret``).
SECRET_ENV = "FLOWRIG_TLS_SECRET"
#: Where the secret is in a cloud's secret store (:data:`stores.SOURCES`).
SECRET_REF_ENV = stores.SECRET_REF_ENV
#: Where Dask reads the certificates from once delivered.
TLS_DIR_ENV = layout.TLS_DIR_ENV
#: A memory file system in every container (and on Linux hosts).
MEMORY_DIR = Path("/dev/shm")
#: The directory the certificates are installed in, under :data:`MEMORY_DIR`.
INSTALL_NAME = "flowrig-tls"
#: The most a delivery may hold: three PEM blocks are a few KB.
MAX_BYTES = 64 * 1024

_SOURCES = ("stdin", "secret", *stores.SOURCES)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABELS = Labels(ca="the delivered CA certificate", cert="the delivered leaf", key="the delivered key")


#: Variables a delivered environment may not set: how the role itself gets started.
_RESERVED = (FROM_ENV, SECRET_ENV, SECRET_REF_ENV, TLS_DIR_ENV, layout.IN_IMAGE_ENV, "PATH", "PYTHONPATH")


def encode(material: TLSMaterial, environment: Mapping[str, str] | None = None) -> bytes:
    """The one line that delivers ``material`` and, when given, the role's secret ``environment``."""
    payload: dict[str, object] = {
        "ca": material.ca_pem.decode(), "cert": material.cert_pem.decode(), "key": material.key_pem.decode()
    }
    if environment:
        payload["environment"] = dict(environment)
    return json.dumps(payload).encode() + b"\n"


def decode(data: bytes | str) -> TLSMaterial:
    """The material in a delivered line, checked as a certificate directory would be.

    Raises
    ------
    BadInput
        Not the JSON :func:`encode` writes, or certificates that do not hold together.
    """
    return _decode(data)[0]


def _decode(data: bytes | str) -> tuple[TLSMaterial, dict[str, str]]:
    try:
        payload = json.loads(data)
        ca, cert, key = (payload[name].encode() for name in ("ca", "cert", "key"))
        environment = payload.get("environment") or {}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise BadInput("the run's certificates did not arrive as flowrig sends them (a JSON line)") from None
    inspect(ca, cert, key, labels=_LABELS)
    if not isinstance(environment, dict) or not all(
        isinstance(name, str) and _ENV_NAME.match(name) and name not in _RESERVED and isinstance(value, str)
        for name, value in environment.items()
    ):
        raise BadInput("the run's delivered environment is not a table of variable names and text")
    return TLSMaterial(ca_pem=ca, cert_pem=cert, key_pem=key), environment


def _read_line(stream: BinaryIO) -> bytes:
    # Byte by byte from the descriptor: nothing after the line is consumed, so the
    # rest of stdin (if any) stays the role's.
    fd = stream.fileno()
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BYTES:
        byte = os.read(fd, 1)
        if not byte or byte == b"\n":
            break
        chunks.append(byte)
        size += 1
    return b"".join(chunks)


def receive(environ: Mapping[str, str], stdin: BinaryIO) -> TLSMaterial | None:
    """The run's certificates when ``environ`` says they are delivered, else ``None``.

    Raises
    ------
    BadInput
        An unknown ``FLOWRIG_TLS_FROM``, or nothing (or something else) delivered.
    InfrastructureError
        A cloud's secret store kept failing until ``FLOWRIG_TLS_FETCH_TIMEOUT``.
    """
    return _receive(environ, stdin)[0]


def _receive(environ: Mapping[str, str], stdin: BinaryIO) -> tuple[TLSMaterial | None, dict[str, str]]:
    source = environ.get(FROM_ENV)
    if not source:
        return None, {}
    if source not in _SOURCES:
        raise BadInput(f"{FROM_ENV}={source!r} is not a way certificates arrive: use one of {', '.join(_SOURCES)}")
    if source == "stdin":
        data = _read_line(stdin)
        where = "on stdin"
    elif source in stores.SOURCES:
        ref = environ.get(SECRET_REF_ENV, "").strip()
        if not ref:
            raise BadInput(f"{FROM_ENV}={source} needs {SECRET_REF_ENV}, the secret holding the run's certificates")
        data = stores.fetch(source, ref, environ)
        where = f"in {ref}"
    else:
        data = environ.get(SECRET_ENV, "").encode()
        where = f"in {SECRET_ENV}"
    if not data.strip():
        raise BadInput(f"the run's certificates were to arrive {where}, but nothing did")
    return _decode(data)


def install(material: TLSMaterial, base: Path = MEMORY_DIR) -> Path:
    """Write ``material`` into the private directory ``base/flowrig-tls``; its path.

    The directory is 0700 and the key 0600, owned by this process's user. The path is
    the same in every container of a run (each has a memory file system of its own),
    so one run's settings can name its CA file for all of them.
    """
    if not base.is_dir():
        raise BadInput(f"{base} is missing: a role needs a memory file system there for its certificates")
    directory = base / INSTALL_NAME
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.is_symlink() or directory.stat().st_uid != os.getuid():
        raise BadInput(f"{directory} belongs to someone else: a role's certificates go only where it alone writes")
    directory.chmod(0o700)
    material.write_to_dir(directory)
    return directory


def role_environment(environ: MutableMapping[str, str], stdin: BinaryIO, base: Path = MEMORY_DIR) -> dict[str, str]:
    """The environment a role runs with: when certificates are delivered, they are
    installed (:func:`install`) and named by ``FLOWRIG_TLS_DIR``, the secrets delivered
    with them are set, and the delivery variables are gone (from ``environ`` too, so
    no child sees them)."""
    material, secrets = _receive(environ, stdin)
    for name in (SECRET_ENV, SECRET_REF_ENV, FROM_ENV):
        environ.pop(name, None)
    env = {**environ, **secrets}
    if material is not None:
        env[TLS_DIR_ENV] = str(install(material, base))
    return env
