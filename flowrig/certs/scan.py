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

Scanning is cheap sniffing first, loaders second. Files are read in chunks of
:data:`flowrig.certs.defaults.KEY_SCAN_CHUNK_BYTES`, so a file of any size is scanned in
bounded memory. The searches over each chunk all start with a literal, so that the
regular expression engine skips ahead at memory speed: the PEM marker ``-----BEGIN``
(and its UTF-16 form), base64 runs starting with ``M`` followed by ``A``-``I`` (every
DER ``SEQUENCE`` encodes so), and in hex the version ``02 01`` or the encryption OID
that every private key structure holds near its start. Only a run whose first decoded
bytes have the shape of a private key (a ``SEQUENCE`` holding the version ``INTEGER``
and then what PKCS#1, PKCS#8, SEC1, PKCS#12 or an encrypted PKCS#8 put there) is
decoded whole and given to the loaders. A file whose start is UTF-16 text (a byte
order mark, or every other byte NUL) is scanned as the characters it holds.

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

import binascii
import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from flowrig.certs import defaults, validation

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


# --- sniffing -----------------------------------------------------------------------

# A PEM private key marker, whatever the type ("", "RSA ", "ENCRYPTED ", "PGP "...).
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{0,40})PRIVATE KEY( BLOCK)?-----")
_PEM_END = re.compile(rb"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
# PEM bodies as people paste them: escaped newlines (JSON, code), quotes, indentation.
_ESCAPED_NEWLINE = re.compile(rb"\\r\\n|\\n|\\r")
_BASE64_CHARS = re.compile(rb"[A-Za-z0-9+/=]+")
# The start of a base64 DER SEQUENCE: 0x30 encodes as "M", its length byte as A-I.
_BASE64_DER = re.compile(rb"M[A-I][A-Za-z0-9+/]{30}")
# What may start a line of a key block besides its base64: indentation and quotes, and
# the marks of a quoted mail ("> ", "> > ") or of a comment ("# ", "// ", " * ", "-- ",
# "; ", "% ", "! "). None of them is a base64 character but "/", so "//" counts only
# when a blank follows it (a base64 line may start with "//").
_LINE_PREFIX = rb"[ \t\"',]*(?:(?:[>#*;%!]|--|//+(?=[ \t]))[ \t\"',]*)*"
_AFTER_NEWLINE_PREFIX = re.compile(rb"\n" + _LINE_PREFIX)
# A whole base64 block from its start: lines of base64 separated by newlines (real or
# escaped), optionally indented, quoted or commented, as in PEM, YAML, JSON, code or mail.
_BASE64_BLOCK = re.compile(
    rb"[A-Za-z0-9+/]+(?:(?:\\r\\n|\\n|\r?\n)" + _LINE_PREFIX + rb"[A-Za-z0-9+/]+)*={0,2}"
)
_BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
# The binary OpenSSH format, raw and base64 (the body of an OPENSSH PEM block), and a
# PuTTY key's first line. Written in two parts so that this file holds none of them.
_OPENSSH_MAGIC = b"openssh-" + b"key-v1\x00"
_OPENSSH_BASE64 = b"b3BlbnNzaC1" + b"rZXktdjE"
# "-----BEGI" in base64, at each of the three positions a text can start in a base64
# group: PEM text encoded again (a Kubernetes Secret's ``tls.key: LS0tLS1CRUdJTi...``).
_PEM_BASE64 = (b"LS0tLS1CRUdJ", b"LS0tQkVHSU4g", b"LS0tLUJFR0lO")
_BASE64_RUN_BACK = re.compile(rb"[A-Za-z0-9+/]*$")
_PUTTY = b"PuTTY-User-" + b"Key-File-"
# A base64 OpenSSH body shorter than this is a mention, not a key.
_MIN_OPENSSH_BODY = 100
# Fewer base64 characters than this between PEM markers is prose, not a key (the
# smallest key flowrig could meet, Ed25519 in PKCS#8, takes 64).
_MIN_PEM_BODY = 40
# What may come between a PEM marker and its base64: line breaks (real or escaped),
# quotes and indentation, and RFC 1421 headers (an old-style encrypted key's DEK-Info).
_PEM_BODY_START = re.compile(
    rb"(?:\\r\\n|\\n|[\r\n \t\"',>#*;%!]|--|//+(?=[ \t])|(?:Proc-Type|DEK-Info|Comment): [^\r\n\\]*)*"
)
# Hex text of DER (``xxd -p``, ``bytes.hex()``, "30:82:..." or "30 82 ..." as tools
# print it, a C array "0x30, 0x82, ..." or "\\x30\\x82..."). A regular expression
# that starts at every "30" is slow on text full of numbers, so the scan looks for rare
# anchors first: the version INTEGER "02 01" every unencrypted private key structure
# holds near its start (PKCS#1, PKCS#8, SEC1, PKCS#12), and the PKCS#5/PKCS#12
# encryption OIDs ("...864886f70d0105"/"...0c") that start an encrypted PKCS#8. Only
# around an anchor is the DER header (:data:`_HEX_DER`) looked for.
_HEX_SEP = rb"(?:[ \t:,]|\r?\n|0x|\\x){0,16}"
_HEX_VERSION = re.compile(rb"02(?:01|:01| 01|, ?0x01|\\x01)")
_HEX_PBE_OID = re.compile(rb"86(?:4886[fF]70[dD]010[5cC]|:48:86:[fF]7:0[dD]:01:0[5cC])")
# How far before an anchor the DER header may start (an encrypted key's is furthest:
# eight bytes, six characters each in a C array).
_HEX_HEADER_BACK = 112
_HEX_DER = re.compile(
    rb"30" + _HEX_SEP + rb"(?:8[1-4](?:" + _HEX_SEP + rb"[0-9a-fA-F]{2}){1,4}|[0-7][0-9a-fA-F])"
    + _HEX_SEP + rb"(?:02" + _HEX_SEP + rb"01" + _HEX_SEP + rb"0[013]|30)"
)
_HEX_RUN = re.compile(rb"(?:" + _HEX_SEP + rb"[0-9a-fA-F]{2})+")
_NOT_HEX = re.compile(rb"0x|\\x|[^0-9a-fA-F]")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# "-----BEGIN" in UTF-16 text, little- or big-endian (this is both, one byte apart).
_UTF16_PEM = "-----BEGIN".encode("utf-16-le")[:-1]
_UTF16_BOMS = {b"\xff\xfe": 0, b"\xfe\xff": 1}
# How much of a file's start tells UTF-16 text (every other byte NUL) from the rest.
_UTF16_SNIFF = 4096
# OIDs (DER contents) that mark what a private key structure holds.
_OID_PBES = bytes.fromhex("2a864886f70d0105")  # PKCS#5 PBES1/PBES2 (1.2.840.113549.1.5)
_OID_PKCS12_PBE = bytes.fromhex("2a864886f70d010c01")  # PKCS#12 PBE (1.2.840.113549.1.12.1)
_OID_PKCS7 = bytes.fromhex("2a864886f70d0107")  # PKCS#7 data/signedData, a PFX's authSafe


def _tlv(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, start of value, length) of the DER element at ``pos``, or None."""
    if pos + 2 > len(data):
        return None
    tag, first = data[pos], data[pos + 1]
    if first < 0x80:
        return tag, pos + 2, first
    count = first & 0x7F
    if count == 0 or count > 4 or pos + 2 + count > len(data):
        return None
    return tag, pos + 2 + count, int.from_bytes(data[pos + 2 : pos + 2 + count], "big")


def der_key_form(head: bytes) -> str | None:
    """The private key structure that ``head`` (the first bytes of some DER) starts, if any.

    Returns ``PKCS#8``, ``PKCS#1`` (RSA or DSA), ``SEC1`` (EC), ``encrypted PKCS#8`` or
    ``PKCS#12``; ``None`` for anything else (certificates, public keys, data).
    """
    outer = _tlv(head, 0)
    if outer is None or outer[0] != 0x30:
        return None
    first = _tlv(head, outer[1])
    if first is None:
        return None
    if first[0] == 0x30:  # EncryptedPrivateKeyInfo: SEQUENCE { AlgorithmIdentifier, OCTET STRING }
        oid = _tlv(head, first[1])
        if oid is not None and oid[0] == 0x06:
            value = head[oid[1] : oid[1] + oid[2]]
            if value.startswith(_OID_PBES) or value.startswith(_OID_PKCS12_PBE):
                return "encrypted PKCS#8"
        return None
    if first[0] != 0x02 or first[2] != 1 or first[1] >= len(head):
        return None
    version = head[first[1]]
    second = _tlv(head, first[1] + 1)
    if second is None:
        return None
    if second[0] == 0x30 and version in (0, 1):  # PrivateKeyInfo / OneAsymmetricKey
        oid = _tlv(head, second[1])
        return "PKCS#8" if oid is not None and oid[0] == 0x06 else None
    if second[0] == 0x02 and version == 0 and second[2] >= 64:  # RSA modulus or DSA p
        return "PKCS#1"
    if second[0] == 0x04 and version == 1 and 16 <= second[2] <= 80:  # ECPrivateKey
        return "SEC1"
    if second[0] == 0x30 and version == 3:  # PFX: SEQUENCE { 3, ContentInfo, MacData }
        oid = _tlv(head, second[1])
        if oid is not None and oid[0] == 0x06 and head[oid[1] : oid[1] + oid[2]].startswith(_OID_PKCS7):
            return "PKCS#12"
    return None


def _der_length(der: bytes) -> int | None:
    """Total length (header and value) of the DER element that starts ``der``."""
    outer = _tlv(der, 0)
    return None if outer is None else outer[1] + outer[2]


# --- confirming with cryptography's loaders --------------------------------------------


def _public(key: Any) -> bytes | None:
    try:
        return validation.public_der(key)
    except (ValueError, UnsupportedAlgorithm, AttributeError):
        return None


def _load_der(der: bytes, form: str) -> tuple[bool, bytes | None]:
    """(is a private key, its public key) for complete DER of the given form."""
    if form == "PKCS#12":
        from cryptography.hazmat.primitives.serialization import pkcs12

        for password in (None, b""):
            try:
                key, _cert, _extra = pkcs12.load_key_and_certificates(der, password)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
            # A PKCS#12 holding certificates only (a trust store) holds no secret.
            return (key is not None), (_public(key) if key is not None else None)
        return True, None  # encrypted (or unreadable): it can hold keys, so it counts
    try:
        key = serialization.load_der_private_key(der, password=None)
    except TypeError:
        return True, None  # cryptography's way of saying "encrypted"
    except (ValueError, UnsupportedAlgorithm):
        return False, None
    return True, _public(key)


def _load_pem(label: bytes, body: bytes) -> bytes | None:
    """The public key of a PEM private key block, or None when it cannot be read."""
    lines = [line.strip(b" \t\"',") for line in _unprefixed(body).splitlines()]
    text = b"\n".join(line for line in lines if line)
    block = b"-----BEGIN %sPRIVATE KEY-----\n%s\n-----END %sPRIVATE KEY-----\n" % (label, text, label)
    try:
        if label == b"OPENSSH ":
            return _public(serialization.load_ssh_private_key(block, password=None))
        return _public(serialization.load_pem_private_key(block, password=None))
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return None  # encrypted, or a type cryptography does not read


def _unprefixed(text: bytes) -> bytes:
    """``text`` with escaped newlines made real and the quote or comment marks that
    start its lines dropped (the text's own start is left alone: it follows a PEM
    marker, or is where base64 starts)."""
    return _AFTER_NEWLINE_PREFIX.sub(b"\n", _ESCAPED_NEWLINE.sub(b"\n", text).replace(b"\r", b""))


def _decode_base64(text: bytes) -> bytes:
    """Bytes of a base64 block as the block regex matched it (separators dropped)."""
    chars = b"".join(_BASE64_CHARS.findall(_unprefixed(text))).replace(b"=", b"")
    if len(chars) % 4 == 1:
        chars = chars[:-1]  # a stray last character cannot encode a byte
    try:
        return binascii.a2b_base64(chars + b"=" * (-len(chars) % 4))
    except binascii.Error:
        return b""


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
    parity = _utf16_parity(buffer)
    if parity is not None:
        # UTF-16 text: its characters are scanned, as the text an editor shows.
        for key in private_keys_in(_Narrowed(stream, buffer, parity)):
            yield FoundKey(f"UTF-16 {key.form}", 2 * key.offset + parity, key.public)
        return
    yield from _whole_file(buffer, size)
    if buffer.startswith(_OPENSSH_MAGIC):
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


def _utf16_parity(head: bytes) -> int | None:
    """Where the characters of UTF-16 text are (0: even bytes, little-endian; 1: odd
    bytes, big-endian), or None when ``head`` does not start UTF-16 text.

    Text with a byte order mark is UTF-16 by it; without one, it is when nearly every
    byte at one parity is NUL and nearly none at the other (ASCII in UTF-16).
    """
    for bom, parity in _UTF16_BOMS.items():
        if head.startswith(bom):
            return parity
    sample = head[:_UTF16_SNIFF]
    if len(sample) < 64:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if odd >= 0.9 * half and even <= 0.1 * half:
        return 0
    if even >= 0.9 * half and odd <= 0.1 * half:
        return 1
    return None


class _Narrowed:
    """A stream of every other byte of another (from ``head``, already read, then the
    rest): the characters of ASCII text stored as UTF-16. Other characters come out
    as one byte of their two, which is no harm: keys are ASCII."""

    def __init__(self, stream: BinaryIO, head: bytes, parity: int) -> None:
        self._stream, self._pending, self._parity = stream, head, parity

    def read(self, size: int) -> bytes:
        while len(self._pending) < 2 * size:
            more = self._stream.read(2 * size)
            if not more:
                break
            self._pending += more
        # An even number of bytes is taken, so the parity holds in the next read.
        take = min(len(self._pending), 2 * size) & ~1 or len(self._pending)
        data, self._pending = self._pending[:take], self._pending[take:]
        return data[self._parity :: 2]


def _whole_file(head: bytes, size: int | None) -> Iterator[FoundKey]:
    """A file that is one DER private key or PKCS#12 (its first element spans it all)."""
    form = der_key_form(head[:64])
    total = _der_length(head)
    if form is None or total is None or size is None or not 0 <= size - total <= 2:
        return  # not one DER element (a trailing newline is tolerated)
    name = "PKCS#12" if form == "PKCS#12" else f"DER {form}"
    if total > len(head) or total > defaults.KEY_DER_MAX_BYTES:
        if form == "PKCS#12":  # a PFX that large holds many certificates: count it
            yield FoundKey(name, 0)
        return
    is_key, public = _load_der(head[:total], form)
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
        closing = _PEM_END.search(buffer, match.end(), match.end() + reach)
        body_end = closing.start() if closing else min(len(buffer), match.end() + reach)
        body = buffer[match.end() : body_end]
        if not _looks_like_pem_body(body):
            continue  # the markers in prose or code, not a key
        label = match.group(1)
        public = _load_pem(label, body) if closing and not match.group(2) else None
        stop = closing.end() if closing else body_end
        pem_spans.append((start, stop))
        kind = "PEM" if not match.group(2) else "PGP private key block"
        found.append((start, FoundKey(kind, base + start, public), base + stop))
    position = 0
    while True:
        match = _BASE64_DER.search(buffer, position, end + 32)
        if match is None or match.start() >= end:
            break
        start = match.start()
        position = start + 1
        before = buffer[start - 1] if start > 0 else previous[-1]
        if before in _BASE64_ALPHABET or any(a <= start < b for a, b in pem_spans):
            continue
        form = der_key_form(_decode_base64(match.group(0)))
        if form is None:
            continue
        block = _BASE64_BLOCK.match(buffer, start, start + reach * 2)
        der = _decode_base64(block.group(0)) if block else b""
        total = _der_length(der)
        if total is not None and len(der) >= total:
            is_key, public = _load_der(der[:total], form)
            if not is_key:
                continue
        else:
            # Cut short (by a separator this scan does not join): the shape says key.
            public = None
        stop = block.end() if block else start + 32
        found.append((start, FoundKey(f"base64 DER {form}", base + start, public), base + stop))
        position = max(position, stop)
    at = buffer.find(_OPENSSH_BASE64, 0, end)
    while at != -1:
        block = _BASE64_BLOCK.match(buffer, at, at + reach * 2)
        if block and len(block.group(0)) >= _MIN_OPENSSH_BODY and not any(a <= at < b for a, b in pem_spans):
            found.append((at, FoundKey("base64 OpenSSH", base + at), base + block.end()))
        at = buffer.find(_OPENSSH_BASE64, at + 1, end)
    found.extend(_pem_in_base64(buffer, base, end, reach))
    found.extend(_hex_der(buffer, base, end, previous, pem_spans))
    found.extend(_utf16_pem(buffer, base, end, reach))
    # A literal search: a regular expression anchored at line starts would try every
    # position and take seconds per GiB.
    at = buffer.find(_PUTTY, 0, end)
    while at != -1:
        if (buffer[at - 1 : at] if at else previous) in (b"\n", b"\r"):
            found.append((at, FoundKey("PuTTY", base + at), base + at + len(_PUTTY)))
        at = buffer.find(_PUTTY, at + 1, end)
    for _start, key, stop in sorted(found, key=lambda item: item[0]):
        yield key, stop


def _pem_in_base64(buffer: bytes, base: int, end: int, reach: int) -> list[tuple[int, FoundKey, int]]:
    """PEM private keys that were base64-encoded once more, found by their encoded marker.

    The encoding starts where the base64 run that holds the marker starts (a run cut
    from the start of the window by more than ``reach`` bytes is not followed back).
    """
    found: list[tuple[int, FoundKey, int]] = []
    skip_to = 0
    for marker in _PEM_BASE64:
        at = buffer.find(marker, 0, end)
        while at != -1:
            if at >= skip_to:
                back = _BASE64_RUN_BACK.search(buffer, max(0, at - reach), at)
                start = back.start() if back else at
                block = _BASE64_BLOCK.match(buffer, start, start + reach * 2)
                if block:
                    inner = list(private_keys_in_bytes(_decode_base64(block.group(0))))
                    if inner:
                        found.append((start, FoundKey(f"base64 {inner[0].form}", base + start, inner[0].public),
                                      base + block.end()))
                        skip_to = block.end()
            at = buffer.find(marker, at + 1, end)
    return found


def _hex_der(
    buffer: bytes, base: int, end: int, previous: bytes, pem_spans: list[tuple[int, int]]
) -> list[tuple[int, FoundKey, int]]:
    """Private keys written as the hex text of their DER (see :data:`_HEX_VERSION`)."""
    reach = defaults.KEY_BLOCK_MAX_BYTES
    anchors = sorted(
        match.start()
        for pattern in (_HEX_VERSION, _HEX_PBE_OID)
        for match in pattern.finditer(buffer, 0, end + _HEX_HEADER_BACK)
    )
    found: list[tuple[int, FoundKey, int]] = []
    done = 0  # nothing before this is looked at again (a key's run, a header tried)
    for anchor in anchors:
        if anchor < done:
            continue
        position = max(done, anchor - _HEX_HEADER_BACK)
        while (header := _HEX_DER.search(buffer, position, anchor + 16)) is not None:
            start = header.start()
            if start > anchor or start >= end:
                break
            position = start + 1  # headers may overlap: try each start
            before = buffer[start - 1] if start > 0 else previous[-1]
            if before in _HEX_DIGITS or any(a <= start < b for a, b in pem_spans):
                continue  # within a longer run of hex (not at a byte's start), or in a PEM block
            key = _hex_key_at(buffer, start, reach)
            if key is not None:
                form, public, stop = key
                found.append((start, FoundKey(f"hex DER {form}", base + start, public), base + stop))
                done = stop
                break
    return found


def _hex_key_at(buffer: bytes, start: int, reach: int) -> tuple[str, bytes | None, int] | None:
    """(form, public key, end) of a private key whose DER is hex text at ``start``."""
    run = _HEX_RUN.match(buffer, start, start + reach * 3)
    if run is None:
        return None
    der = binascii.unhexlify(_NOT_HEX.sub(b"", run.group(0)))
    form = der_key_form(der[:64])
    if form is None:
        return None
    total = _der_length(der)
    public = None
    if total is not None and len(der) >= total:
        is_key, public = _load_der(der[:total], form)
        if not is_key:
            return None
    return form, public, run.end()


def _utf16_pem(buffer: bytes, base: int, end: int, reach: int) -> list[tuple[int, FoundKey, int]]:
    """PEM private keys in UTF-16 text inside a file that is not UTF-16 as a whole
    (such a file is narrowed to its characters before the scan)."""
    found: list[tuple[int, FoundKey, int]] = []
    at = buffer.find(_UTF16_PEM, 0, end)
    while at != -1:
        text = buffer[at : at + 2 * reach : 2]  # the characters, from the marker on
        inner = list(private_keys_in_bytes(text))
        closing = _PEM_END.search(text)
        stop = at + 2 * (closing.end() if closing else len(text))
        if inner:
            found.append((at, FoundKey(f"UTF-16 {inner[0].form}", base + at, inner[0].public), base + stop))
        at = buffer.find(_UTF16_PEM, stop if inner else at + 1, end)
    return found


def _looks_like_pem_body(body: bytes) -> bool:
    """Whether text after a PEM marker starts with a key's base64 (after RFC 1421 headers)."""
    start = _PEM_BODY_START.match(body)
    block = _BASE64_BLOCK.match(body, start.end() if start else 0)
    if block is None:
        return False
    return sum(len(run) for run in _BASE64_CHARS.findall(block.group(0))) >= _MIN_PEM_BODY


def _iter_pem(buffer: bytes, end: int) -> Iterator[re.Match[bytes]]:
    return _iter(_PEM_BEGIN, buffer, end)


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
            public = _public(certificate)
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
