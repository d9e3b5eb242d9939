"""Find private keys in files, whatever their form or size, before they reach an image.

Whoever holds a private key that a cluster trusts (a CA key above all) can join it, and
an image is readable by anyone who can pull it. The build therefore refuses every
private key but the image's own leaf key, in every form ``cryptography`` reads:

- PEM blocks of any private key type (``PRIVATE KEY``, ``RSA``/``EC``/``DSA``/
  ``ENCRYPTED``/``OPENSSH PRIVATE KEY``, a PGP private key block), also inside JSON or
  code with ``\\n`` escapes (a cloud service account file, say), and with its lines
  quoted or commented out (``> `` in a mail, ``# ``, ``// ``, `` * ``, ``-- ``, ``; ``);
- DER files: PKCS#1, PKCS#8 (also encrypted), SEC1, and PKCS#12 by structure even when
  it is encrypted; the binary OpenSSH format;
- base64 text of such DER anywhere in a file (a key pasted into YAML or a notebook),
  and PEM text encoded in base64 once more (a Kubernetes Secret's ``data``), found by
  the encoded ``-----BEGI`` at each of its three alignments;
- hex text of such DER (``xxd -p``, ``bytes.hex()``, bytes separated by colons or
  blanks, a C array of ``0x..`` or ``\\x..`` escapes);
- any of these in UTF-16 text, little- or big-endian, with or without a byte order mark
  (a file saved as "Unicode" by an editor), and a PEM block in UTF-16 anywhere.

Files are read in chunks of :data:`flowrig.certs.defaults.KEY_SCAN_CHUNK_BYTES`, so a
file of any size is scanned in bounded memory; how each form is recognised in a chunk
and decoded is :mod:`flowrig.certs.keyforms`'s.

Time budget: 10 s per GiB scanned. Measured on a 1 GiB file (2 shared cores, file in
the page cache): 1.5 s for random binary data, 1.5 s for text, about 3.5 s for dense
base64 (where nearly every ``M`` starts a candidate). The hex and UTF-16 searches made
it 1.3 to 2.5 times slower, measured side by side on a loaded machine
(``benchmarks/bench_scan.py --against REV`` runs both in one process).

What it cannot see: keys inside archives or compressed files (zip, wheels, tar.gz),
keys at an offset inside other binary data, keys split across strings or otherwise
encoded (base64url JWK, a key's numbers as ``openssl pkey -text`` prints them),
prefixes other than the quote and comment marks above, and formats cryptography does
not know (Java keystores, PuTTY files are found by their header only).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from flowrig.certs import defaults, validation
from flowrig.certs.keyforms import (
    BASE64_ALPHABET,
    BASE64_BLOCK,
    BASE64_DER,
    BASE64_RUN_BACK,
    HEX_DER,
    HEX_DIGITS,
    HEX_HEADER_BACK,
    HEX_PBE_OID,
    HEX_VERSION,
    MIN_OPENSSH_BODY,
    OPENSSH_BASE64,
    OPENSSH_MAGIC,
    PEM_BASE64,
    PEM_BEGIN,
    PEM_END,
    PUTTY,
    UTF16_PEM,
    Narrowed,
    decode_base64,
    der_key_form,
    der_length,
    hex_key_at,
    load_der,
    load_pem,
    looks_like_pem_body,
    public_der_of,
    utf16_parity,
)

__all__ = [
    "FoundKey",
    "find_ca_private_keys",
    "private_keys_in",
    "private_keys_in_bytes",
    "private_keys_in_file",
]


@dataclass(frozen=True)
class FoundKey:
    """A private key found in a file.

    Attributes
    ----------
    form
        How it was stored: ``PEM``, ``DER PKCS#8``, ``PKCS#12``, ``base64 DER PKCS#1``...
    offset
        Where it starts in the file (bytes).
    public
        The DER ``SubjectPublicKeyInfo`` of the key when it could be read; ``None``
        when it is encrypted or in a form cryptography cannot load.
    """

    form: str
    offset: int
    public: bytes | None = None


# --- the scan ------------------------------------------------------------------------


def private_keys_in(stream: BinaryIO, size: int | None = None) -> Iterator[FoundKey]:
    """Every private key in a binary stream, in the order found.

    Parameters
    ----------
    stream
        Read from its current position to its end, in chunks.
    size
        The stream's total length when known (a file's): a file that is one DER
        element is recognised by it.
    """
    chunk_size = defaults.KEY_SCAN_CHUNK_BYTES
    reach = defaults.KEY_BLOCK_MAX_BYTES
    buffer = stream.read(chunk_size)
    if not buffer:
        return
    parity = utf16_parity(buffer)
    if parity is not None:
        # UTF-16 text: its characters are scanned, as the text an editor shows.
        for key in private_keys_in(Narrowed(stream, buffer, parity)):
            yield FoundKey(f"UTF-16 {key.form}", 2 * key.offset + parity, key.public)
        return
    yield from _whole_file(buffer, size)
    if buffer.startswith(OPENSSH_MAGIC):
        yield FoundKey("OpenSSH", 0)
    # The buffer starts at the first byte not scanned yet (``base`` in the stream) and
    # reaches ``reach`` bytes past what a window scans, so a block that starts in the
    # window is seen whole; ``previous`` is the byte before it.
    base, previous, covered, eof = 0, b"\n", 0, False
    while True:
        while not eof and len(buffer) < chunk_size + reach:
            more = stream.read(chunk_size)
            eof = not more
            buffer += more
        end = len(buffer) if eof else len(buffer) - reach
        for key, stop in _scan_window(buffer, base, end, previous, covered):
            covered = max(covered, stop)
            yield key
        if eof:
            return
        previous = buffer[end - 1 : end]
        buffer, base = buffer[end:], base + end


def _whole_file(head: bytes, size: int | None) -> Iterator[FoundKey]:
    """A file that is one DER private key or PKCS#12 (its first element spans it all)."""
    form = der_key_form(head[:64])
    total = der_length(head)
    if form is None or total is None or size is None or not 0 <= size - total <= 2:
        return  # not one DER element (a trailing newline is tolerated)
    name = "PKCS#12" if form == "PKCS#12" else f"DER {form}"
    if total > len(head) or total > defaults.KEY_DER_MAX_BYTES:
        if form == "PKCS#12":  # a PFX that large holds many certificates: count it
            yield FoundKey(name, 0)
        return
    is_key, public = load_der(head[:total], form)
    if is_key:
        yield FoundKey(name, 0, public)


