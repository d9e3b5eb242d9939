"""The ``prune`` step: what a runtime never needs leaves the image's venv.

Files are pruned (pip and its kin, tests, caches, type stubs, C sources, Prefect's UI),
then shared objects are stripped where that provably changes nothing the dynamic loader
maps. Run inside the image build by ``buildsteps.py`` (which loads this file by path),
so it uses the standard library only and never imports flowrig.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

#: What a runtime never needs. pip/setuptools/wheel only arrive as some dependency's
#: dependency (the venv is made without pip), and leave with the rest.
PRUNE_DISTRIBUTIONS = ("pip", "setuptools", "wheel", "_distutils_hack", "pkg_resources")
PRUNE_DIR_NAMES = ("tests", "test", "__pycache__")
#: Stale bytecode (the compile step writes what is wanted), type stubs and C sources.
PRUNE_SUFFIXES = (".pyc", ".pyo", ".pyi", ".c", ".h", ".cpp", ".pyx", ".pxd")
#: Prefect's web UI bundles (17 MB): the run's embedded API starts with the UI off,
#: and the image sets PREFECT_UI_ENABLED=false for anything else that starts a server.
#: Bokeh's TypeScript compiler, its module sources and its typings (11.5 MB): they build
#: custom extensions with node.js, which no role does (the image has no node).
PRUNE_SITE_PATHS = (
    "prefect/server/ui",
    "prefect/server/ui-v2",
    "bokeh/server/static/js/compiler.js",
    "bokeh/server/static/js/lib",
    "bokeh/server/static/lib",
)
#: Folders where ``NAME.js`` goes when ``NAME.min.js`` is beside it (8 MB of bokeh): the
#: scheduler's dashboard serves only the minified bundles (bokeh's default,
#: ``BOKEH_MINIFIED=true``), and nothing reads the readable twin.
MINIFIED_TWIN_DIRS = ("bokeh/server/static/js",)
#: Directories of libraries that auditwheel (and delvewheel) vendor into a wheel:
#: ``numpy.libs/``, ``scipy.libs/``... Never stripped: they are rewritten by patchelf,
#: and binutils' strip mangles such files (numpy's OpenBLAS then fails to load with
#: "ELF load command address/offset not page-aligned").
VENDORED_LIBRARY_DIRS = (".libs",)


def prune_paths(site: Path) -> list[Path]:
    """Files and directories under ``site`` that a runtime does not need."""
    doomed: list[Path] = []
    for name in PRUNE_DISTRIBUTIONS:
        doomed.extend(site.glob(name))
        doomed.extend(site.glob(f"{name}-*.dist-info"))
        doomed.extend(site.glob(f"{name}.pth"))
    doomed.extend(site.glob("distutils-precedence.pth"))
    doomed.extend(site / p for p in PRUNE_SITE_PATHS if (site / p).exists())
    doomed.extend(_minified_twins(site))
    skip = {str(p) for p in doomed}
    for directory, dirs, files in os.walk(site):
        here = Path(directory)
        dirs[:] = [d for d in dirs if str(here / d) not in skip]
        for name in list(dirs):
            if name in PRUNE_DIR_NAMES and (name == "__pycache__" or _is_test_dir(here / name)):
                doomed.append(here / name)
                dirs.remove(name)
        doomed.extend(here / f for f in files if f.endswith(PRUNE_SUFFIXES))
    return sorted(set(doomed))


def _minified_twins(site: Path) -> list[Path]:
    """``NAME.js`` files of :data:`MINIFIED_TWIN_DIRS` that have a ``NAME.min.js``."""
    twins = (p.with_name(p.name.removesuffix(".min.js") + ".js") for f in MINIFIED_TWIN_DIRS
             for p in (site / f).glob("*.min.js"))
    return [p for p in twins if p.is_file()]


def _is_test_dir(path: Path) -> bool:
    """A ``tests``/``test`` directory holding Python code (not, say, a data folder)."""
    return any(p.suffix == ".py" for p in path.rglob("*.py"))


def prune_venv(venv: Path, site: Path, strip_mode: str, keep: Collection[str] = ()) -> None:
    """Remove :func:`prune_paths` and pip's scripts from ``venv``, then strip its shared
    objects unless ``strip_mode`` is ``off`` or the base has no ``strip``.

    ``keep`` holds paths relative to ``venv`` that stay as they are (neither removed nor
    stripped): a lower layer's files, pruned already, whose bytecode is wanted.
    """
    doomed = [p for p in prune_paths(site) if p.relative_to(venv).as_posix() not in keep]
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for script in ("pip", "pip3", f"pip{sys.version_info[0]}.{sys.version_info[1]}", "wheel"):
        (venv / "bin" / script).unlink(missing_ok=True)
    print(f"pruned {len(doomed)} paths")
    if strip_mode == "off":
        print("STRIP=off: shared objects left as they are")
        return
    strip = shutil.which("strip")
    if strip is None:
        # Bases such as python:*-slim and Debian minbase have no binutils; wheels on
        # PyPI are mostly stripped already, so this is a small loss.
        print("no strip on this base: shared objects left as they are")
        return
    result = strip_shared_objects(site, strip, {(venv / k).as_posix() for k in keep})
    print(
        f"stripped {result['stripped']} shared objects ({result['saved'] / 1e6:.1f} MB less); left as they were: "
        f"{result['vendored']} vendored by auditwheel (*.libs), {result['changed']} whose loaded segments "
        f"stripping would change, {result['unstrippable']} strip could not handle"
    )


# --- strip, proven harmless -------------------------------------------------------------
# strip(1) removes symbol tables and debug sections, which the dynamic loader never maps.
# On files that patchelf rewrote (auditwheel does so to every library it vendors), it has
# been seen to move or empty loadable segments instead, and the library no longer loads.
# So every object is stripped into a copy, and the copy replaces it only when its
# loadable segments hold the same bytes at the same addresses, at file offsets the loader
# accepts: then the process image is the one the original makes.

_PT_LOAD = 1


def _elf_layout(data: bytes) -> tuple[str, bool, int, int, int] | None:
    """(byte order, 64-bit, phoff, phentsize, phnum) of an ELF file, or None."""
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    order, wide = ("<" if data[5] == 1 else ">"), data[4] == 2
    try:
        if wide:
            (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
            entsize, count = struct.unpack_from(order + "HH", data, 0x36)
        else:
            (phoff,) = struct.unpack_from(order + "I", data, 0x1C)
            entsize, count = struct.unpack_from(order + "HH", data, 0x2A)
    except struct.error:
        return None
    if entsize < (56 if wide else 32) or phoff + entsize * count > len(data):
        return None
    return order, wide, phoff, entsize, count


def program_headers(data: bytes) -> list[tuple[int, int, int, int, int, int, int]] | None:
    """(type, flags, offset, vaddr, filesz, memsz, align) of each ELF program header,
    or None when ``data`` is not an ELF file this can read."""
    layout = _elf_layout(data)
    if layout is None:
        return None
    order, wide, phoff, entsize, count = layout
    headers = []
    for i in range(count):
        if wide:
            p_type, flags, offset, vaddr, _, filesz, memsz, align = struct.unpack_from(
                order + "IIQQQQQQ", data, phoff + i * entsize
            )
        else:
            p_type, offset, vaddr, _, filesz, memsz, flags, align = struct.unpack_from(
                order + "IIIIIIII", data, phoff + i * entsize
            )
        headers.append((p_type, flags, offset, vaddr, filesz, memsz, align))
    return headers


def _unmapped_fields(data: bytes) -> list[tuple[int, int]]:
    """File ranges a loadable segment may hold that the loader never reads and strip
    rewrites: the ELF header's section-table fields, and each program header's file
    offset (compared on their own, in :func:`loads_like`)."""
    layout = _elf_layout(data)
    assert layout is not None
    _, wide, phoff, entsize, count = layout
    # e_shoff, then e_shentsize, e_shnum and e_shstrndx.
    ranges = [(0x28, 0x30), (0x3A, 0x40)] if wide else [(0x20, 0x24), (0x2E, 0x34)]
    width, at = (8, 8) if wide else (4, 4)
    ranges += [(phoff + i * entsize + at, phoff + i * entsize + at + width) for i in range(count)]
    return ranges


def _segment(data: bytes, offset: int, size: int, masked: list[tuple[int, int]]) -> bytes:
    chunk = data[offset : offset + size]
    overlapping = [(a, b) for a, b in masked if a < offset + size and b > offset]
    if not overlapping:
        return chunk
    editable = bytearray(chunk)
    for a, b in overlapping:
        start, stop = max(a, offset) - offset, min(b, offset + size) - offset
        editable[start:stop] = bytes(stop - start)
    return bytes(editable)


def loads_like(original: bytes, stripped: bytes) -> bool:
    """Whether ``stripped`` gives the dynamic loader what ``original`` gives it.

    Every program header must be the same but for its file offset; each loadable
    segment must hold the same bytes (but for the ELF header's section-table fields
    and the program headers' offsets, which the loader does not use), at an offset
    congruent to its address modulo its alignment and the page size (glibc refuses
    others: "ELF load command address/offset not page-aligned").
    """
    before, after = program_headers(original), program_headers(stripped)
    if before is None or after is None or len(before) != len(after):
        return False
    masked_before, masked_after = _unmapped_fields(original), _unmapped_fields(stripped)
    for old, new in zip(before, after):
        if old[:2] + old[3:] != new[:2] + new[3:]:
            return False
        p_type, _, offset, vaddr, filesz, _, align = new
        if p_type != _PT_LOAD:
            continue
        if (vaddr - offset) % max(align, 4096) or offset + filesz > len(stripped):
            return False
        if _segment(original, old[2], filesz, masked_before) != _segment(stripped, offset, filesz, masked_after):
            return False
    return True


def _vendored(path: Path, site: Path) -> bool:
    return any(part.endswith(VENDORED_LIBRARY_DIRS) for part in path.relative_to(site).parts[:-1])


def strip_shared_objects(site: Path, strip: str, keep: Collection[str] = ()) -> dict[str, int]:
    """Strip the shared objects under ``site`` where that provably changes nothing the
    loader maps (see :func:`loads_like`), but for the absolute paths in ``keep``;
    returns counts and the bytes saved."""
    counts = {"stripped": 0, "vendored": 0, "changed": 0, "unstrippable": 0, "saved": 0}
    kept: list[str] = []
    objects = sorted(p for p in site.rglob("*.so*")
                     if p.is_file() and not p.is_symlink() and p.as_posix() not in keep)
    for path in objects:
        original = path.read_bytes()
        if program_headers(original) is None:
            continue  # not an ELF object (a linker script, say)
        if _vendored(path, site):
            counts["vendored"] += 1
            continue
        copy = path.with_name(f".{path.name}.flowrig-strip")
        done = subprocess.run([strip, "--strip-unneeded", "-o", str(copy), str(path)], capture_output=True)
        stripped = copy.read_bytes() if done.returncode == 0 and copy.is_file() else None
        if stripped is None:
            counts["unstrippable"] += 1
        elif len(stripped) >= len(original):
            pass  # already stripped
        elif not loads_like(original, stripped):
            counts["changed"] += 1
            kept.append(path.relative_to(site).as_posix())
        else:
            os.chmod(copy, path.stat().st_mode & 0o7777)
            os.replace(copy, path)
            counts["stripped"] += 1
            counts["saved"] += len(original) - len(stripped)
        copy.unlink(missing_ok=True)
    if kept:
        more = f" and {len(kept) - 5} more" if len(kept) > 5 else ""
        print(f"left unstripped, since stripping would change what the loader maps: {', '.join(kept[:5])}{more}")
    return counts

