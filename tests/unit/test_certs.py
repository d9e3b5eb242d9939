"""Certificates: their properties, the files they are written to, checks, the CLI, the
CA-key scan, and a real mutual-TLS handshake with a Dask scheduler and worker."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from flowrig import layout
from flowrig.certs import (
    CertificateAuthority,
    KeyType,
    TLSMaterial,
    check,
    find_ca_private_keys,
    generate,
)
from flowrig.certs import defaults as cert_defaults
from flowrig.cli.certs import app
from flowrig.errors import BadInput
from tests.run_support import invoke

REPO = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc


# --- helpers ------------------------------------------------------------------


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def ext(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


def assert_close(moment: dt.datetime, expected: dt.datetime) -> None:
    # Generous enough for a slow machine, tight enough to catch a wrong day count.
    assert abs(moment - expected) < dt.timedelta(minutes=10), (moment, expected)


def assert_is_ca(cert: x509.Certificate, *, days: int = cert_defaults.CA_DAYS) -> None:
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    cert.verify_directly_issued_by(cert)  # self-signed
    assert_close(cert.not_valid_after_utc, now() + dt.timedelta(days=days))
    assert cert.not_valid_before_utc <= now()


def assert_is_leaf(
    cert: x509.Certificate,
    ca: x509.Certificate,
    *,
    hosts: tuple[str, ...] = cert_defaults.LEAF_HOSTS,
    days: int = cert_defaults.LEAF_DAYS,
) -> None:
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    sans = ext(cert, x509.SubjectAlternativeName).value
    wanted = set()
    for host in hosts:
        try:
            wanted.add(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            wanted.add(x509.DNSName(host))
    assert wanted <= set(sans), (wanted, list(sans))
    cert.verify_directly_issued_by(ca)
    assert_close(cert.not_valid_after_utc, now() + dt.timedelta(days=days))
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sign(
    subject_key,
    *,
    subject: str,
    issuer: str,
    issuer_key,
    extensions=(),
    days: int = 30,
) -> x509.Certificate:
    """A certificate with exactly the given extensions, for inputs flowrig never makes."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - dt.timedelta(minutes=5))
        .not_valid_after(now() + dt.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(item) -> bytes:
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM)
    return item.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture(scope="module")
def material(ca) -> TLSMaterial:
    return ca.issue_leaf(hosts=["scheduler.internal", "10.0.0.7"])


@pytest.fixture
def certdir(tmp_path, material) -> Path:
    material.write_to_dir(tmp_path / "certs")
    return tmp_path / "certs"


# --- properties -----------------------------------------------------------------


def test_ca_is_a_p256_ca_with_real_expiry(ca):
    cert = load_cert(ca.cert_pem)
    assert_is_ca(cert)
    assert cert.subject.rfc4514_string() == f"CN={cert_defaults.CA_COMMON_NAME}"
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert ca.not_after == cert.not_valid_after_utc