def _scan_window(
    buffer: bytes, base: int, end: int, previous: bytes, covered: int
) -> Iterator[tuple[FoundKey, int]]:
    """Keys starting in ``buffer[:end]`` (``buffer`` reaches further, for their ends).

    Yields (key, absolute end of the block) in order of their start.
    """
    reach = defaults.KEY_BLOCK_MAX_BYTES
    pem_spans: list[tuple[int, int]] = []
    found: list[tuple[int, FoundKey, int]] = []
    for match in _iter_pem(buffer, end):
        start = match.start()
        if base + start < covered:
            continue
        closing = PEM_END.search(buffer, match.end(), match.end() + reach)
        body_end = closing.start() if closing else min(len(buffer), match.end() + reach)
        body = buffer[match.end() : body_end]
        if not looks_like_pem_body(body):
            continue  # the markers in prose or code, not a key
        label = match.group(1)
        public = load_pem(label, body) if closing and not match.group(2) else None
        stop = closing.end() if closing else body_end
        pem_spans.append((start, stop))
        kind = "PEM" if not match.group(2) else "PGP private key block"
        found.append((start, FoundKey(kind, base + start, public), base + stop))
    position = 0
    while True:
        match = BASE64_DER.search(buffer, position, end + 32)
        if match is None or match.start() >= end:
            break
        start = match.start()
        position = start + 1
        before = buffer[start - 1] if start > 0 else previous[-1]
        if before in BASE64_ALPHABET or any(a <= start < b for a, b in pem_spans):
            continue
        form = der_key_form(decode_base64(match.group(0)))
        if form is None:
            continue
        block = BASE64_BLOCK.match(buffer, start, start + reach * 2)
        der = decode_base64(block.group(0)) if block else b""
        total = der_length(der)
        if total is not None and len(der) >= total:
            is_key, public = load_der(der[:total], form)
            if not is_key:
                continue
        else:
            # Cut short (by a separator this scan does not join): the shape says key.
            public = None
        stop = block.end() if block else start + 32
        found.append((start, FoundKey(f"base64 DER {form}", base + start, public), base + stop))
        position = max(position, stop)
    at = buffer.find(OPENSSH_BASE64, 0, end)
    while at != -1:
        block = BASE64_BLOCK.match(buffer, at, at + reach * 2)
        if block and len(block.group(0)) >= MIN_OPENSSH_BODY and not any(a <= at < b for a, b in pem_spans):
            found.append((at, FoundKey("base64 OpenSSH", base + at), base + block.end()))
        at = buffer.find(OPENSSH_BASE64, at + 1, end)
    found.extend(_pem_in_base64(buffer, base, end, reach))
    found.extend(_hex_der(buffer, base, end, previous, pem_spans))
    found.extend(_utf16_pem(buffer, base, end, reach))
    # A literal search: a regular expression anchored at line starts would try every
    # position and take seconds per GiB.
    at = buffer.find(PUTTY, 0, end)
    while at != -1:
        if (buffer[at - 1 : at] if at else previous) in (b"\n", b"\r"):
            found.append((at, FoundKey("PuTTY", base + at), base + at + len(PUTTY)))
        at = buffer.find(PUTTY, at + 1, end)
    for _start, key, stop in sorted(found, key=lambda item: item[0]):
        yield key, stop


