"""What a docker-backend run used, against an independent clock: the engine's own
``start`` and ``die`` events of the run's containers (read from ``docker events`` by
the run's label once the run is over). Per role, the count and the seconds in the JSON
outcome are within 10% of what the events say (2 s at least), and the vCPU- and
GB-seconds are the seconds times the role's shape. The rendering and the pricing are
unit-tested (tests/unit/test_usage.py, test_prices.py).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from flowrig.containers import engine
from flowrig.containers.labels import LABEL_ROLE, LABEL_RUN_ID
from tests.docker_support import docker_run_env
from tests.run_support import FLOWRIG_SCRIPT

REPO = Path(__file__).resolve().parents[3]
SEED = REPO / "examples" / "seed"
TEN = "x=[0,1,2,3,4,5,6,7,8,9]"
#: How far the figures may be from the engine's: 10%, and at least this many seconds.
FLOOR = 2.0


def engine_lifetimes(client, run_id: str, since: float, until: float) -> dict[str, tuple[str, float, float]]:
    """``name -> (role, start, die)`` of every container of the run, from the engine's
    events (their nanosecond times)."""
    events = client.events(
        since=int(since), until=int(until) + 1, decode=True,
        filters={"type": "container", "label": f"{LABEL_RUN_ID}={run_id}", "event": ["start", "die"]},
    )
    seen: dict[str, dict] = {}
    for event in events:
        attributes = event["Actor"]["Attributes"]
        record = seen.setdefault(attributes["name"], {"role": attributes[LABEL_ROLE]})
        record[event.get("status") or event["Action"]] = event["timeNano"] / 1e9
    assert all({"start", "die"} <= set(record) for record in seen.values()), seen
    return {name: (r["role"], r["start"], r["die"]) for name, r in seen.items()}


@pytest.mark.docker
def test_what_a_docker_run_used_matches_the_engines_events(docker_client, seed_image):
    run_id = "u" + uuid.uuid4().hex[:9]
    since = time.time() - 1
    done = subprocess.run(
        [FLOWRIG_SCRIPT, "run", str(SEED), "--backend", "docker", "--image", seed_image, "--param", TEN,
         "--output", "json"],
        env=docker_run_env(run_id), capture_output=True, text=True, timeout=300,
    )
    until = time.time() + 1
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        usage = json.loads(done.stdout.strip().splitlines()[-1])["usage"]
        lifetimes = engine_lifetimes(docker_client, run_id, since, until)
        by_role: dict[str, list[float]] = {}
        for role, start, die in lifetimes.values():
            by_role.setdefault(role, []).append(die - start)
        # The runner's container, the scheduler's and one worker per five items.
        assert {role: len(lives) for role, lives in by_role.items()} == {"runner": 1, "scheduler": 1, "worker": 2}
        assert sorted(usage["roles"]) == sorted(by_role)
        cpus = docker_client.info()["NCPU"]
        for role, lives in by_role.items():
            got, expected = usage["roles"][role], sum(lives)
            assert got["count"] == len(lives), (role, got)
            assert abs(got["seconds"] - expected) <= max(FLOOR, 0.1 * expected), (role, got["seconds"], lives)
            placement = got["placement"]
            # No CPU limit on any role's container: each may use every CPU of the engine.
            assert (placement["market"], placement["vcpu"], placement["price_key"]) == ("local", cpus, "")
            assert got["vcpu_seconds"] == pytest.approx(got["seconds"] * placement["vcpu"], rel=1e-3, abs=0.01)
            assert got["gb_seconds"] == pytest.approx(got["seconds"] * placement["memory_gib"], rel=1e-3, abs=0.01)
            assert (got["estimated_cost"], got["no_price"], got["spot_share"]) == (None, "local", 0)
        assert usage["estimated_cost_total"] is None
        assert usage["price_table"].startswith("aws prices of ")
    finally:
        engine.remove_run(docker_client, run_id)