def test_leaf_serves_and_connects_and_names_hosts(ca, material):
    leaf = load_cert(material.cert_pem)
    assert_is_leaf(
        leaf, load_cert(ca.cert_pem), hosts=(*cert_defaults.LEAF_HOSTS, "scheduler.internal", "10.0.0.7")
    )
    # An IP address must be an IP SAN, not a DNS name: TLS clients compare them differently.
    sans = ext(leaf, x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.7") in sans.get_values_for_type(x509.IPAddress)
    assert "10.0.0.7" not in sans.get_values_for_type(x509.DNSName)
    assert not ext(leaf, x509.KeyUsage).value.key_encipherment  # not an RSA key
    key = serialization.load_pem_private_key(material.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert material.ca_pem == ca.cert_pem
    assert material.not_after == leaf.not_valid_after_utc


def test_rsa_ca_issues_rsa_leaves_that_allow_key_encipherment():
    rsa_ca = CertificateAuthority.create(key_type=KeyType.RSA_3072, days=100)
    assert_is_ca(load_cert(rsa_ca.cert_pem), days=100)
    leaf_material = rsa_ca.issue_leaf(days=10)
    leaf = load_cert(leaf_material.cert_pem)
    assert_is_leaf(leaf, load_cert(rsa_ca.cert_pem), days=10)
    assert ext(leaf, x509.KeyUsage).value.key_encipherment
    key = leaf.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072


def test_leaf_never_outlives_its_ca():
    short_ca = CertificateAuthority.create(days=5)
    leaf = load_cert(short_ca.issue_leaf(days=300).cert_pem)
    assert leaf.not_valid_after_utc == short_ca.not_after


def test_duplicate_hosts_appear_once(ca):
    leaf = load_cert(ca.issue_leaf(hosts=["LOCALHOST", "127.0.0.1", "extra", "extra"]).cert_pem)
    names = [str(name.value).lower() for name in ext(leaf, x509.SubjectAlternativeName).value]
    assert len(names) == len(set(names))
    assert "extra" in names


@pytest.mark.parametrize("host", ["not a name", "-leading-dash", "a..b", ""])
def test_invalid_host_is_bad_input(ca, host):
    with pytest.raises(BadInput, match="neither a DNS name nor an IP address"):
        ca.issue_leaf(hosts=[host])


def test_expired_ca_issues_nothing():
    old = CertificateAuthority.create(days=1, now=now() - dt.timedelta(days=3))
    with pytest.raises(BadInput, match="expired on"):
        old.issue_leaf()


def test_ephemeral_material_is_fresh_and_valid():
    first, second = TLSMaterial.ephemeral(), TLSMaterial.ephemeral(hosts=["runner-7"])
    assert first.ca_pem != second.ca_pem
    ca_cert = load_cert(second.ca_pem)
    assert_is_ca(ca_cert, days=cert_defaults.LEAF_DAYS)
    assert_is_leaf(
        load_cert(second.cert_pem),
        ca_cert,
        hosts=(*cert_defaults.LEAF_HOSTS, "runner-7"),
        days=cert_defaults.LEAF_DAYS,
    )
    assert b"PRIVATE KEY" not in second.ca_pem + second.cert_pem


def test_repr_never_shows_the_key(material):
    text = repr(material)
    assert "CN=flowrig dask" in text
    assert "PRIVATE" not in text and material.key_pem.decode() not in text


# --- files ------------------------------------------------------------------------


def test_write_to_dir_modes_ignore_umask_and_replace_loose_keys(tmp_path, material):
    target = tmp_path / "tls"
    target.mkdir()
    loose = target / layout.LEAF_KEY
    loose.write_bytes(b"old")
    loose.chmod(0o644)
    previous = os.umask(0)
    try:
        paths = material.write_to_dir(target)
    finally:
        os.umask(previous)
    assert mode_of(paths.key) == 0o600
    assert mode_of(paths.cert) == 0o644
    assert mode_of(paths.ca_cert) == 0o644
    assert paths.key.read_bytes() == material.key_pem
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


def test_from_dir_round_trip(certdir, material):
    assert TLSMaterial.from_dir(certdir) == material


def test_generate_writes_four_files_with_private_keys_0600(tmp_path):
    out = tmp_path / "out"
    paths = generate(out, hosts=["sched.example"], days=30, ca_days=60)
    assert [p.name for p in paths] == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert mode_of(paths.ca_key) == 0o600
    assert mode_of(paths.key) == 0o600
    assert mode_of(paths.cert) == 0o644
    ca = CertificateAuthority.load(paths.ca_cert, paths.ca_key)  # key matches certificate
    assert_is_ca(ca.certificate, days=60)
    assert_is_leaf(
        load_cert(paths.cert.read_bytes()),
        ca.certificate,
        hosts=(*cert_defaults.LEAF_HOSTS, "sched.example"),
        days=30,
    )
    assert check(out).days_left == 30


def test_generate_refuses_to_overwrite_unless_forced(tmp_path):
    paths = generate(tmp_path, days=10, ca_days=20)
    before = {p: p.read_bytes() for p in paths}
    with pytest.raises(BadInput, match="already exist.*--force"):
        generate(tmp_path)
    assert {p: p.read_bytes() for p in paths} == before
    generate(tmp_path, force=True)
    after = {p: p.read_bytes() for p in paths}
    assert all(after[p] != before[p] for p in paths)
    assert mode_of(paths.ca_key) == 0o600


def test_generate_refuses_a_leaf_longer_than_its_ca(tmp_path):
    with pytest.raises(BadInput, match="exceeds the CA"):
        generate(tmp_path, days=100, ca_days=50)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("days", "ca_days"), [(0, 10), (5, 0), (-1, 10)])
def test_generate_refuses_validities_below_one_day(tmp_path, days, ca_days):
    with pytest.raises(BadInput, match="must be at least 1 day"):
        generate(tmp_path, days=days, ca_days=ca_days)
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_a_key_that_is_not_the_cas(tmp_path, ca):
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "ca.key").write_bytes(CertificateAuthority.create().key_pem)
    with pytest.raises(BadInput, match="is not the private key of"):
        CertificateAuthority.load(tmp_path / "ca.crt", tmp_path / "ca.key")


