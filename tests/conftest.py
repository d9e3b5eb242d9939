"""Shared test set-up.

Fixture modules live beside this file and are registered as plugins: Docker fixtures
fail instead of skipping when ``FLOWRIG_REQUIRE_DOCKER=1`` (as CI sets it), and the
AWS fixtures run a real moto server on 127.0.0.1.
"""

from __future__ import annotations

import os

pytest_plugins = ["tests.docker_support", "tests.aws_support", "tests.aws_faults", "tests.iam_support", "tests.run_support", "tests.tls_support", "tests.prefect_support", "tests.browser_support"]

# Tests never talk to a Prefect server they did not start, nor send analytics.
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
