"""
DANE for SMTP (RFC 7672): TLSA records, published in a DNSSEC-signed zone,
say which certificate an MX host presents; a sender that finds them
requires STARTTLS and a certificate matching one of them.

    state = yield lookup_host(resolver, "mx.example.org")   # TLSAPolicy, None, or raises DANEUnavailable
    reason = state.check(chain)          # None: the chain (cryptography certificates) matches

Only an answer the validating resolver vouched for counts
(L{mailplat.dns.SharedResolver.lookup_secure}, `[dns] validating`); the
router asks only for MX hosts whose MX answer was authenticated too
(RFC 7672 2.2.1), and the host's A answer must be (RFC 7672 2.2.2). What
a lookup says:

| answer | outcome |
|---|---|
| authenticated TLSA records | L{TLSAPolicy}: STARTTLS required, certificate checked against the usable records |
| authenticated, none usable (PKIX usages, malformed) | a policy without records: STARTTLS required, certificate not checked (RFC 7672 2.2) |
| authenticated NODATA / NXDOMAIN, not authenticated, or the A answer not authenticated | None: no DANE, MTA-STS or opportunistic TLS as before |
| SERVFAIL, timeout | L{DANEUnavailable}: this MX host is not used now (RFC 7672 2.1.1) |

The certificate check runs inside the TLS handshake (L{DANEClientTLS}): a
chain that does not match ends the connection before any SMTP command
goes over it. Digests come from `cryptography`; DANE-TA chains are
checked by OpenSSL (pyOpenSSL) with the matched certificate as the only
trust anchor.
"""

import hashlib
import struct

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import defer, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

TLSA = 52  # RFC 6698 7.1

# RFC 6698 2.1.1 / RFC 7218 acronyms
USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
SELECTORS = {0: "Cert", 1: "SPKI"}
MATCHING = {0: "Full", 1: "SHA2-256", 2: "SHA2-512"}
_DIGEST_SIZE = {1: 32, 2: 64}


class DANEUnavailable(Exception):
    """The TLSA lookup of an MX host with an authenticated MX failed: that host is not used now."""


class DANEVerificationError(Exception):
    """The server's certificate chain matches none of the usable TLSA records."""


class TLSARecord:
    """One TLSA record: usage, selector, matching type, association data (RFC 6698 2.1)."""

    __slots__ = ("usage", "selector", "matching_type", "data")

    def __init__(self, usage, selector, matching_type, data):
        self.usage = usage
        self.selector = selector
        self.matching_type = matching_type
        self.data = data

    @property
    def key(self):
        return (self.usage, self.selector, self.matching_type, self.data)

    def __str__(self):
        return f"{self.usage} {self.selector} {self.matching_type} {self.data.hex()[:16]}..."

    __repr__ = __str__


def parse_tlsa(rdata):
    """
    The RDATA of a TLSA record -> (L{TLSARecord}, None) when usable for
    SMTP, else (None, the reason). RFC 7672 3.1.3: PKIX-TA(0) and
    PKIX-EE(1) are unusable for SMTP; unknown selectors and matching types,
    and digests of the wrong length, are unusable too (RFC 7672 2.2).
    """
    if not isinstance(rdata, bytes) or len(rdata) < 4:
        return None, f"malformed (RDATA of {len(rdata) if isinstance(rdata, bytes) else '?'} octets)"
    usage, selector, matching = struct.unpack("!BBB", rdata[:3])
    data = rdata[3:]
    if usage not in (2, 3):
        return None, f"usage {usage} ({USAGES.get(usage, 'unknown')}) is not usable for SMTP"
    if selector not in SELECTORS:
        return None, f"unknown selector {selector}"
    if matching not in MATCHING:
        return None, f"unknown matching type {matching}"
    size = _DIGEST_SIZE.get(matching)
    if size is not None and len(data) != size:
        return None, f"a {MATCHING[matching]} digest of {len(data)} octets, not {size}"
    return TLSARecord(usage, selector, matching, data), None