def _pem_in_base64(buffer: bytes, base: int, end: int, reach: int) -> list[tuple[int, FoundKey, int]]:
    """PEM private keys that were base64-encoded once more, found by their encoded marker.

    The encoding starts where the base64 run that holds the marker starts (a run cut
    from the start of the window by more than ``reach`` bytes is not followed back).
    """
    found: list[tuple[int, FoundKey, int]] = []
    skip_to = 0
    for marker in PEM_BASE64:
        at = buffer.find(marker, 0, end)
        while at != -1:
            if at >= skip_to:
                back = BASE64_RUN_BACK.search(buffer, max(0, at - reach), at)
                start = back.start() if back else at
                block = BASE64_BLOCK.match(buffer, start, start + reach * 2)
                if block:
                    inner = list(private_keys_in_bytes(decode_base64(block.group(0))))
                    if inner:
                        found.append((start, FoundKey(f"base64 {inner[0].form}", base + start, inner[0].public),
                                      base + block.end()))
                        skip_to = block.end()
            at = buffer.find(marker, at + 1, end)
    return found


def _hex_der(
    buffer: bytes, base: int, end: int, previous: bytes, pem_spans: list[tuple[int, int]]
) -> list[tuple[int, FoundKey, int]]:
    """Private keys written as the hex text of their DER (see :data:`HEX_VERSION`)."""
    reach = defaults.KEY_BLOCK_MAX_BYTES
    anchors = sorted(
        match.start()
        for pattern in (HEX_VERSION, HEX_PBE_OID)
        for match in pattern.finditer(buffer, 0, end + HEX_HEADER_BACK)
    )
    found: list[tuple[int, FoundKey, int]] = []
    done = 0  # nothing before this is looked at again (a key's run, a header tried)
    for anchor in anchors:
        if anchor < done:
            continue
        position = max(done, anchor - HEX_HEADER_BACK)
        while (header := HEX_DER.search(buffer, position, anchor + 16)) is not None:
            start = header.start()
            if start > anchor or start >= end:
                break
            position = start + 1  # headers may overlap: try each start
            before = buffer[start - 1] if start > 0 else previous[-1]
            if before in HEX_DIGITS or any(a <= start < b for a, b in pem_spans):
                continue  # within a longer run of hex (not at a byte's start), or in a PEM block
            key = hex_key_at(buffer, start, reach)
            if key is not None:
                form, public, stop = key
                found.append((start, FoundKey(f"hex DER {form}", base + start, public), base + stop))
                done = stop
                break
    return found


