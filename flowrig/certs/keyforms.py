"""The forms a private key takes in a file, and how each is recognised and decoded.

Scanning is cheap sniffing first, loaders second. The searches over each chunk of a file
all start with a literal, so that the regular expression engine skips ahead at memory
speed: the PEM marker ``-----BEGIN`` (and its UTF-16 form), base64 runs starting with
``M`` followed by ``A``-``I`` (every DER ``SEQUENCE`` encodes so), and in hex the
version ``02 01`` or the encryption OID that every private key structure holds near its
start. Only a run whose first decoded bytes have the shape of a private key (a
``SEQUENCE`` holding the version ``INTEGER`` and then what PKCS#1, PKCS#8, SEC1, PKCS#12
or an encrypted PKCS#8 put there) is decoded whole and given to the loaders. A file
whose start is UTF-16 text (a byte order mark, or every other byte NUL) is scanned as
the characters it holds.

:mod:`flowrig.certs.scan` walks files and trees with these; the markers, anchors and
DER shapes are here, with the decoders (base64 as people paste it, hex as tools print
it, UTF-16 text) and the confirmation by ``cryptography``'s loaders.
"""

from __future__ import annotations

import binascii
import re
from typing import Any, BinaryIO

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from flowrig.certs import validation

# --- sniffing -----------------------------------------------------------------------