class TLSAPolicy:
    """
    The authenticated TLSA RRset of one MX host: its usable records (none:
    STARTTLS is still required, the certificate is not checked).

    @ivar host: the TLSA base domain (the MX host name, RFC 7672 2.2.3).
    @ivar names: the reference identifiers for DANE-TA name checks (RFC
        7672 3.2.2): the MX host name and the recipient domain.
    """

    def __init__(self, host, records, unusable=(), names=None):
        self.host = host
        self.records = list(records)
        self.unusable = list(unusable)
        self.names = list(names or [host])

    @property
    def key(self):
        """What connections to one address share: the same host name and records."""
        return (self.host, tuple(sorted(r.key for r in self.records)), tuple(self.names))

    def describe(self):
        if not self.records:
            return f"{len(self.unusable)} TLSA record(s), none usable: STARTTLS required, certificate not checked"
        return f"{len(self.records)} usable TLSA record(s) ({', '.join(sorted({f'{r.usage} {r.selector} {r.matching_type}' for r in self.records}))})"

    def check(self, chain):
        """
        The server's chain (cryptography certificates, its own first) ->
        None when a usable record matches it, else the reason it doesn't.
        DANE-EE(3): the leaf matches; validity dates and names are not
        checked (RFC 7672 3.1.1). DANE-TA(2): a certificate of the chain
        above the leaf matches, the chain verifies up to it, and the leaf
        names one of L{names} (RFC 7672 3.1.2, 3.2.2).
        """
        if not self.records:
            return None
        if not chain:
            return "the server presented no certificate"
        leaf = chain[0]
        ta_matched, last = False, None
        for record in self.records:
            if record.usage == 3:
                if _matches(record, leaf):
                    return None
            elif record.usage == 2:
                for position, candidate in enumerate(chain[1:], 1):
                    if _matches(record, candidate):
                        ta_matched = True
                        problem = _verify_chain(leaf, chain[1:position], candidate)
                        if problem is None:
                            problem = _check_names(leaf, self.names)
                        if problem is None:
                            return None
                        last = problem
        if ta_matched:
            return f"DANE-TA: {last}"
        return f"the certificate matches none of the {len(self.records)} usable TLSA record(s)"


def association(cert, selector, matching_type):
    """The association data of `cert` for a selector and matching type (RFC 6698 2.1.2-2.1.3)."""
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    else:
        data = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if matching_type == 1:
        return hashlib.sha256(data).digest()
    if matching_type == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(record, cert):
    try:
        return association(cert, record.selector, record.matching_type) == record.data
    except Exception:
        # A key type cryptography cannot serialise: that certificate matches nothing.
        return False


def _verify_chain(leaf, intermediates, anchor):
    """OpenSSL's chain check with `anchor` as the only trust anchor (a partial chain is fine: RFC 7671 5.2.2)."""
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(anchor))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    try:
        context = crypto.X509StoreContext(
            store, crypto.X509.from_cryptography(leaf), [crypto.X509.from_cryptography(c) for c in intermediates]
        )
        context.verify_certificate()
    except crypto.X509StoreContextError as e:
        return f"the chain does not verify up to the matched certificate ({e})"
    except Exception as e:
        return f"the chain cannot be checked ({type(e).__name__})"
    return None


