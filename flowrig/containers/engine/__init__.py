"""The one package that talks to the Docker engine (docker-py).

Each function does one thing to the engine and turns docker-py's errors into one-line
:class:`~flowrig.errors.BadInput` or :class:`~flowrig.errors.InfrastructureError`.
Its modules, by what they touch:

- :mod:`.client`: reaching the engine, and the wording of its errors;
- :mod:`.images`: local images and the files in them (nothing is pulled);
- :mod:`.networks`: a run's bridge networks;
- :mod:`.lifecycle`: a container from its plan to its exit (create, start, stdin, wait);
- :mod:`.cleanup`: removing containers and networks, one or a run's;
- :mod:`.logs`: containers' output copied to this process's streams;
- :mod:`.events`: the engine's events of a run's containers.

Everything is imported from here (``from flowrig.containers.engine import connect``);
no other module of flowrig imports docker-py.
"""

from flowrig.containers.engine.cleanup import (
    REMOVE_THREADS,
    labelled,
    remove_container,
    remove_named,
    remove_run,
    run_containers,
    stop_and_remove,
)
from flowrig.containers.engine.client import LOG_TAIL, connect, log_tail, logger
from flowrig.containers.engine.events import EventWatch, watch_events
from flowrig.containers.engine.images import (
    CONTAINER_FILE_MAX_BYTES,
    container_file,
    image_attributes,
    image_file,
    image_user,
    require_image,
)
from flowrig.containers.engine.lifecycle import (
    StdinWriter,
    attach_stdin,
    container_logs_tail,
    create_container,
    engine_resources,
    engine_time,
    exit_state,
    first_exit,
    gpu_runtime,
    lifetime,
    limits,
    oom_killed,
    published_port,
    start_container,
    wait_for_exit,
    wait_for_log,
)
from flowrig.containers.engine.logs import LogPump, StreamFilter
from flowrig.containers.engine.networks import create_network, ensure_network

__all__ = [
    "CONTAINER_FILE_MAX_BYTES",
    "LOG_TAIL",
    "REMOVE_THREADS",
    "EventWatch",
    "LogPump",
    "StdinWriter",
    "StreamFilter",
    "attach_stdin",
    "connect",
    "container_file",
    "container_logs_tail",
    "create_container",
    "create_network",
    "engine_resources",
    "gpu_runtime",
    "engine_time",
    "ensure_network",
    "exit_state",
    "first_exit",
    "image_attributes",
    "image_file",
    "image_user",
    "labelled",
    "lifetime",
    "limits",
    "log_tail",
    "logger",
    "oom_killed",
    "published_port",
    "remove_container",
    "remove_named",
    "remove_run",
    "require_image",
    "run_containers",
    "start_container",
    "stop_and_remove",
    "wait_for_exit",
    "wait_for_log",
    "watch_events",
]
