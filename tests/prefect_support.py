"""Real Prefect servers for tests (registered in conftest.py): ``prefect server start``
with its default services, the task-run recorder among them, from
benchmarks/prefect_server.py.

- ``prefect_server``: on SQLite, Prefect's default, on 127.0.0.1;
- ``prefect_server_postgres``: on PostgreSQL (a private cluster of Debian's
  ``postgresql``, on 127.0.0.1), what teams run in production;
- ``prefect_servers``: each of the two, for tests that must hold on both;
- ``container_prefect_server``: on PostgreSQL, listening on the Docker bridge's
  gateway, the host's own address that containers on any run's network reach (a
  server on 127.0.0.1 is out of their reach).

Without PostgreSQL installed, the PostgreSQL servers skip, or fail when
``FLOWRIG_REQUIRE_POSTGRES=1`` (CI sets it).
"""

from __future__ import annotations

import os

import pytest

from benchmarks.prefect_server import PrefectServer, ServerError, postgres_bindir


def _server(tmp_path_factory, database: str, host: str = "127.0.0.1"):
    if database == "postgres" and postgres_bindir() is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("FLOWRIG_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    server = PrefectServer(tmp_path_factory.mktemp(f"prefect-{database}"), dict(os.environ), database=database,
                           host=host, durable=False)
    try:
        server.start(timeout=120)
    except ServerError as exc:
        pytest.fail(str(exc))
    return server


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    server = _server(tmp_path_factory, "sqlite")
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def prefect_server_postgres(tmp_path_factory):
    server = _server(tmp_path_factory, "postgres")
    yield server.url
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def prefect_servers(request):
    """The API URL of a server on each database in turn."""
    return request.getfixturevalue("prefect_server" if request.param == "sqlite" else "prefect_server_postgres")


@pytest.fixture(scope="session")
def container_prefect_server(tmp_path_factory, docker_client):
    import ipaddress

    config = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    # The default bridge often names no gateway: it is then the subnet's first address.
    gateway = config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])
    server = _server(tmp_path_factory, "postgres", host=gateway)
    yield server.url
    server.stop()