def _certificate_names(cert):
    """DNS names of the subjectAltName; the CN only when there are none (RFC 7672 3.2.3)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    except Exception:
        return []
    if names:
        return [n.lower().rstrip(".") for n in names]
    try:
        return [a.value.lower().rstrip(".") for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except Exception:
        return []


def _name_matches(pattern, name):
    """Exact, or `*` standing for the whole leftmost label (RFC 7672 3.2.3, RFC 6125 6.4.3)."""
    if pattern == name:
        return True
    if pattern.startswith("*."):
        label, dot, rest = name.partition(".")
        return bool(dot and label and rest == pattern[2:])
    return False


def _check_names(leaf, names):
    presented = _certificate_names(leaf)
    wanted = [n.lower().rstrip(".") for n in names]
    if any(_name_matches(p, n) for p in presented for n in wanted):
        return None
    return f"the certificate names {', '.join(presented) or 'nothing'}, not {' or '.join(wanted)}"


@defer.inlineCallbacks
def lookup_tlsa(resolver, host, port=25, names=None):
    """
    `_<port>._tcp.<host>` TLSA through `resolver` (a SharedResolver):
    L{TLSAPolicy}, or None (no DANE for this host); raises
    L{DANEUnavailable} when the lookup fails (RFC 7672 2.1.1). Malformed
    records are unusable, logged, never raised.
    """
    name = f"_{port}._tcp.{host}"
    try:
        answer = yield resolver.lookup_secure(name, TLSA)
    except error.DNSNameError:
        # NXDOMAIN: no TLSA records, secure or not. (SERVFAIL, REFUSED and
        # the other DomainErrors are failures, below.)
        return None
    except defer.CancelledError:
        raise
    except Exception as e:
        raise DANEUnavailable(f"TLSA lookup of {name} failed ({type(e).__name__})")
    if not answer.authenticated or not answer.records:
        return None
    records, unusable = [], []
    for rr in answer.records:
        rdata = getattr(rr.payload, "data", None)
        record, reason = parse_tlsa(rdata)
        if record is None:
            unusable.append(reason)
            log.info("DANE: {name}: a TLSA record is unusable: {reason}", name=name, reason=reason)
        else:
            records.append(record)
    return TLSAPolicy(host, records, unusable, names=names)


def cname_target(answer, host):
    """
    The fully expanded name of `host` by the CNAME records in the answer
    `message` of its A lookup (RFC 7672 2.2.3), or None when `host` is no
    alias. A loop in the chain ends the expansion where it was found.
    """
    aliases = {rr.name.name.lower(): rr.payload.name.name for rr in answer.message.answers if rr.type == dns.CNAME}
    name, seen = host.encode("idna").lower() if isinstance(host, str) else host.lower(), set()
    while name in aliases and name not in seen:
        seen.add(name)
        name = aliases[name].lower()
    if not seen:
        return None
    return name.decode("idna").rstrip(".")


@defer.inlineCallbacks
def lookup_host(resolver, host, port=25, names=None):
    """
    L{lookup_tlsa}, beside the host's A lookup: TLSA records count only
    when the host's address records are authenticated too (RFC 7672
    2.2.2; an authenticated "no A record" counts). Same outcomes.

    An MX host that is a secure CNAME alias (RFC 7672 2.2.3): the TLSA
    records of the expanded name are tried first, then those of the MX
    host name; the policy's host (the SNI name and the first reference
    identifier) is the name whose records were found, and the original
    MX host name stays a reference identifier.
    """
    address = resolver.lookup_secure(host, dns.A)
    address.addCallbacks(lambda answer: (answer.authenticated, answer),
                         lambda failure: (bool(failure.check(error.DNSNameError) and getattr(failure.value, "authenticated", False)), None))
    try:
        policy = yield lookup_tlsa(resolver, host, port, names)
    finally:
        secure, answer = yield address
    if not secure:
        if policy is not None:
            log.info("DANE: {host}: TLSA records, but the address records are not authenticated; no DANE", host=host)
        return None
    target = cname_target(answer, host) if answer is not None else None
    if target is not None and target.lower() != host.lower():
        names = list(names or [host])
        expanded = yield lookup_tlsa(resolver, target, port, [target] + [n for n in names if n.lower() != target.lower()])
        if expanded is not None:
            log.info("DANE: {host}: an alias of {target}, whose TLSA records are used", host=host, target=target)
            return expanded
    return policy


@implementer(IOpenSSLClientConnectionCreator)
class DANEClientTLS:
    """
    STARTTLS for an MX host under DANE: SNI with the TLSA base domain (RFC
    7672 8.1), no PKIX trust store, and the TLSA check of
    L{TLSAPolicy.check} when the handshake reaches the server's
    certificate; a mismatch aborts the handshake (the message waits).

    @param on_result: called with (reason or None, description) once the
        certificate is judged.
    """

    def __init__(self, policy, on_result=None):
        self.policy = policy
        self.on_result = on_result
        self._options = ssl.CertificateOptions()

    def clientConnectionForTLS(self, tlsProtocol):
        context = self._options.getContext()
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        try:
            connection.set_tlsext_host_name(self.policy.host.encode("idna"))
        except Exception:
            pass
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._callback(tlsProtocol))
        return connection

    def _callback(self, tls_protocol):
        policy = self.policy
        seen = {}
        state = {"protocol": tls_protocol}

        def verify(conn, cert, errno, depth, ok):
            # OpenSSL's own verdict (no trust store: always a complaint) is
            # not asked; the TLSA records decide, once, at the leaf.
            try:
                seen[depth] = cert
                if depth != 0:
                    return True
                chain = conn.get_peer_cert_chain(as_cryptography=True) or [
                    seen[d].to_cryptography() for d in sorted(seen)
                ]
                reason = policy.check(chain)
                if self.on_result is not None:
                    self.on_result(reason, policy.describe())
                if reason is None:
                    return True
                protocol = state.pop("protocol", None)
                if protocol is not None:
                    protocol.failVerification(Failure(DANEVerificationError(reason)))
                return False
            except Exception:
                log.failure("DANE: while checking {host}'s certificate", host=policy.host)
                return False

        return verify
