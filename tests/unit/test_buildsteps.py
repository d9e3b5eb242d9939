"""The in-build steps' judgements as data: ELF segments the loader refuses, and pip's failures
turned into one line naming the fix. The steps run for real in
tests/e2e/local/test_buildsteps.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

from flowrig.builder import buildsteps_install, buildsteps_prune


def plain_extension() -> Path:
    """An extension module auditwheel did not patch (msgpack vendors no library)."""
    import msgpack._cmsgpack

    return Path(msgpack._cmsgpack.__file__)


# --- strip, proven harmless ---------------------------------------------------------------------


def test_a_segment_at_an_offset_the_loader_refuses_is_caught():
    data = bytearray(plain_extension().read_bytes())
    headers = buildsteps_prune.program_headers(bytes(data))
    assert headers is not None
    # Move the second loadable segment's file offset by 8 bytes: same bytes, wrong place.
    index = [i for i, h in enumerate(headers) if h[0] == 1][1]
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    (entsize,) = struct.unpack_from("<H", data, 0x36)
    field = phoff + index * entsize + 8
    (offset,) = struct.unpack_from("<Q", data, field)
    struct.pack_into("<Q", data, field, offset + 8)
    assert not buildsteps_prune.loads_like(plain_extension().read_bytes(), bytes(data))


def test_files_that_are_not_elf_are_not_compared():
    assert buildsteps_prune.program_headers(b"/* GNU ld script */ GROUP ( libc.so.6 )") is None
    assert not buildsteps_prune.loads_like(b"not elf", b"not elf")


# --- pip's failures, told in one line ---------------------------------------------------------------

# pip 23's own words (the base's pip), as it printed them against the index here.
MISSPELT = [
    "Collecting numpyy",
    "ERROR: Could not find a version that satisfies the requirement numpyy (from versions: none)",
    "ERROR: No matching distribution found for numpyy",
]
NO_SUCH_VERSION = [
    "ERROR: Could not find a version that satisfies the requirement six==0.0.7 (from versions: 0.9.0, 1.15.0, "
    "1.16.0, 1.17.0)",
    "ERROR: No matching distribution found for six==0.0.7",
]
CONFLICT = [
    "ERROR: Cannot install six==1.17.0 because these package versions have conflicting dependencies.",
    "",
    "The conflict is caused by:",
    "    The user requested six==1.17.0",
    "    The user requested (constraint) six==1.16.0",
    "",
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/",
]
UNREACHABLE = [
    "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
    "failed: unable to get local issuer certificate (_ssl.c:992)'))': /simple/numpy/",
    "ERROR: Could not find a version that satisfies the requirement numpy (from versions: none)",
    "ERROR: No matching distribution found for numpy",
]


def test_a_misspelt_requirement_is_named_with_the_fix():
    kind, line = buildsteps_install.diagnose_pip_failure(MISSPELT, "requirements.txt")
    assert kind == "project"
    assert "'numpyy'" in line and "spelling" in line and "requirements.txt" in line and "\n" not in line


def test_a_version_that_does_not_exist_is_named_with_the_latest_ones():
    kind, line = buildsteps_install.diagnose_pip_failure(NO_SUCH_VERSION, "reqs/prod.txt")
    assert kind == "project"
    assert "'six==0.0.7'" in line and "1.17.0" in line and "reqs/prod.txt" in line


def test_a_conflict_with_the_lock_names_both_sides():
    kind, line = buildsteps_install.diagnose_pip_failure(CONFLICT, "requirements.txt")
    assert kind == "project"
    assert "six==1.17.0" in line and "six==1.16.0 (flowrig's lock, constraints.txt)" in line


def test_an_unreachable_index_is_not_blamed_on_the_requirements():
    kind, line = buildsteps_install.diagnose_pip_failure(UNREACHABLE, "requirements.txt")
    assert kind == "index"
    assert "could not reach the package index" in line and "--pip-ca" in line
    assert "numpy" not in line.split("(")[0]