def _utf16_pem(buffer: bytes, base: int, end: int, reach: int) -> list[tuple[int, FoundKey, int]]:
    """PEM private keys in UTF-16 text inside a file that is not UTF-16 as a whole
    (such a file is narrowed to its characters before the scan)."""
    found: list[tuple[int, FoundKey, int]] = []
    at = buffer.find(UTF16_PEM, 0, end)
    while at != -1:
        text = buffer[at : at + 2 * reach : 2]  # the characters, from the marker on
        inner = list(private_keys_in_bytes(text))
        closing = PEM_END.search(text)
        stop = at + 2 * (closing.end() if closing else len(text))
        if inner:
            found.append((at, FoundKey(f"UTF-16 {inner[0].form}", base + at, inner[0].public), base + stop))
        at = buffer.find(UTF16_PEM, stop if inner else at + 1, end)
    return found


def _iter_pem(buffer: bytes, end: int) -> Iterator[re.Match[bytes]]:
    return _iter(PEM_BEGIN, buffer, end)


def _iter(pattern: re.Pattern[bytes], buffer: bytes, end: int) -> Iterator[re.Match[bytes]]:
    """Matches of ``pattern`` that start before ``end`` (and may run past it)."""
    position = 0
    while True:
        match = pattern.search(buffer, position)
        if match is None or match.start() >= end:
            return
        yield match
        position = match.end()


def private_keys_in_bytes(data: bytes) -> Iterator[FoundKey]:
    """Every private key in ``data`` (:func:`private_keys_in` over memory)."""
    return private_keys_in(io.BytesIO(data), len(data))


def private_keys_in_file(path: str | Path) -> Iterator[FoundKey]:
    """Every private key in a file (:func:`private_keys_in`); nothing if it is unreadable.

    Unreadable here means unreadable for ``docker build`` too: it cannot leak.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except OSError:
        return iter(())
    return _closing(handle)


def _closing(handle: BinaryIO) -> Iterator[FoundKey]:
    with handle:
        size = os.fstat(handle.fileno()).st_size
        yield from private_keys_in(handle, size)


# --- a tree: keys that are not a leaf's ------------------------------------------------


def find_ca_private_keys(root: str | Path) -> list[Path]:
    """Files under ``root`` holding a private key that is not a leaf's key.

    Reported are: every file named ``ca.key``; every file with a private key whose
    public key belongs to a CA certificate (BasicConstraints ``ca=True``) found in
    the tree; and every file with a private key that matches no leaf certificate in
    the tree (including keys that are encrypted or cannot be read, since they cannot
    be shown to be harmless). Keys are found in every form :func:`private_keys_in`
    knows, in files of any size; certificates are taken from PEM files of at most
    :data:`flowrig.certs.defaults.KEY_DER_MAX_BYTES`. Symbolic links are not followed.

    Parameters
    ----------
    root
        A directory, typically a Docker build context or an unpacked image layer.

    Returns
    -------
    list of Path
        The offending files, sorted; empty when the tree is clean.
    """
    ca_keys: set[bytes] = set()
    leaf_keys: set[bytes] = set()
    key_files: dict[Path, list[FoundKey]] = {}
    reported: set[Path] = set()
    for path in _files(Path(root)):
        if path.name.lower() == defaults.CA_KEY:
            reported.add(path)
        for certificate in _certificates(path):
            public = public_der_of(certificate)
            if public is not None:
                (ca_keys if validation.is_ca(certificate) else leaf_keys).add(public)
        keys = list(private_keys_in_file(path))
        if keys:
            key_files[path] = keys
    for path, keys in key_files.items():
        if any(k.public is None or k.public in ca_keys or k.public not in leaf_keys for k in keys):
            reported.add(path)
    return sorted(reported)


def _files(root: Path) -> Iterable[Path]:
    for directory, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(directory) / name
            if not path.is_symlink() and path.is_file():
                yield path


def _certificates(path: Path) -> list[x509.Certificate]:
    try:
        if path.stat().st_size > defaults.KEY_DER_MAX_BYTES:
            return []
        data = path.read_bytes()
    except OSError:
        return []
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []
