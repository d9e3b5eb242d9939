"""The unit layer: rendering, models, policies, parsers and the CLI in process.

Nothing here may reach a Docker engine, AWS or a Prefect server: each test runs with
addresses where none answers, so a test that would reach one fails fast instead of
passing on what the machine happens to run.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _nothing_to_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    # Port 9 (discard) on loopback: nothing listens; one attempt, no retries waited out.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")
