"""
The DNS questions of the inbound checks (SPF, DKIM, DMARC), asked through
the server's one twisted.names resolver (mailplat.dns) and sorted into the
three outcomes those RFCs tell apart:

- records (possibly none: "no data", a void lookup in RFC 7208 4.6.4);
- the name does not exist (NXDOMAIN, also void) -> an empty list;
- the question could not be answered (timeout, SERVFAIL, refused) ->
  L{DNSTemporaryError}, which the checks turn into `temperror`.

One L{Lookups} serves one message: it keeps each answer, so SPF, DKIM and
DMARC asking the same name (and SPF's include loops) cost one query, and
it refuses new queries after the message's deadline, so a check never
waits longer than `[authentication] timeout` in all. An L{AnswerCache}
shared by all messages keeps answers for their TTL (at most five
minutes), so the records of a domain that sends often are asked once.
"""

import ipaddress
from collections import namedtuple

from twisted.internet import defer, reactor
from twisted.names import dns, error

TXT_LIMIT = 64 * 1024  # octets of TXT data kept per name: a huge answer is cut, not held
MAX_TTL = 300  # seconds an answer is kept, whatever its TTL says
NEGATIVE_TTL = 60  # seconds a "no such name / no records" answer is kept
CACHE_ENTRIES = 10000


# One SRV record (RFC 2782), the target as text without the final dot.
Service = namedtuple("Service", "priority weight port target")


class DNSTemporaryError(Exception):
    """The name server did not answer (in time), or answered SERVFAIL/REFUSED."""


def _text(name):
    return name.decode("ascii", "replace") if isinstance(name, bytes) else name


class AnswerCache:
    """(name, type) -> records, for the smallest TTL of the answer; errors are not kept."""

    def __init__(self, clock=reactor, entries=CACHE_ENTRIES):
        self.clock = clock
        self.entries = entries
        self._kept = {}

    def get(self, key):
        kept = self._kept.get(key)
        if kept is None:
            return None
        if kept[0] < self.clock.seconds():
            del self._kept[key]
            return None
        return kept[1]

    def put(self, key, records, ttl):
        if ttl <= 0:
            return
        if len(self._kept) >= self.entries:
            self._kept.clear()  # crude, and rare: a flood of distinct names
        self._kept[key] = (self.clock.seconds() + ttl, records)


def _joined_txt(records):
    out, size = [], 0
    for r in records:
        data = b"".join(r.data)
        size += len(data)
        if size > TXT_LIMIT:
            break
        out.append(data)
    return out


class Lookups:
    """
    @param resolver: a twisted.names IResolver (the server's SharedResolver).
    @param deadline: seconds from now after which no new query is sent.
    @param cache: an L{AnswerCache} shared across messages, or None.
    """

    def __init__(self, resolver, deadline=None, clock=reactor, cache=None):
        self.resolver = resolver
        self.clock = clock
        self.deadline = None if deadline is None else clock.seconds() + deadline
        self.cache = cache
        self._answers = {}  # (name, type) -> the records, or a Deferred of them (shared)
        self.queries = 0

    def _ask(self, name, qtype, method):
        key = (name.lower().rstrip("."), qtype)
        answer = self._answers.get(key)
        if answer is None:
            kept = self.cache.get(key) if self.cache is not None else None
            # A cached answer is kept as it is, not as a Deferred: most
            # questions are answered from the cache, and then each caller
            # gets a fired Deferred without a chain of relays.
            answer = kept if kept is not None else self._query(key[0], qtype, method)
            self._answers[key] = answer
        if not isinstance(answer, defer.Deferred):
            return defer.succeed(answer)
        # Each caller gets its own Deferred over the one answer.
        d = defer.Deferred()

        def relay(result):
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)
            return result

        answer.addCallback(relay)
        return d

    @defer.inlineCallbacks
    def _query(self, name, qtype, method):
        if self.deadline is not None and self.clock.seconds() > self.deadline:
            return DNSTemporaryError(f"{name}: no time left for DNS lookups")
        try:
            encoded = name.encode("idna") if not name.isascii() else name.encode("ascii")
        except UnicodeError:
            return []  # not a name DNS can hold: it exists nowhere
        if not encoded or len(encoded) > 253 or any(not 0 < len(label) < 64 for label in encoded.split(b".")):
            return []
        self.queries += 1
        try:
            answers, _, _ = yield getattr(self.resolver, method)(encoded)
        except (error.DNSNameError, error.AuthoritativeDomainError):
            return self._keep(name, qtype, [], NEGATIVE_TTL)  # NXDOMAIN
        except error.DomainError:
            return []  # e.g. /etc/hosts alone, nothing upstream: the name is not known
        except Exception as e:
            # Timeouts, SERVFAIL, REFUSED, a closed port: try again later.
            return DNSTemporaryError(f"{name}: {type(e).__name__}")
        matching = [rr for rr in answers if rr.type == qtype]
        ttl = min([rr.ttl for rr in matching] or [NEGATIVE_TTL])
        return self._keep(name, qtype, [rr.payload for rr in matching], min(ttl, MAX_TTL))

    def _keep(self, name, qtype, records, ttl):
        if self.cache is not None:
            self.cache.put((name, qtype), records, ttl)
        return records

    def txt(self, name):
        """The TXT records at `name`, each as one bytes string (its strings joined, RFC 7208 3.3)."""
        return self._ask(name, dns.TXT, "lookupText").addCallback(_joined_txt)

    @defer.inlineCallbacks
    def addresses(self, name, version):
        """The A (version 4) or AAAA (version 6) addresses of `name`, as ipaddress objects."""
        if version == 4:
            records = yield self._ask(name, dns.A, "lookupAddress")
            return [ipaddress.IPv4Address(r.address) for r in records]
        records = yield self._ask(name, dns.AAAA, "lookupIPV6Address")
        return [ipaddress.IPv6Address(r.address) for r in records]

    @defer.inlineCallbacks
    def mx(self, name):
        """The MX host names of `name` (preference order)."""
        records = yield self._ask(name, dns.MX, "lookupMailExchange")
        return [_text(r.name.name) for r in sorted(records, key=lambda r: r.preference)]

    @defer.inlineCallbacks
    def ptr(self, address):
        """The PTR names of an ipaddress address."""
        records = yield self._ask(address.reverse_pointer, dns.PTR, "lookupPointer")
        return [_text(r.name.name) for r in records]

    @defer.inlineCallbacks
    def srv(self, name):
        """The SRV records at `name` as L{Service}s (priority order)."""
        records = yield self._ask(name, dns.SRV, "lookupService")
        return [Service(r.priority, r.weight, r.port, _text(r.target.name).rstrip("."))
                for r in sorted(records, key=lambda r: r.priority)]