# --- checks ---------------------------------------------------------------------


def test_check_reports_subject_expiry_and_hosts(certdir, material):
    report = check(certdir)
    assert report.subject == "CN=flowrig dask"
    assert report.not_after == material.not_after
    assert report.days_left == cert_defaults.LEAF_DAYS  # a started day counts
    assert "scheduler.internal" in report.hosts and "10.0.0.7" in report.hosts
    assert report.warnings == []


def test_check_warns_when_expiry_is_close(tmp_path, ca):
    ca.issue_leaf(days=cert_defaults.EXPIRY_WARNING_DAYS - 1).write_to_dir(tmp_path)
    report = check(tmp_path)
    assert report.days_left < cert_defaults.EXPIRY_WARNING_DAYS
    assert len(report.warnings) == 1
    assert "tls.crt expires in" in report.warnings[0]


def test_check_warns_about_a_key_readable_by_others(certdir):
    (certdir / "tls.key").chmod(0o644)
    warnings = check(certdir).warnings
    assert any("readable by other users" in w and "chmod 600" in w for w in warnings)


def test_expired_leaf_is_refused_with_date_and_fix(tmp_path, ca):
    past = now() - dt.timedelta(days=40)
    expired = ca.issue_leaf(days=10, now=past)
    expired.write_to_dir(tmp_path)
    expiry = load_cert(expired.cert_pem).not_valid_after_utc
    assert expiry < now()
    message = (
        f"{tmp_path / 'tls.crt'} expired on {expiry:%Y-%m-%d}: "
        "generate new certificates with `flowrig certs generate`"
    )
    with pytest.raises(BadInput) as info:
        check(tmp_path)
    assert str(info.value) == message
    with pytest.raises(BadInput, match="expired on"):
        TLSMaterial.from_dir(tmp_path)


def test_not_yet_valid_leaf_is_refused(tmp_path, ca):
    ca.issue_leaf(days=10, now=now() + dt.timedelta(days=2)).write_to_dir(tmp_path)
    with pytest.raises(BadInput, match="tls.crt is not valid before .*clock"):
        check(tmp_path)


def test_mismatched_key_is_refused(certdir, ca):
    (certdir / "tls.key").write_bytes(ca.issue_leaf().key_pem)
    with pytest.raises(BadInput, match="tls.key does not belong to the certificate in .*tls.crt"):
        check(certdir)


def test_leaf_from_a_foreign_ca_is_refused(certdir):
    (certdir / "ca.crt").write_bytes(CertificateAuthority.create().cert_pem)
    with pytest.raises(BadInput, match="tls.crt was not issued by the CA in .*ca.crt"):
        TLSMaterial.from_dir(certdir)


def test_ca_bundle_with_the_issuer_is_accepted(certdir, material):
    bundle = CertificateAuthority.create(common_name="other CA").cert_pem + material.ca_pem
    (certdir / "ca.crt").write_bytes(bundle)
    assert check(certdir).subject == "CN=flowrig dask"


@pytest.mark.parametrize("name", ["ca.crt", "tls.crt", "tls.key"])
def test_missing_file_is_named(certdir, name):
    (certdir / name).unlink()
    with pytest.raises(BadInput, match=rf"{name} is missing: generate certificates with"):
        check(certdir)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(BadInput, match="does not exist: create it with `flowrig certs generate"):
        TLSMaterial.from_dir(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("tls.crt", b"hello", "holds no PEM certificate"),
        ("ca.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
         "not a valid PEM"),
        ("tls.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
         "not a PEM private key"),
    ],
)
def test_non_pem_input_is_named(certdir, name, content, problem):
    (certdir / name).write_bytes(content)
    with pytest.raises(BadInput, match=rf"{name} (is )?{problem}"):
        check(certdir)


