"""Every role as a separate container of the one image, driven with testcontainers.

A Prefect API, a scheduler, two workers and the runner, each a container of the seed
image on a network of the test's own, run the seed flow over mutual TLS. A client
container on the same network then finds that the image's own certificate is let in
while a plain-TCP client and a client presenting a foreign certificate are refused.
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from tests.run_support import TEN
from tests.tls_support import foreign_material

pytestmark = pytest.mark.docker

SERVE_API = textwrap.dedent(
    """
    import time
    from flowrig.api import EmbeddedPrefectAPI
    api = EmbeddedPrefectAPI("0.0.0.0", "prefect", port=4200, auth_string="roles-test-token").start()
    api.wait_ready()
    print("prefect api ready", flush=True)
    time.sleep(3600)
    """
)

PROBE_CLIENTS = textwrap.dedent(
    """
    import json
    from distributed import Client
    from flowrig.certs import TLSMaterial

    own = TLSMaterial.from_dir("/etc/flowrig/tls")
    # Made on the host by trustme, not by flowrig: a CA the image does not know.
    foreign = TLSMaterial(*(pem.encode() for pem in json.loads(FOREIGN)))
    # Trusts the scheduler, but presents a leaf from a CA the image does not know.
    stranger = TLSMaterial(own.ca_pem, foreign.cert_pem, foreign.key_pem)
    seen = {}
    for name, address, security in [
        ("own", "tls://scheduler:8786", own.to_security()),
        ("plain", "tcp://scheduler:8786", None),
        ("foreign", "tls://scheduler:8786", stranger.to_security()),
    ]:
        try:
            with Client(address, security=security, timeout="5s") as client:
                seen[name] = len(client.scheduler_info()["workers"])
        except Exception as exc:
            seen[name] = type(exc).__name__
    print(json.dumps(seen), flush=True)
    """
)


def test_scheduler_workers_and_runner_as_containers_give_90_over_tls(seed_image):
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    # The shared API is authenticated: the test's own containers get its token.
    api_env = {"PREFECT_API_URL": "http://prefect:4200/api", "PREFECT_API_AUTH_STRING": "roles-test-token"}
    with Network() as network:
        api = (
            DockerContainer(seed_image)
            .with_command(["python", "-c", SERVE_API])
            .with_network(network)
            .with_network_aliases("prefect")
            .waiting_for(LogMessageWaitStrategy("prefect api ready").with_startup_timeout(180))
        )
        scheduler = (
            DockerContainer(seed_image)
            .with_command(["scheduler"])
            .with_network(network)
            .with_network_aliases("scheduler")
            .waiting_for(LogMessageWaitStrategy("Scheduler at:").with_startup_timeout(120))
        )
        workers = [
            DockerContainer(seed_image)
            .with_command(["worker", "tls://scheduler:8786", "--name", f"w{i}"])
            .with_network(network)
            .with_envs(**api_env)
            .waiting_for(LogMessageWaitStrategy("Registered to:").with_startup_timeout(120))
            for i in range(2)
        ]
        runner = (
            DockerContainer(seed_image)
            .with_command(["run", "--scheduler-address", "tls://scheduler:8786", "--param", TEN, "--output", "json"])
            .with_network(network)
            .with_envs(**api_env)
        )
        stranger = foreign_material()
        pems = json.dumps([p.decode() for p in (stranger.ca_pem, stranger.cert_pem, stranger.key_pem)])
        probe_code = f"FOREIGN = {pems!r}\n" + PROBE_CLIENTS
        probe = DockerContainer(seed_image).with_command(["python", "-c", probe_code]).with_network(network)
        with api, scheduler, workers[0], workers[1]:
            with runner:
                result = runner.get_wrapped_container().wait(timeout=300)
                stdout, stderr = runner.get_logs()
                assert result["StatusCode"] == 0, stderr.decode()[-2000:]
                outcome = json.loads(stdout.decode().strip().splitlines()[-1])
            assert outcome["state"] == "Completed"
            assert outcome["result"] == 90
            assert outcome["scheduler_address"] == "tls://scheduler:8786"

            with probe:
                assert probe.get_wrapped_container().wait(timeout=120)["StatusCode"] == 0
                seen = json.loads(probe.get_logs()[0].decode().strip().splitlines()[-1])
            # The own certificate sees both workers; the others get an error, no client.
            assert seen["own"] == 2, seen
            refused = ("OSError", "TimeoutError", "CommClosedError", "FatalCommClosedError")
            assert seen["plain"] in refused, seen
            assert seen["foreign"] in refused, seen
            # The scheduler's own log names the refusal of the plain-TCP client.
            deadline = time.monotonic() + 15
            while "WRONG_VERSION_NUMBER" not in b"".join(scheduler.get_logs()).decode():
                assert time.monotonic() < deadline, "the scheduler did not log the refusal"
                time.sleep(0.5)
