"""The build's file scans on kinds of data a project holds, old and new side by side.

Times :func:`flowrig.certs.scan.private_keys_in_bytes` (and, when the module exists,
the credential scan of :mod:`flowrig.project.secret_scan`) on random binary data, text,
a numeric CSV, a hex dump, hex of ASCII zeros and dense base64, in seconds per GiB.
With ``--against REV`` the key scan of that git revision runs on the same data in the
same process, interleaved, so a loaded machine slows both sides alike.

    python benchmarks/bench_scan.py [--mib 48] [--repeat 2] [--against main]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def samples(size: int) -> dict[str, bytes]:
    rng = random.Random(1)
    csv = "\n".join(",".join(f"{rng.random() * 1000:.3f}" for _ in range(8)) for _ in range(size // 70))
    return {
        "random": os.urandom(size),
        "text": (b"The quick brown fox 30 jumps over 3082 the lazy dog 2020-12-01.\n" * (size // 60))[:size],
        "numbers-csv": csv.encode()[:size],
        "hex-dump": os.urandom(size // 2).hex().encode(),
        "zeros-hex": b"30" * (size // 2),
        "dense-base64": base64.b64encode(os.urandom(size * 3 // 4))[:size],
    }


def _module_at(revision: str, path: str, name: str):
    """``path`` as it is at a git revision, loaded as ``name``; None if it has no such file."""
    done = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    file = Path(tempfile.mkdtemp()) / Path(path).name
    file.write_text(done.stdout)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def scan_at(revision: str):
    """The key scan module as it is at a git revision, loaded beside the current one.

    A revision whose scan imports its key forms from ``flowrig/certs/keyforms.py`` gets
    that revision's file too, not the current one.
    """
    import flowrig.certs.keyforms as current

    forms = _module_at(revision, "flowrig/certs/keyforms.py", "flowrig.certs.keyforms_old")
    sys.modules["flowrig.certs.keyforms"] = forms or current
    try:
        module = _module_at(revision, "flowrig/certs/scan.py", "flowrig.certs.scan_old")
    finally:
        sys.modules["flowrig.certs.keyforms"] = current
    if module is None:
        raise SystemExit(f"{revision} has no flowrig/certs/scan.py")
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--against", help="git revision whose key scan runs beside this one")
    args = parser.parse_args()

    from flowrig.certs import scan

    scans = {"keys": scan.private_keys_in_bytes}
    if args.against:
        scans[f"keys@{args.against}"] = scan_at(args.against).private_keys_in_bytes
    try:
        from flowrig.project import secret_scan

        scans["credentials"] = lambda data: secret_scan.findings_in_bytes(data, "sample")
    except ImportError:
        pass
    data = samples(args.mib << 20)
    for _ in range(args.repeat):
        for name, sample in data.items():
            cells = []
            for label, function in scans.items():
                started = time.perf_counter()
                list(function(sample))
                cells.append(f"{label} {(time.perf_counter() - started) / (len(sample) / 2**30):5.2f}")
            print(f"{name:13s} " + "  ".join(cells) + "  (s/GiB)", flush=True)


if __name__ == "__main__":
    main()
