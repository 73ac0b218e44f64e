"""
DKIM keys on disk: one private key per domain and selector under
`state_dir/dkim/DOMAIN/SELECTOR.key` (mode 0600, directories 0700), in the
forms dkimpy and OpenDKIM read: RSA as a PKCS#1 PEM file, Ed25519 (RFC 8463)
as the base64 of its 32-byte seed on one line.

The public half is derived from the private key when asked for, so a key
file is all there is to back up or to copy to another server.
"""

import base64
import os
import re
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048  # RFC 8301 3.2: at least 1024, 2048 recommended; fits in DNS
SUFFIX = ".key"

# RFC 6376 3.1: a selector is one or more dot-separated DNS labels. We take
# lowercase letters, digits and hyphens only, so a selector is also a safe
# file name.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class DKIMKeyError(ValueError):
    """A key that cannot be made or read; the message names the file or the argument."""


def check_name(kind, value):
    """`value` lowercased, or DKIMKeyError when it is not a DNS name we store keys under."""
    name = value.lower().rstrip(".")
    if not _NAME.fullmatch(name) or len(name) > 253:
        raise DKIMKeyError(f"not a valid {kind}: {value!r} (letters, digits, hyphens and dots)")
    return name


def default_selector(algorithm, now=None):
    """`rsa-202612`: the algorithm and the month, so a new key gets a new name (key rotation)."""
    return f"{algorithm}-{time.strftime('%Y%m', time.gmtime(now))}"


class DKIMKey:
    """One signing key: domain, selector, algorithm and the private key as dkimpy takes it."""

    def __init__(self, domain, selector, algorithm, private, path=None):
        self.domain = domain
        self.selector = selector
        self.algorithm = algorithm  # "rsa" or "ed25519"
        self.private = private  # bytes: PEM (rsa) or base64 seed (ed25519)
        self.path = path

    @property
    def signature_algorithm(self):
        """The a= tag (RFC 6376 3.3, RFC 8463 3)."""
        return b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256"

    @property
    def record_name(self):
        return f"{self.selector}._domainkey.{self.domain}"

    def public_key(self):
        """The p= value: base64 of the DER SubjectPublicKeyInfo (rsa) or of the raw key (ed25519)."""
        if self.algorithm == "rsa":
            key = serialization.load_pem_private_key(self.private, password=None)
            der = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return base64.b64encode(der).decode()
        seed = base64.b64decode(self.private)
        raw = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def txt_value(self):
        """The TXT record's text (RFC 6376 3.6.1)."""
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key()}"

    def txt_record(self):
        """
        The record as a zone-file line. A TXT string holds at most 255
        octets (RFC 1035 3.3.14): longer text (an RSA key) is cut into
        several strings, which verifiers join (RFC 6376 3.6.2.2).
        """
        text = self.txt_value()
        strings = " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))
        return f"{self.record_name}. IN TXT {strings}"


def generate(algorithm):
    """A new private key, as the bytes of its key file."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    if algorithm == "ed25519":
        seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return base64.b64encode(seed) + b"\n"
    raise DKIMKeyError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")


def parse(domain, selector, data, path=None):
    """A key file's bytes as a L{DKIMKey}; DKIMKeyError naming the file when they are not a key."""
    where = path or f"{domain}/{selector}"
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise DKIMKeyError(f"{where}: not a PEM private key ({e})")
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DKIMKeyError(f"{where}: a PEM key must be RSA (Ed25519 keys are a base64 seed)")
        if key.key_size < 1024:
            raise DKIMKeyError(f"{where}: RSA keys of less than 1024 bits are refused (RFC 8301 3.2)")
        # dkimpy reads PKCS#1; a PKCS#8 file is rewritten in memory.
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        return DKIMKey(domain, selector, "rsa", private, path)
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise DKIMKeyError(f"{where}: neither an RSA PEM key nor the base64 of a 32-byte Ed25519 seed")
    return DKIMKey(domain, selector, "ed25519", base64.b64encode(seed), path)


class KeyStore:
    """The key files under one directory (state_dir/dkim)."""

    def __init__(self, directory):
        self.directory = directory

    def path(self, domain, selector):
        return os.path.join(self.directory, check_name("domain", domain), check_name("selector", selector) + SUFFIX)

    def create(self, domain, selector, algorithm, force=False):
        """
        Write a new key (0600; refused when one exists, unless `force`).

        @return: the L{DKIMKey}.
        """
        domain, selector = check_name("domain", domain), check_name("selector", selector)
        path = self.path(domain, selector)
        if os.path.exists(path) and not force:
            raise DKIMKeyError(f"{path}: a key exists for selector {selector!r}; choose another selector (or --force)")
        data = generate(algorithm)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        os.chmod(os.path.dirname(path), 0o700)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return parse(domain, selector, data, path)

    def domains(self):
        """The domains that have a key directory, sorted."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _NAME.fullmatch(n) and os.path.isdir(os.path.join(self.directory, n)))

    def selectors(self, domain):
        """The selectors of a domain's keys, sorted."""
        try:
            names = os.listdir(os.path.join(self.directory, check_name("domain", domain)))
        except (FileNotFoundError, NotADirectoryError, DKIMKeyError):
            return []
        found = (n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX))
        return sorted(s for s in found if _NAME.fullmatch(s))

    def load(self, domain, selector):
        path = self.path(domain, selector)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DKIMKeyError(f"{path}: cannot read: {e.strerror}")
        return parse(domain, selector, data, path)

    def keys(self, domain=None):
        """Every readable key (of one domain, or all), with the problems of the unreadable ones."""
        keys, problems = [], []
        for d in [domain] if domain else self.domains():
            for s in self.selectors(d):
                try:
                    keys.append(self.load(d, s))
                except DKIMKeyError as e:
                    problems.append(str(e))
        return keys, problems
