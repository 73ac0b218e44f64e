"""
DKIM signing of submitted mail (RFC 6376; RFC 8463 for Ed25519), with dkimpy.

L{SigningDelivery} wraps the delivery agent of the submission and smtps
listeners: at the end of data, before the message is queued or delivered,
it adds one DKIM-Signature per key of the domain of the From address
(an RSA and an Ed25519 key give two signatures, as RFC 8463 3 suggests).
The MX listener is never wrapped, and a message without an authenticated
sender is passed on untouched.

dkimpy builds the signature; its RSA arithmetic, body canonicalization and
message parsing are replaced by exact equivalents (mailplat.auth.dkim_fast):
a 100 KB message costs ~1.5 ms to sign with RSA-2048 rather than ~30, of
which ~1.1 ms is the RSA operation. The signing is done in a signer
process (mailplat.auth.signing_pool, on another core): in a thread,
OpenSSL lets go of the GIL but dkimpy's ~0.3 ms of Python does not, and
the signing shared the reactor's thread pool with the maildir deliveries
(submission reached 70% of its unsigned rate that way). The reactor only
reads the message and hands it over. When no signer process can answer,
the message is signed in-process, in the thread pool. A signing failure
never loses the message: it is logged and the message goes on unsigned.
"""

import email.utils
import functools
import os
import re

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.auth import dkim_fast
from mailplat.auth.dkim_keys import KeyStore
from mailplat.auth.signing_pool import SignerUnavailable, SigningPool
from mailplat.auth.signing_worker import sign_message
from mailplat.interfaces import IDeliveryAgent, IDeliveryTransaction
from mailplat.store.source import PrefixedSource

log = Logger()

HEADER_LIMIT = 256 * 1024  # the header block read to find From; a longer one is not signed
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


def header_block(data):
    """The header section of a message (LF line ends, as the server keeps them)."""
    if data.startswith(b"\n"):
        return b""
    end = data.find(b"\n\n")
    return data if end < 0 else data[: end + 1]


