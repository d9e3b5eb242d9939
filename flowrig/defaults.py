"""Every default flowrig uses, in one place.

Each value can be overridden where it is used (a CLI option, a ``flowrig.toml`` key or
an argument); code elsewhere refers to these names instead of repeating literals.
"""

from __future__ import annotations

import os
from pathlib import Path

#: File name of a flow project's configuration, at the project's root.
PROJECT_FILE = "flowrig.toml"

#: Backend used when neither the project nor the command line names one.
BACKEND = "local"

#: Cluster size when the project sets neither ``n_workers`` nor ``adapt``.
N_WORKERS = 1
#: Bounds every size is clamped to (a sizing hook cannot escape them).
MIN_WORKERS = 0
MAX_WORKERS = 10
#: Threads per worker process.
WORKER_THREADS = 1

# --- certificates -------------------------------------------------------------
#: File names inside a certificate directory.
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
LEAF_CERT = "tls.crt"
LEAF_KEY = "tls.key"
#: Validity of a CA and of a leaf, in days. Leaves are short-lived on purpose.
CA_DAYS = 3650
LEAF_DAYS = 397
#: ``certs check`` warns when a certificate expires within this many days.
EXPIRY_WARNING_DAYS = 30
#: Names every role certificate carries; Dask checks the chain, not host names,
#: but the names make certificates readable and usable by other TLS clients.
LEAF_HOSTS = ("dask-scheduler", "dask-worker", "flowrig-runner", "localhost", "127.0.0.1")
#: Subject common names of a generated CA and of its role leaf.
CA_COMMON_NAME = "flowrig CA"
LEAF_COMMON_NAME = "flowrig dask"
#: Certificates start this many seconds in the past, so a container whose clock runs a
#: little behind the host's still accepts a certificate made a moment ago.
CERT_BACKDATE_SECONDS = 300
#: The CA-key scan of a build context reads only files smaller than this; keys are tiny,
#: and large files (wheels, data) would only slow the scan down.
KEY_SCAN_MAX_BYTES = 1024 * 1024

# --- the image ----------------------------------------------------------------
#: Where the image keeps its TLS files and baked project (fixed: task definitions,
#: passthrough commands and users' scripts refer to them).
IMAGE_TLS_DIR = Path("/etc/flowrig/tls")
IMAGE_PROJECT_DIR = Path("/opt/flowrig/project")
IMAGE_MANIFEST = Path("/opt/flowrig/manifest.json")
IMAGE_USER = "flowrig"
IMAGE_UID = 10001
BASE_IMAGE = "python:3.12-slim"

# --- Dask ports ---------------------------------------------------------------
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
#: Seconds a cluster may take to reach its first worker before the run gives up (exit 3).
CLUSTER_START_TIMEOUT = 120.0
#: Seconds a scheduler with no clients waits before it stops itself; longer than a
#: runner's set-up so an orphaned cluster still dies on its own.
SCHEDULER_IDLE_TIMEOUT = "15 minutes"
#: Seconds a worker keeps trying to reach a lost scheduler before it exits.
WORKER_DEATH_TIMEOUT = 60

# --- the embedded Prefect API -------------------------------------------------
#: Seconds the embedded Prefect API may take to answer its health check.
PREFECT_API_START_TIMEOUT = 60.0
#: Port the embedded API listens on inside a runner container (published to no one).
PREFECT_API_CONTAINER_PORT = 4200