def test_encrypted_key_is_refused(certdir, material):
    key = serialization.load_pem_private_key(material.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (certdir / "tls.key").write_bytes(encrypted)
    with pytest.raises(BadInput, match="tls.key is encrypted"):
        check(certdir)


def test_ca_without_basic_constraints_is_refused(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    not_a_ca = sign(ca_key, subject="plain", issuer="plain", issuer_key=ca_key)
    leaf = sign(
        leaf_key,
        subject="leaf",
        issuer="plain",
        issuer_key=ca_key,
        extensions=[
            (
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                False,
            )
        ],
    )
    TLSMaterial(pem(not_a_ca), pem(leaf), pem(leaf_key)).write_to_dir(tmp_path)
    with pytest.raises(BadInput, match="ca.crt is not a CA certificate"):
        check(tmp_path)


@pytest.mark.parametrize(
    ("usages", "missing"),
    [
        ([ExtendedKeyUsageOID.SERVER_AUTH], "clientAuth"),
        ([ExtendedKeyUsageOID.CLIENT_AUTH], "serverAuth"),
        ([ExtendedKeyUsageOID.CODE_SIGNING], "serverAuth and clientAuth"),
    ],
)
def test_leaf_without_both_tls_usages_is_refused(tmp_path, ca, usages, missing):
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = sign(
        leaf_key,
        subject="leaf",
        issuer=cert_defaults.CA_COMMON_NAME,
        issuer_key=ca_key,
        extensions=[(x509.ExtendedKeyUsage(usages), False)],
    )
    TLSMaterial(ca.cert_pem, pem(leaf), pem(leaf_key)).write_to_dir(tmp_path)
    with pytest.raises(BadInput, match=rf"lacks the extended key usage {missing} \("):
        check(tmp_path)


# --- CLI --------------------------------------------------------------------------


def test_cli_generate_then_check(tmp_path):
    runner = CliRunner()
    out = tmp_path / "certs"
    result = runner.invoke(
        app, ["generate", "--out", str(out), "--host", "sched.example", "--days", "20"]
    )
    assert result.exit_code == 0, result.output
    written = [str(out / name) for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")]
    assert result.stdout.split() == written
    assert "keep it outside build contexts and images" in result.stderr
    result = runner.invoke(app, ["check", str(out)])
    assert result.exit_code == 0, result.output
    assert "subject:   CN=flowrig dask" in result.stdout
    assert "sched.example" in result.stdout
    assert "tls.crt expires in" in result.stderr  # 20 days < EXPIRY_WARNING_DAYS


def test_cli_generate_refuses_overwrite(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["generate", "--out", str(tmp_path)]).exit_code == 0
    result = runner.invoke(app, ["generate", "--out", str(tmp_path)])
    assert isinstance(result.exception, BadInput)
    assert runner.invoke(app, ["generate", "--out", str(tmp_path), "--force"]).exit_code == 0


def test_cli_check_raises_bad_input_for_a_foreign_ca(certdir):
    (certdir / "ca.crt").write_bytes(CertificateAuthority.create().cert_pem)
    result = CliRunner().invoke(app, ["check", str(certdir)])
    assert isinstance(result.exception, BadInput)


def _flowrig(*args: str) -> subprocess.CompletedProcess:
    return invoke(*args, cwd=REPO)


def test_flowrig_certs_exit_codes(tmp_path, ca):
    good, expired = tmp_path / "good", tmp_path / "expired"
    assert _flowrig("certs", "generate", "--out", str(good)).returncode == 0
    result = _flowrig("certs", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert "days left:" in result.stdout
    old = ca.issue_leaf(days=1, now=now() - dt.timedelta(days=5))
    old.write_to_dir(expired)
    expiry = load_cert(old.cert_pem).not_valid_after_utc
    result = _flowrig("certs", "check", str(expired))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"flowrig: error: {expired / 'tls.crt'} expired on {expiry:%Y-%m-%d}: "
        "generate new certificates with `flowrig certs generate`"
    ]
    assert _flowrig("certs", "generate", "--out", str(good)).returncode == 2


# --- the CA-key scan ----------------------------------------------------------------


def test_scan_of_a_leaf_only_context_finds_nothing(tmp_path, material):
    material.write_to_dir(tmp_path / "tls")
    (tmp_path / "flow.py").write_text('DOC = "-----BEGIN PRIVATE KEY----- goes here"\n')
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 64 + b"PRIVATE KEY-----")
    (tmp_path / "empty").write_bytes(b"")
    assert find_ca_private_keys(tmp_path) == []


def test_scan_finds_ca_key_by_name_and_by_content(tmp_path, ca, material):
    material.write_to_dir(tmp_path / "tls")
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    named = tmp_path / "nested" / "ca.key"
    named.write_text("anything at all")
    renamed = tmp_path / "nested" / "deeper" / "signing.pem"
    renamed.write_bytes(ca.key_pem)
    assert find_ca_private_keys(tmp_path) == [named, renamed]


def test_scan_finds_a_ca_key_bundled_with_a_leaf(tmp_path, ca, material):
    material.write_to_dir(tmp_path)
    bundle = tmp_path / "all.pem"
    bundle.write_bytes(material.cert_pem + material.key_pem + ca.key_pem)
    assert find_ca_private_keys(tmp_path) == [bundle]


def test_scan_reports_keys_that_match_no_leaf(tmp_path, material):
    material.write_to_dir(tmp_path)
    stray = tmp_path / "id.pem"
    stray.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    encrypted = tmp_path / "locked.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    assert find_ca_private_keys(tmp_path) == [stray, encrypted]


def test_scan_reads_large_files_whole(tmp_path, ca):
    big = tmp_path / "data.bin"
    big.write_bytes(b"\0" * (2 * cert_defaults.KEY_DER_MAX_BYTES) + b"\n" + ca.key_pem)
    assert find_ca_private_keys(tmp_path) == [big]


# --- mutual TLS, for real -------------------------------------------------------------


def test_expiry_warning_only_when_close_and_names_the_fix(ca):
    from flowrig.certs.validation import expiry_warning

    fresh = ca.issue_leaf(days=cert_defaults.EXPIRY_WARNING_DAYS + 5)
    close = ca.issue_leaf(days=3)
    assert expiry_warning(fresh.cert_pem, "the leaf") is None
    warning = expiry_warning(close.cert_pem, "the leaf")
    assert warning.startswith("the leaf expires in 3 days") and "--tls per-run" in warning
    later = now() + dt.timedelta(days=5)
    assert "expired on" in expiry_warning(close.cert_pem, "the leaf", later)


# --- the certificate policy: every refusal, with certificates forged here ---------------------
BOTH_USAGES = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def forge_leaf(ca: CertificateAuthority, *, key=None, extensions=None, days: int = 30,
               start: dt.datetime | None = None, algorithm=None) -> tuple[x509.Certificate, object]:
    """A leaf issued by ``ca`` exactly as given: what another tool (or an attacker) might hand over."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = start or now() - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
    )
    for extension in (extensions if extensions is not None else [BOTH_USAGES]):
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca_key, algorithm or hashes.SHA256()), key


def refused(directory: Path, ca_pem: bytes, leaf: x509.Certificate, key) -> str:
    """The one line both ``certs check`` and ``TLSMaterial.from_dir`` (``--certs``) give."""
    TLSMaterial(ca_pem, pem(leaf), pem(key)).write_to_dir(directory)
    with pytest.raises(BadInput) as checked:
        check(directory)
    with pytest.raises(BadInput) as loaded:
        TLSMaterial.from_dir(directory)
    assert str(checked.value) == str(loaded.value) and "\n" not in str(checked.value)
    return str(checked.value)


def test_a_leaf_with_an_rsa_1024_key_is_refused(tmp_path, ca):
    leaf, key = forge_leaf(ca, key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    message = refused(tmp_path, ca.cert_pem, leaf, key)
    assert message.startswith(f"{tmp_path / 'tls.crt'} has a RSA 1024-bit key, below flowrig's minimum")


def test_a_leaf_on_a_curve_below_p256_is_refused(tmp_path, ca):
    leaf, key = forge_leaf(ca, key=ec.generate_private_key(ec.SECP224R1()))
    assert "has a secp224r1 (224-bit) key" in refused(tmp_path, ca.cert_pem, leaf, key)


def test_a_ca_with_an_rsa_1024_key_is_refused(tmp_path):
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak CA")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(weak_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - dt.timedelta(minutes=5)).not_valid_after(now() + dt.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(weak_key, hashes.SHA256())
    )
    weak_ca = CertificateAuthority(certificate, weak_key)
    leaf, key = forge_leaf(weak_ca)
    message = refused(tmp_path, weak_ca.cert_pem, leaf, key)
    assert message.startswith(f"{tmp_path / 'ca.crt'} has a RSA 1024-bit key")


@pytest.mark.parametrize("days", [399, 36500])
def test_a_leaf_valid_for_more_than_398_days_is_refused(tmp_path, days):
    long_ca = CertificateAuthority.create(days=40000)
    leaf, key = forge_leaf(long_ca, days=days)
    message = refused(tmp_path, long_ca.cert_pem, leaf, key)
    assert f"is valid for {days} days" in message and "longer than the 398 days a leaf may be" in message


def test_a_398_day_leaf_that_flowrig_makes_is_accepted(tmp_path):
    # flowrig starts a leaf 5 minutes early against clock skew; that is not held against it.
    generate(tmp_path, days=398)
    assert check(tmp_path).days_left == 398


@pytest.mark.parametrize(
    "extensions, missing",
    [
        ([], "serverAuth and clientAuth"),  # no extended key usage at all
        ([x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])], "serverAuth and clientAuth"),
        ([x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])], "clientAuth"),
    ],
)
def test_a_leaf_without_server_and_client_auth_is_refused(tmp_path, ca, extensions, missing):
    leaf, key = forge_leaf(ca, extensions=extensions)
    assert f"lacks the extended key usage {missing} (" in refused(tmp_path, ca.cert_pem, leaf, key)


def test_the_ca_itself_given_as_the_leaf_is_refused(tmp_path, ca):
    # tls.crt = ca.crt and tls.key = ca.key: every role would hold the CA's key.
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    message = refused(tmp_path, ca.cert_pem, ca.certificate, ca_key)
    assert message.startswith(f"{tmp_path / 'tls.crt'} is a CA certificate, not a leaf")
    assert str(tmp_path / "tls.key") in message


def test_a_leaf_that_reuses_the_cas_key_is_refused(tmp_path, ca):
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    leaf, key = forge_leaf(ca, key=ca_key)
    assert "is a CA certificate, not a leaf" in refused(tmp_path, ca.cert_pem, leaf, key)


def test_a_leaf_that_is_itself_a_ca_is_refused(tmp_path, ca):
    leaf, key = forge_leaf(ca, extensions=[BOTH_USAGES, x509.BasicConstraints(ca=True, path_length=None)])
    assert "is a CA certificate, not a leaf" in refused(tmp_path, ca.cert_pem, leaf, key)


def test_a_good_forged_leaf_passes_so_each_refusal_above_is_its_own(tmp_path, ca):
    leaf, key = forge_leaf(ca, days=398)
    TLSMaterial(ca.cert_pem, pem(leaf), pem(key)).write_to_dir(tmp_path)
    assert check(tmp_path).subject == "CN=forged"
    TLSMaterial.from_dir(tmp_path)


@pytest.mark.parametrize("days", [399, 100000])
def test_generate_days_is_bounded(tmp_path, days):
    result = _flowrig("certs", "generate", "--out", str(tmp_path / "out"), "--days", str(days), "--ca-days", "200000")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"flowrig: error: leaf validity (--days) may be at most 398 days, got {days}: leaves are short-lived "
        "on purpose (the default is 397); make new ones before they expire"
    ]
    assert not (tmp_path / "out").exists()
    with pytest.raises(BadInput, match="at most 398 days"):
        CertificateAuthority.create().issue_leaf(days=days)
