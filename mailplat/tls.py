"""
TLS material: load the configured certificate and key, or make a
self-signed pair on first start so that a newcomer gets STARTTLS, SMTPS,
IMAPS and POP3S without a certificate authority. One context factory serves
STARTTLS/STLS and implicit TLS alike.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.logger import Logger

from mailplat.config import ConfigError

log = Logger()


def make_self_signed(cert_path, key_path, hostname, days=3650):
    """Write a new EC key (0600) and a self-signed certificate for `hostname`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_path, key_path):
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def check_creatable(config):
    """
    Before making a self-signed pair: a path the config names must be in
    a directory that exists (we create only state_dir/tls, the default).

    @raise ConfigError: naming [tls] certificate or key.
    """
    table = config.section("tls")
    for key, path in (("certificate", config.tls_certificate), ("key", config.tls_key)):
        parent = os.path.dirname(path) or "."
        if key in table and not os.path.isdir(parent):
            raise ConfigError(
                config.source,
                f"tls.{key}",
                f"cannot create {path}: directory {parent} does not exist "
                "(create it, or set create_self_signed = false and give an existing file)",
            )


def will_create(config):
    """True when start-up would make a self-signed pair (neither file exists)."""
    return config.tls_create and not os.path.exists(config.tls_certificate) and not os.path.exists(config.tls_key)


def context_factory(config):
    """
    The server's TLS context factory (TLS 1.2 and newer).

    @raise ConfigError: naming [tls] certificate or key when they are missing
        or do not load.
    """
    cert_path, key_path = config.tls_certificate, config.tls_key
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if not have_cert and not have_key and config.tls_create:
        check_creatable(config)
        make_self_signed(cert_path, key_path, config.hostname)
        log.warn(
            "Created a self-signed certificate for {host} at {cert} (key {key}); "
            "set [tls] certificate and key for a real one",
            host=config.hostname,
            cert=cert_path,
            key=key_path,
        )
    elif not have_cert:
        raise ConfigError(config.source, "tls.certificate", f"file not found: {cert_path}")
    elif not have_key:
        raise ConfigError(config.source, "tls.key", f"file not found: {key_path}")
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise ConfigError(config.source, "tls.certificate", f"cannot read: {e}")
    try:
        certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:
        raise ConfigError(config.source, "tls.certificate", f"certificate or key does not load: {e}")
    chain = _extra_chain(cert_pem)
    return ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def describe(cert_path):
    """(subject, expiry as ISO 8601 UTC) of the leaf certificate in a PEM file, for the start-up log."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return cert.subject.rfc4514_string(), expires


def _extra_chain(cert_pem):
    """Intermediate certificates that follow the leaf in the same PEM file."""
    marker = b"-----BEGIN CERTIFICATE-----"
    parts = cert_pem.split(marker)[2:]
    return [ssl.Certificate.loadPEM(marker + p).original for p in parts]