def cache_dir() -> Path:
    """Directory for state reused across runs (the migrated Prefect database).

    ``FLOWRIG_HOME`` wins, then ``XDG_CACHE_HOME/flowrig``, then ``~/.cache/flowrig``.
    """
    if os.environ.get("FLOWRIG_HOME"):
        return Path(os.environ["FLOWRIG_HOME"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "flowrig"


# --- AWS ECS / Fargate ----------------------------------------------------------
#: Task definition families are ``<prefix>-<project or run id>-<role>``, so everything
#: flowrig registers sorts together in the console.
ECS_FAMILY_PREFIX = "flowrig"
#: Container names of the roles. dask-cloudprovider overrides the command of containers
#: named exactly ``dask-scheduler`` and ``dask-worker``, so those two are fixed.
ECS_RUNNER_CONTAINER = "flowrig-runner"
ECS_SCHEDULER_CONTAINER = "dask-scheduler"
ECS_WORKER_CONTAINER = "dask-worker"
#: Fargate size of each role: CPU units (1024 = one vCPU) and memory in MiB. Small on
#: purpose, since a run's cluster lives minutes; workers get the most memory because
#: they hold the data.
ECS_RUNNER_CPU = 1024
ECS_RUNNER_MEMORY = 2048
ECS_SCHEDULER_CPU = 1024
ECS_SCHEDULER_MEMORY = 2048
ECS_WORKER_CPU = 1024
ECS_WORKER_MEMORY = 4096
#: CPU architecture of rendered task definitions (the image is built for the host's).
ECS_CPU_ARCHITECTURE = "X86_64"
#: CloudWatch log group of rendered task definitions; ``{name}`` is the project name.
ECS_LOG_GROUP = "/flowrig/{name}"
#: Container health checks (seconds). The start period covers the image's imports
#: (about 5 s) with a wide margin, so a slow start is not counted as a failure.
ECS_HEALTH_INTERVAL = 30
ECS_HEALTH_TIMEOUT = 5
ECS_HEALTH_RETRIES = 3
ECS_HEALTH_START_PERIOD = 60
#: Open files per container: a scheduler holds one connection per worker and client.
ECS_NOFILE_LIMIT = 65535
#: Seconds an ``ecs``/``fargate`` cluster may take from the first AWS call until its
#: first worker has joined (exit 3 after that). Fargate needs about a minute per task to
#: pull the image and start; the rest is margin for capacity shortages.
ECS_PROVISION_TIMEOUT = 600.0
#: Seconds closing the Dask side of an ECS cluster (retiring workers, stopping their
#: tasks) may take before flowrig's own sweep stops whatever is left.
ECS_CLOSE_TIMEOUT = 60.0
#: Seconds teardown keeps retrying while stopped tasks release their network interfaces
#: (AWS refuses to delete a security group or cluster still in use until then).
ECS_CLEANUP_TIMEOUT = 300.0
#: Managed policy given to an execution role flowrig creates: pull images, write logs.
ECS_EXECUTION_ROLE_POLICY = "policy/service-role/AmazonECSTaskExecutionRolePolicy"
#: Attempts and connect timeout (seconds) of every AWS call flowrig makes itself; an
#: unreachable endpoint fails in seconds instead of retrying for minutes.
AWS_MAX_ATTEMPTS = 3
AWS_CONNECT_TIMEOUT = 10
#: Docker network ``flowrig ecs run-local`` puts containers on when none is named; it
#: outlives a run, so separate invocations (scheduler, workers, runner) meet on it.
ECS_RUN_LOCAL_NETWORK = "flowrig-ecs-local"

# --- docker backend -------------------------------------------------------------
#: Labels on every container and network the docker backend creates. The run id label
#: is how a run's leftovers are found after the process that made them was killed.
DOCKER_LABEL_RUN_ID = "flowrig.run-id"
DOCKER_LABEL_ROLE = "flowrig.role"
#: Names are ``<prefix>-<run id>`` (the network) and ``<prefix>-<run id>-<role>``.
DOCKER_NAME_PREFIX = "flowrig"
#: Seconds a scheduler container may take to log "Scheduler at:"; imports alone take
#: about 5 s in the image, more on a busy machine.
DOCKER_SCHEDULER_START_TIMEOUT = 60.0
#: Seconds ``docker stop`` waits before SIGKILL. Every role stops on SIGTERM in well
#: under a second, so this only bounds a stuck container.
DOCKER_STOP_TIMEOUT = 5
#: Seconds the host gives a runner container to tear its cluster down after Ctrl-C or
#: SIGTERM, before everything of the run is removed by force.
DOCKER_RUNNER_STOP_TIMEOUT = 20
#: Path of the Docker socket inside a runner container (it starts the run's scheduler
#: and workers as sibling containers through it).
DOCKER_SOCKET = "/var/run/docker.sock"
#: Where a scheduler or worker container gets the run's TLS files; copied in before the
#: container starts, so they do not have to be the image's baked ones.
DOCKER_TLS_DIR = "/tmp/flowrig-tls"
#: Host environment variables a runner container inherits when they are set.
DOCKER_PASSTHROUGH_ENV = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_LOGGING_LEVEL", "FLOWRIG_DEBUG")
#: Last log lines of a failed container folded into its one-line error message.
DOCKER_LOG_TAIL = 5
#: Modules a worker container imports before it joins the scheduler. The first Prefect
#: task on a worker would import them anyway; importing them at start-up overlaps that
#: with the runner's own start instead of delaying the flow's first tasks.
DOCKER_WORKER_PRELOAD = ("prefect.task_engine", "prefect_dask")


# --- the builder ------------------------------------------------------------------
#: Image label holding the content hash of the build context an image was built from;
#: an image whose label matches a freshly rendered context needs no rebuild.
IMAGE_CONTEXT_LABEL = "flowrig.context-hash"
#: Where a rendered build context keeps the flow project and the TLS files (the
#: Dockerfile's PROJECT build argument and its ``tls/`` source).
CONTEXT_PROJECT_DIR = "project"
CONTEXT_TLS_DIR = "tls"
#: Modification time (seconds since the epoch, 2000-01-01) given to every file of a
#: rendered context, so identical inputs give identical contexts and a warm cache.
CONTEXT_MTIME = 946684800
#: Names never copied from a flow project into a context (caches, VCS data, virtual
#: environments, and ``.env`` files, which usually hold secrets), besides what the
#: project's own ``.dockerignore`` excludes.
CONTEXT_SKIP_NAMES = (
    "__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints", ".DS_Store", ".env",
)
CONTEXT_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info", "~", ".swp")
#: BuildKit secret id under which pip's CA bundle reaches the build (``--pip-ca``).
PIP_CA_SECRET_ID = "pip-ca"
#: Docker client the builder prefers; ``FLOWRIG_DOCKER`` names another. When it cannot
#: use BuildKit, other ``docker`` executables on PATH are tried before the legacy builder.
DOCKER_CLIENT = "docker"
#: Output lines of a failed ``docker build`` shown above its one-line error.
BUILD_LOG_TAIL = 25
