"""Run parameters read from standard input by a real ``flowrig run``. Parsing, precedence
and validation are in tests/unit/test_parameters.py."""

from __future__ import annotations

import json

# --- validate against a real flow -------------------------------------------------------


def test_the_cli_reads_params_from_standard_input(project_factory):
    """``flowrig run --params-file -``: the private route for values no one else may read."""
    import subprocess

    from tests.run_support import FLOWRIG, marked_env

    project = project_factory(
        "from prefect import flow\n@flow\ndef main(secret: str) -> int:\n    return len(secret)\n"
    )
    done = subprocess.run(
        [*FLOWRIG, "run", str(project), "--params-file", "-", "--output", "json"],
        input='{"secret": "from-stdin"}', env=marked_env("stdin-params"), capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["result"] == len("from-stdin")
