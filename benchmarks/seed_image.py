"""The command line the benchmarks that run an image share: ``--image`` (which must
exist, built from the seed example) and ``--repeat``."""

from __future__ import annotations

import argparse
import subprocess
import sys


def parse_args(description: str) -> argparse.Namespace:
    """``--image`` and ``--repeat``; exits with the build command when the image is missing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--image", default="flowrig-seed:test")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if subprocess.run(["docker", "image", "inspect", args.image], capture_output=True).returncode:
        sys.exit(f"image {args.image} not found: flowrig build examples/seed --tag {args.image}")
    return args