# A PEM private key marker, whatever the type ("", "RSA ", "ENCRYPTED ", "PGP "...).
PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{0,40})PRIVATE KEY( BLOCK)?-----")
PEM_END = re.compile(rb"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
# PEM bodies as people paste them: escaped newlines (JSON, code), quotes, indentation.
_ESCAPED_NEWLINE = re.compile(rb"\\r\\n|\\n|\\r")
_BASE64_CHARS = re.compile(rb"[A-Za-z0-9+/=]+")
# The start of a base64 DER SEQUENCE: 0x30 encodes as "M", its length byte as A-I.
BASE64_DER = re.compile(rb"M[A-I][A-Za-z0-9+/]{30}")
# What may start a line of a key block besides its base64: indentation and quotes, and
# the marks of a quoted mail ("> ", "> > ") or of a comment ("# ", "// ", " * ", "-- ",
# "; ", "% ", "! "). None of them is a base64 character but "/", so "//" counts only
# when a blank follows it (a base64 line may start with "//").
_LINE_PREFIX = rb"[ \t\"',]*(?:(?:[>#*;%!]|--|//+(?=[ \t]))[ \t\"',]*)*"
_AFTER_NEWLINE_PREFIX = re.compile(rb"\n" + _LINE_PREFIX)
# A whole base64 block from its start: lines of base64 separated by newlines (real or
# escaped), optionally indented, quoted or commented, as in PEM, YAML, JSON, code or mail.
BASE64_BLOCK = re.compile(
    rb"[A-Za-z0-9+/]+(?:(?:\\r\\n|\\n|\r?\n)" + _LINE_PREFIX + rb"[A-Za-z0-9+/]+)*={0,2}"
)
BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
# The binary OpenSSH format, raw and base64 (the body of an OPENSSH PEM block), and a
# PuTTY key's first line. Written in two parts so that this file holds none of them.
OPENSSH_MAGIC = b"openssh-" + b"key-v1\x00"
OPENSSH_BASE64 = b"b3BlbnNzaC1" + b"rZXktdjE"
# "-----BEGI" in base64, at each of the three positions a text can start in a base64
# group: PEM text encoded again (a Kubernetes Secret's ``tls.key: LS0tLS1CRUdJTi...``).
PEM_BASE64 = (b"LS0tLS1CRUdJ", b"LS0tQkVHSU4g", b"LS0tLUJFR0lO")
BASE64_RUN_BACK = re.compile(rb"[A-Za-z0-9+/]*$")
PUTTY = b"PuTTY-User-" + b"Key-File-"
# A base64 OpenSSH body shorter than this is a mention, not a key.
MIN_OPENSSH_BODY = 100
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
# around an anchor is the DER header (:data:`HEX_DER`) looked for.
_HEX_SEP = rb"(?:[ \t:,]|\r?\n|0x|\\x){0,16}"
HEX_VERSION = re.compile(rb"02(?:01|:01| 01|, ?0x01|\\x01)")
HEX_PBE_OID = re.compile(rb"86(?:4886[fF]70[dD]010[5cC]|:48:86:[fF]7:0[dD]:01:0[5cC])")
# How far before an anchor the DER header may start (an encrypted key's is furthest:
# eight bytes, six characters each in a C array).
HEX_HEADER_BACK = 112
HEX_DER = re.compile(
    rb"30" + _HEX_SEP + rb"(?:8[1-4](?:" + _HEX_SEP + rb"[0-9a-fA-F]{2}){1,4}|[0-7][0-9a-fA-F])"
    + _HEX_SEP + rb"(?:02" + _HEX_SEP + rb"01" + _HEX_SEP + rb"0[013]|30)"
)
_HEX_RUN = re.compile(rb"(?:" + _HEX_SEP + rb"[0-9a-fA-F]{2})+")
_NOT_HEX = re.compile(rb"0x|\\x|[^0-9a-fA-F]")
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# "-----BEGIN" in UTF-16 text, little- or big-endian (this is both, one byte apart).
UTF16_PEM = "-----BEGIN".encode("utf-16-le")[:-1]
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


def der_length(der: bytes) -> int | None:
    """Total length (header and value) of the DER element that starts ``der``."""
    outer = _tlv(der, 0)
    return None if outer is None else outer[1] + outer[2]


# --- confirming with cryptography's loaders --------------------------------------------


def public_der_of(key: Any) -> bytes | None:
    try:
        return validation.public_der(key)
    except (ValueError, UnsupportedAlgorithm, AttributeError):
        return None


def load_der(der: bytes, form: str) -> tuple[bool, bytes | None]:
    """(is a private key, its public key) for complete DER of the given form."""
    if form == "PKCS#12":
        from cryptography.hazmat.primitives.serialization import pkcs12

        for password in (None, b""):
            try:
                key, _cert, _extra = pkcs12.load_key_and_certificates(der, password)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
            # A PKCS#12 holding certificates only (a trust store) holds no secret.
            return (key is not None), (public_der_of(key) if key is not None else None)
        return True, None  # encrypted (or unreadable): it can hold keys, so it counts
    try:
        key = serialization.load_der_private_key(der, password=None)
    except TypeError:
        return True, None  # cryptography's way of saying "encrypted"
    except (ValueError, UnsupportedAlgorithm):
        return False, None
    return True, public_der_of(key)


def load_pem(label: bytes, body: bytes) -> bytes | None:
    """The public key of a PEM private key block, or None when it cannot be read."""
    lines = [line.strip(b" \t\"',") for line in _unprefixed(body).splitlines()]
    text = b"\n".join(line for line in lines if line)
    block = b"-----BEGIN %sPRIVATE KEY-----\n%s\n-----END %sPRIVATE KEY-----\n" % (label, text, label)
    try:
        if label == b"OPENSSH ":
            return public_der_of(serialization.load_ssh_private_key(block, password=None))
        return public_der_of(serialization.load_pem_private_key(block, password=None))
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return None  # encrypted, or a type cryptography does not read


def _unprefixed(text: bytes) -> bytes:
    """``text`` with escaped newlines made real and the quote or comment marks that
    start its lines dropped (the text's own start is left alone: it follows a PEM
    marker, or is where base64 starts)."""
    return _AFTER_NEWLINE_PREFIX.sub(b"\n", _ESCAPED_NEWLINE.sub(b"\n", text).replace(b"\r", b""))


def decode_base64(text: bytes) -> bytes:
    """Bytes of a base64 block as the block regex matched it (separators dropped)."""
    chars = b"".join(_BASE64_CHARS.findall(_unprefixed(text))).replace(b"=", b"")
    if len(chars) % 4 == 1:
        chars = chars[:-1]  # a stray last character cannot encode a byte
    try:
        return binascii.a2b_base64(chars + b"=" * (-len(chars) % 4))
    except binascii.Error:
        return b""


# --- text in UTF-16, keys in hex, PEM bodies ------------------------------------------


def utf16_parity(head: bytes) -> int | None:
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


class Narrowed:
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


def hex_key_at(buffer: bytes, start: int, reach: int) -> tuple[str, bytes | None, int] | None:
    """(form, public key, end) of a private key whose DER is hex text at ``start``."""
    run = _HEX_RUN.match(buffer, start, start + reach * 3)
    if run is None:
        return None
    der = binascii.unhexlify(_NOT_HEX.sub(b"", run.group(0)))
    form = der_key_form(der[:64])
    if form is None:
        return None
    total = der_length(der)
    public = None
    if total is not None and len(der) >= total:
        is_key, public = load_der(der[:total], form)
        if not is_key:
            return None
    return form, public, run.end()


def looks_like_pem_body(body: bytes) -> bool:
    """Whether text after a PEM marker starts with a key's base64 (after RFC 1421 headers)."""
    start = _PEM_BODY_START.match(body)
    block = BASE64_BLOCK.match(body, start.end() if start else 0)
    if block is None:
        return False
    return sum(len(run) for run in _BASE64_CHARS.findall(block.group(0))) >= _MIN_PEM_BODY
