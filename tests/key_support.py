"""Private keys in every form the build must refuse, each as a file's bytes.

Made with cryptography's own serialisers (and ``ssh-keygen``-compatible OpenSSH
output), so each case is the file a user would really have.
"""

from __future__ import annotations

import base64
import os
from typing import Callable

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

_NONE = ser.NoEncryption()


def _ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pkcs8_der() -> bytes:
    return _ec().private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, _NONE)


def _big_pem() -> bytes:
    # Over 1 MiB, the key in the middle: what the old scan (first MiB only) let through.
    pem = _ec().private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, _NONE)
    return os.urandom(1024 * 1024) + b"\n" + pem + b"\n" + os.urandom(512 * 1024)


def _base64_in_yaml() -> bytes:
    lines = base64.encodebytes(_rsa().private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, _NONE))
    body = b"\n".join(b"    " + line for line in lines.splitlines())
    return b"service:\n  name: etl\n  signing_key: |\n" + body + b"\n"


def _pem() -> bytes:
    return _ec().private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, _NONE)


def _utf16(codec: str, bom: bytes = b"") -> Callable[[], bytes]:
    # A PEM file saved as UTF-16 by an editor (Notepad's "Unicode" is little-endian with a BOM).
    return lambda: bom + ("notes\n" + _pem().decode() + "more notes\n").encode(codec)


def _hex_lines() -> bytes:
    # `xxd -p key.der`: lines of 60 hex digits.
    text = _rsa().private_bytes(ser.Encoding.DER, ser.PrivateFormat.TraditionalOpenSSL, _NONE).hex()
    return b"\n".join(text[i : i + 60].encode() for i in range(0, len(text), 60)) + b"\n"


def _hex_colons() -> bytes:
    der = _pkcs8_der()
    return b"key:\n    " + b":".join(b"%02x" % byte for byte in der) + b"\n"


def _hex_c_array() -> bytes:
    der = _pkcs8_der()
    rows = [", ".join("0x%02x" % byte for byte in der[i : i + 12]) for i in range(0, len(der), 12)]
    return b"static const unsigned char key[] = {\n    " + ",\n    ".join(rows).encode() + b"\n};\n"


def _openssh_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, _NONE)


def _legacy_encrypted_pem() -> bytes:
    # Proc-Type/DEK-Info headers and an encrypted body: nothing in it has a key's shape.
    return _rsa().private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.BestAvailableEncryption(b"pw"))


def _prefixed(
    prefix: str, before: str = "", after: str = "", pem: Callable[[], bytes] = _openssh_pem
) -> Callable[[], bytes]:
    # A PEM key quoted in a mail (> ), or commented out in code (# , // ,  * , -- ). The
    # kinds whose body has no DER shape to find: only the PEM block gives them away.
    def make() -> bytes:
        lines = pem().decode().splitlines()
        return (before + "".join(f"{prefix}{line}\n" for line in lines) + after).encode()

    return make


#: File name -> what it holds. The names avoid ``*.key``/``*.p12`` patterns on purpose
#: where the content, not the name, must give the key away.
KEY_FORMS: dict[str, Callable[[], bytes]] = {
    "pem-pkcs8.txt": lambda: _ec().private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, _NONE),
    "pem-pkcs1-rsa.txt": lambda: _rsa().private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, _NONE
    ),
    "pem-encrypted.txt": lambda: _ec().private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw")
    ),
    "pem-over-1mib.bin": _big_pem,
    "der-pkcs8.bin": _pkcs8_der,
    "der-pkcs1-rsa.bin": lambda: _rsa().private_bytes(
        ser.Encoding.DER, ser.PrivateFormat.TraditionalOpenSSL, _NONE
    ),
    "der-sec1.bin": lambda: _ec().private_bytes(ser.Encoding.DER, ser.PrivateFormat.TraditionalOpenSSL, _NONE),
    "der-encrypted-pkcs8.bin": lambda: _ec().private_bytes(
        ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw")
    ),
    "openssh.txt": lambda: ed25519.Ed25519PrivateKey.generate().private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, _NONE
    ),
    "bundle.data": lambda: pkcs12.serialize_key_and_certificates(b"x", _ec(), None, None, _NONE),
    "bundle-encrypted.data": lambda: pkcs12.serialize_key_and_certificates(
        b"x", _ec(), None, None, ser.BestAvailableEncryption(b"pw")
    ),
    "settings.yaml": _base64_in_yaml,
    # A Kubernetes Secret: the PEM text, base64-encoded once more.
    "secret.yaml": lambda: b"kind: Secret\ndata:\n  tls.key: "
    + base64.b64encode(_ec().private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, _NONE)) + b"\n",
    "config.json": lambda: b'{"token": "' + base64.b64encode(_pkcs8_der()) + b'"}\n',
    "pem-utf16-le-bom.txt": _utf16("utf-16-le", b"\xff\xfe"),
    "pem-utf16-le.txt": _utf16("utf-16-le"),
    "pem-utf16-be-bom.txt": _utf16("utf-16-be", b"\xfe\xff"),
    "pem-utf16-be.txt": _utf16("utf-16-be"),
    "der-hex.txt": _hex_lines,
    "der-hex-colons.txt": _hex_colons,
    "der-hex-array.h": _hex_c_array,
    "pem-quoted-mail.eml": _prefixed("> ", "Subject: the key\n\nHere it is:\n\n"),
    "pem-quoted-twice.eml": _prefixed("> > "),
    "pem-shell-comment.sh": _prefixed("# ", "#!/bin/sh\n", "echo hi\n", _legacy_encrypted_pem),
    "pem-line-comment.js": _prefixed("// ", "", "export const x = 1;\n"),
    "pem-block-comment.c": _prefixed(" * ", "/*\n", " */\nint main(void) { return 0; }\n"),
    "pem-sql-comment.sql": _prefixed("-- ", pem=_legacy_encrypted_pem),
    "service-account.json": lambda: b'{"type": "service_account", "private_key": "'
    + _ec().private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, _NONE).replace(b"\n", b"\\n")
    + b'"}\n',
}
