"""
TLS material: load the configured certificate and key, or make a
self-signed pair on first start so that a newcomer gets STARTTLS, SMTPS,
IMAPS and POP3S without a certificate authority. One context factory serves
STARTTLS/STLS and implicit TLS alike, and hands each new connection the
certificate loaded last (SIGHUP and ACME reload it; see docs/operating.md).
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from mailplat import oplog
from mailplat.config import ConfigError

log = Logger()


def self_signed(common_name, san, days, extensions=()):
    """
    A new EC (P-256) key and a certificate it signs itself: `common_name` as
    subject and issuer, valid from five minutes ago for `days`, with the
    subjectAltName `san` (not critical), then each (extension, critical) of
    `extensions`. Returns (certificate, key).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(san, critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()), key


def make_self_signed(cert_path, key_path, hostname, days=3650):
    """Write a new EC key (0600) and a self-signed certificate for `hostname`."""
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert, key = self_signed(hostname, san, days, [(x509.BasicConstraints(ca=False, path_length=None), True)])
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
    The server's TLS context factory (TLS 1.2 and newer): a
    L{ServerCertificates} serving the ACME certificate when `[tls] acme`
    has one, else `[tls] certificate` and `key` (made self-signed on first
    start when allowed).

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
    sources = [CertificateSource(config.source, "tls", cert_path, key_path)]
    acme = getattr(config, "acme", None)
    if acme:
        # The ACME pair is preferred once it exists (mailplat.acme writes it).
        sources.insert(0, CertificateSource(config.source, "tls.acme", acme["certificate"], acme["key"], optional=True))
    return ServerCertificates(sources)


class CertificateSource:
    """One certificate and key file pair, and the config key that names it."""

    def __init__(self, config_source, key, cert_path, key_path, optional=False):
        self.config_source = config_source
        self.key = key  # "tls" ([tls] certificate and key) or "tls.acme"
        self.cert_path = cert_path
        self.key_path = key_path
        # An optional pair that does not exist yet is skipped, not an error.
        self.optional = optional

    def exists(self):
        return os.path.exists(self.cert_path) or os.path.exists(self.key_path)

    def load(self):
        """
        @return: a L{LoadedCertificate}.
        @raise ConfigError: naming the key, when a file is missing or does not load.
        """
        src, name = self.config_source, self.key
        cert_key, key_key = (f"{name}.certificate", f"{name}.key") if name == "tls" else (name, name)
        try:
            with open(self.cert_path, "rb") as f:
                cert_pem = f.read()
        except OSError as e:
            raise ConfigError(src, cert_key, f"cannot read {self.cert_path}: {e.strerror or e}")
        try:
            with open(self.key_path, "rb") as f:
                key_pem = f.read()
        except OSError as e:
            raise ConfigError(src, key_key, f"cannot read {self.key_path}: {e.strerror or e}")
        try:
            certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
            leaf = x509.load_pem_x509_certificate(cert_pem)
            chain = _extra_chain(cert_pem)
        except Exception as e:
            raise ConfigError(src, cert_key, f"certificate or key does not load ({self.cert_path}): {e}")
        return LoadedCertificate(self, certificate, chain, leaf)


class LoadedCertificate:
    """A certificate as served: its OpenSSL objects and the parsed leaf."""

    def __init__(self, source, certificate, chain, leaf):
        self.source = source
        self.certificate = certificate
        self.chain = chain
        self.leaf = leaf

    @property
    def serial(self):
        return f"{self.leaf.serial_number:X}"

    @property
    def expires(self):
        return self.leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    def options(self):
        return ssl.CertificateOptions(
            privateKey=self.certificate.privateKey.original,
            certificate=self.certificate.original,
            extraCertChain=self.chain or None,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )


# RFC 8737 6.2: the ALPN protocol of a tls-alpn-01 validation.
ACME_TLS_ALPN = b"acme-tls/1"


@implementer(IOpenSSLContextFactory)
class ServerCertificates:
    """
    The one context factory of the implicit-TLS listeners and of
    STARTTLS/STLS. Twisted asks it for a context for each new connection,
    so after L{reload} (SIGHUP, or a certificate ACME just issued) new
    connections get the new certificate while open ones keep theirs.

    It also answers tls-alpn-01 validations (RFC 8737): a client that
    offers ALPN `acme-tls/1` with a server name in L{challenges} is handed
    that name's challenge certificate instead of the served one.
    """

    def __init__(self, sources):
        self.sources = sources
        self.current = None  # the LoadedCertificate served
        self._context = None
        # server name (str, lower case) -> (cryptography certificate, key)
        self.challenges = {}
        self.reload(initial=True)

    def getContext(self):
        return self._context

    def reload(self, initial=False):
        """
        Re-read the certificate files: the first pair that exists and
        loads is served from now on. A pair that fails to load is logged
        and the certificate served so far stays (at start-up: the error).

        @return: True when a certificate was (re)loaded.
        @raise ConfigError: at start-up, when no pair loads.
        """
        for source in self.sources:
            if source.optional and not source.exists():
                continue
            try:
                loaded = source.load()
                try:
                    context = loaded.options().getContext()
                except Exception as e:  # OpenSSL refuses the pair
                    raise ConfigError(source.config_source, source.key, f"cannot use {source.cert_path}: {e}")
            except ConfigError as e:
                if initial and not source.optional:
                    raise
                oplog.emit("certificate-reload-failed", level="error", file=source.cert_path, problem=str(e),
                           serving=self.current.source.cert_path if self.current else None)
                if self.current is not None:
                    return False
                continue
            # Before any connection uses the context (pyOpenSSL refuses later).
            context.set_alpn_select_callback(self._select_alpn)
            self.current, self._context = loaded, context
            subject = loaded.leaf.subject.rfc4514_string()
            oplog.emit("certificate-loaded", file=source.cert_path, subject=subject, serial=loaded.serial,
                       expires=loaded.expires)
            return True
        return False

    def _select_alpn(self, connection, offered):
        if ACME_TLS_ALPN not in offered:
            return SSL.NO_OVERLAPPING_PROTOCOLS
        name = connection.get_servername()
        pair = self.challenges.get(name.decode("ascii", "replace").lower()) if name else None
        if pair is None:
            # No validation of ours for this name: refuse rather than pass a
            # validator the served certificate (RFC 8737 3).
            return b""
        connection.use_certificate(pair[0])
        connection.use_privatekey(pair[1])
        oplog.emit("acme-challenge-answered", challenge="tls-alpn-01", domain=name.decode("ascii", "replace"))
        return ACME_TLS_ALPN


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