def read_header(f, limit=HEADER_LIMIT):
    """
    The start of a message for header_block(): up to `limit` bytes (a
    source's reader may return less per read: a prefix, then the rest),
    no more once the empty line ending the header is in (a 100 KB body is
    not read to find its header).
    """
    chunks, size, last = [], 0, b""
    while size < limit:
        chunk = f.read(min(8192, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n\n" in chunk or (last == b"\n" and chunk[:1] == b"\n"):
            break
        last = chunk[-1:]
    return b"".join(chunks)


def field_names(header):
    """The names of the header fields, in order, lowercased (folded lines skipped)."""
    return [m.group(1).lower() for m in _FIELD.finditer(header)]


def from_domain(header):
    """
    The domain of the From address (RFC 5322 3.6.2), lowercased and in
    A-labels; None when there is no single usable From field.
    """
    values, current = [], None
    for line in header.split(b"\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        current = None
        if line[:5].lower() == b"from:":
            current = [line[5:]]
            values.append(current)
    if len(values) != 1:
        return None  # RFC 5322 3.6: exactly one From; anything else is not ours to vouch for
    return _from_value_domain(b" ".join(values[0]))


@functools.lru_cache(maxsize=4096)
def _from_value_domain(value):
    # A pure function of the field's value; a user sends with the same From again and again.
    text = value.decode("utf-8", "replace")
    addresses = [a for _, a in email.utils.getaddresses([text]) if "@" in a]
    if not addresses:
        return None
    domain = addresses[0].rpartition("@")[2].strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii") if domain else None
    except UnicodeError:
        return None


class DKIMSigner:
    """
    Which keys sign a message, and the signing itself (dkimpy takes the
    whole message as bytes: a message up to [limits] message_size is held
    in memory while it is signed).

    @param settings: the checked `[dkim]` table (L{mailplat.config._dkim}).
    """

    def __init__(self, settings):
        self.enabled = settings.get("enabled", True)
        self.domains = settings.get("domains")  # None: every domain with a key
        self.selectors = settings.get("selectors") or {}
        self.headers = [h.lower().encode() for h in settings["headers"]]
        self._wanted = dict.fromkeys(self.headers)  # in order, once each
        self.oversign_from = settings.get("oversign_from", True)
        self.store = KeyStore(settings["key_dir"])
        if self.enabled:
            dkim_fast.install()  # dkimpy imported now (~0.3 s), not for the first message
        # domain -> (mtime of its key directory, keys): keys made with
        # `mailplat dkim keygen` while the server runs are picked up.
        self._cache = {}
        # Signer processes, started with the server (startService): one,
        # the second core of a two-core machine, up to two on larger ones.
        self.pool = SigningPool(workers=max(1, min(2, (os.cpu_count() or 2) - 1)))
        self.started = False

    def keys_for(self, domain):
        """The keys that sign for `domain` ([] when none or not configured)."""
        if not self.enabled or domain is None:
            return []
        if self.domains is not None and domain not in self.domains:
            return []
        try:
            mtime = os.stat(os.path.join(self.store.directory, domain)).st_mtime_ns
        except (OSError, ValueError):
            return []
        cached = self._cache.get(domain)
        if cached is None or cached[0] != mtime:
            keys, problems = self.store.keys(domain)
            for problem in problems:
                log.error("DKIM key not used: {problem}", problem=problem)
            cached = (mtime, keys)
            self._cache[domain] = cached
        wanted = self.selectors.get(domain)
        return [k for k in cached[1] if wanted is None or k.selector in wanted]

    def include_headers(self, header):
        """
        The h= list: each configured field as often as it occurs (RFC 6376
        5.4.2), From once more (oversigning, so no From can be added).
        """
        counts = {}
        for name in _FIELD.findall(header):
            name = name.lower()
            if name in self._wanted:
                counts[name] = counts.get(name, 0) + 1
        out = []
        for name in self._wanted:
            out += [name] * counts.get(name, 0)
        if self.oversign_from:
            out.append(b"from")
        return out

    def sign(self, data, keys):
        """The DKIM-Signature fields for `data`, made in this process (blocking: run it in a thread)."""
        return sign_message(data, keys, self.include_headers(header_block(data)))

    def startService(self):
        """Start the signer processes when there are keys to sign with (else with the first key)."""
        self.started = True
        if self.enabled and self.store.domains():
            self.pool.start()

    def stopService(self):
        self.started = False
        return self.pool.stop()

    @defer.inlineCallbacks
    def signature_for(self, source, allowed=None):
        """
        A Deferred firing with the DKIM-Signature fields to put on top of
        the message in `source` (b"" when its From domain has no key, or
        is not in `allowed`: a user's signature vouches only for a domain
        the user sends from, not for every domain the server hosts).
        """
        with source.open() as f:
            head = read_header(f)
            header = header_block(head)
            domain = from_domain(header)
            if allowed is not None and (domain or "").lower() not in allowed:
                if domain:
                    log.info("DKIM: From domain {domain} is not the sender's; not signed", domain=domain)
                return b""
            keys = self.keys_for(domain)
            if not keys:
                return b""
            if self.started and not self.pool.running:
                self.pool.start()  # the first key, made while the server runs
            # The rest of the message (in memory, or above 1 MB in the page
            # cache of the spool file): ~20 us for 100 KB, less than a
            # thread hand-off.
            data = head + f.read() if self.pool.running else None
        if data is not None:
            if b"\n\n" not in head:  # a header longer than read_header reads, or no body
                header = header_block(data)
            try:
                signature = yield self.pool.sign(data, keys, self.include_headers(header))
                return signature
            except SignerUnavailable as e:
                log.debug("DKIM: signing in-process ({why})", why=e)
        signature = yield threads.deferToThread(self._read_and_sign, source, keys)
        return signature

    def _read_and_sign(self, source, keys):
        with source.open() as f:
            data = f.read()
        return self.sign(data, keys)


@implementer(IDeliveryAgent)
class SigningDelivery:
    """A delivery agent that signs each authenticated message, then hands it to `inner`."""

    def __init__(self, inner, signer):
        self.inner = inner
        self.signer = signer

    def start(self, envelope):
        d = defer.maybeDeferred(self.inner.start, envelope)
        return d.addCallback(lambda transaction: SigningTransaction(self.signer, envelope, transaction))


@implementer(IDeliveryTransaction)
class SigningTransaction:
    def __init__(self, signer, envelope, inner):
        self.signer = signer
        self.envelope = envelope
        self.inner = inner

    def add_recipient(self, address):
        return self.inner.add_recipient(address)

    def _sender_domains(self):
        """The domains of the login and of the envelope sender (checked by restrict_sender)."""
        addresses = (self.envelope.authenticated_as, getattr(self.envelope, "sender", None))
        return {str(a).rsplit("@", 1)[1].lower() for a in addresses if a and "@" in str(a)}

    def abort(self):
        return self.inner.abort()

    @defer.inlineCallbacks
    def deliver(self, source):
        signature = b""
        if self.envelope.authenticated_as:
            try:
                signature = yield self.signer.signature_for(source, self._sender_domains())
            except Exception:
                # The message matters more than its signature.
                log.failure(
                    "DKIM signing failed for mail from {user}; delivered unsigned",
                    user=self.envelope.authenticated_as,
                )
        result = yield self.inner.deliver(PrefixedSource(signature, source) if signature else source)
        return result
