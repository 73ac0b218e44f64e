"""
DNS block and allow lists (RFC 5782): the client's address and the HELO
and sender domains looked up in the configured zones, all in parallel
through the server's one resolver, with one deadline for them all.

    1.2.0.192.bl.example      A  127.0.0.2     -> 192.0.2.1 is listed
    spammer.example.dbl.example  A  127.0.1.2  -> the domain is listed

The weights of the block lists that list a name add up to a score; at or
over the threshold the message is refused at MAIL, naming the lists. An
allow list that lists the client wins over any score. See
docs/check-dnsbl.md.
"""

import collections
import ipaddress
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.python.failure import Failure

from mailplat.checks import Check, CheckUnavailable, Verdict

log = Logger(namespace="mailplat.plugins.dnsbl")

QUERIES = ("ip", "helo", "sender")
# RFC 5782 2.3: a listing is an A record in 127.0.0.0/8; Spamhaus and
# others answer 127.255.255.x for "your query was refused", which is
# no listing.
DEFAULT_RETURNS = ("127.0.0.0/8",)
ERROR_RETURNS = ipaddress.ip_network("127.255.255.0/24")
DEFAULT_DEADLINE = 5
# Answers kept by query name: an MX hears from the same clients and sender
# domains again and again, and each lookup that goes out costs more of the
# server's CPU than the rest of the check (measured: benchmarks/smtp_deliver.py
# --checks dnsbl). Bounded in names and in time, whatever the TTL says.
CACHE_NAMES = 10000
CACHE_MAX_TTL = 3600
NEGATIVE_TTL = 60  # an NXDOMAIN without an SOA to say how long (RFC 2308 5)


# A cached NXDOMAIN among the results of DNSBLCheck._judge: not listed.
_NOT_LISTED = object()


class ListsUnanswered(CheckUnavailable):
    """Some lists gave no answer before the deadline (the check's on_error decides)."""


def reversed_address(address):
    """
    The labels a DNSBL is asked for an address (RFC 5782 2.1, 2.4):
    "1.2.0.192" for 192.0.2.1, the 32 reversed nibbles for IPv6; None for
    a string that is no address. An IPv4-mapped IPv6 address is its IPv4.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    pointer = ip.reverse_pointer
    return pointer.rsplit(".in-addr.arpa" if ip.version == 4 else ".ip6.arpa", 1)[0]


def domain_of(value):
    """A domain name worth asking a domain list about, or None (IP literals, single labels)."""
    value = (value or "").strip().rstrip(".").lower()
    if "@" in value:
        value = value.rsplit("@", 1)[1]
    if not value or value.startswith("[") or "." not in value:
        return None
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    try:
        value.encode("idna")
    except UnicodeError:
        return None
    return value


class Zone:
    """One configured list: its zone, what it is asked about, weight, and the answers that count."""

    def __init__(self, zone, query=("ip",), weight=1.0, returns=DEFAULT_RETURNS, allow=False):
        self.zone = zone.strip(".").lower()
        self.query = tuple(query)
        self.weight = float(weight)
        self.returns = [ipaddress.ip_network(r, strict=False) for r in returns]
        self.allow = allow

    def counts(self, answer):
        """True when the A record `answer` (dotted quad) is a listing by this zone's filter."""
        ip = ipaddress.ip_address(answer)
        if ip in ERROR_RETURNS and not any(n.subnet_of(ERROR_RETURNS) for n in self.returns if n.version == 4):
            return False
        return any(ip in n for n in self.returns if n.version == ip.version)

    def __repr__(self):
        return f"<Zone {self.zone} {'allow' if self.allow else 'block'} {self.query} weight={self.weight}>"


class Hit:
    """One listing: which zone listed what, with which answers."""

    def __init__(self, zone, what, name, answers):
        self.zone, self.what, self.name, self.answers = zone, what, name, answers

    def describe(self):
        return f"{self.name} listed by {self.zone.zone} ({', '.join(self.answers)})"


class AnswerCache:
    """
    The lists' answers by query name: the A records of a listing for their
    TTL, an NXDOMAIN for its SOA's negative TTL (RFC 2308 5), at most
    `max_ttl` seconds and `size` names (the least recently asked go first).
    No timers: a stale entry is dropped when it is next asked for.
    """

    def __init__(self, size=CACHE_NAMES, max_ttl=CACHE_MAX_TTL, now=time.monotonic):
        self.size, self.max_ttl, self.now = size, max_ttl, now
        self.entries = collections.OrderedDict()  # name -> (expires, answers or None for NXDOMAIN)

    def get(self, name):
        """(True, answers) for a cached listing, (True, None) for a cached NXDOMAIN, else (False, None)."""
        entry = self.entries.get(name)
        if entry is None:
            return False, None
        if entry[0] <= self.now():
            del self.entries[name]
            return False, None
        self.entries.move_to_end(name)
        return True, entry[1]

    def put(self, name, answers, ttl):
        ttl = min(ttl, self.max_ttl)
        if ttl <= 0 or self.size <= 0:
            return
        self.entries[name] = (self.now() + ttl, answers)
        self.entries.move_to_end(name)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def negative_ttl(failure):
    """How long an NXDOMAIN may be remembered: the SOA of its authority section (RFC 2308 5)."""
    message = failure.value.args[0] if failure.value.args else None
    for rr in getattr(message, "authority", None) or []:
        if rr.type == dns.SOA:
            return min(rr.ttl, rr.payload.minimum)
    return NEGATIVE_TTL


class DNSBLCheck(Check):
    """
    At MAIL, when the client, HELO and sender are known: every lookup
    at once, a score of the block lists that answered, an allow list
    winning. Authenticated sessions are not looked up.
    """

    name = "dnsbl"

    def __init__(self, resolver, zones, threshold=1.0, deadline=DEFAULT_DEADLINE, clock=None, cache=None):
        self.resolver = resolver
        self.zones = list(zones)
        self.threshold = threshold
        self.deadline = deadline
        self.clock = clock
        self.cache = AnswerCache() if cache is None else cache
        # Lookups under way, by name: a second session asking the same name
        # waits for the same answer instead of sending a second query.
        self.asking = {}

    def _names(self, session, sender):
        """(zone, what, subject, query name) for every lookup this session asks for."""
        subjects = {
            "ip": reversed_address(session.client_address or ""),
            "helo": domain_of(session.helo),
            "sender": domain_of(sender),
        }
        shown = {"ip": session.client_address, "helo": subjects["helo"], "sender": subjects["sender"]}
        for zone in self.zones:
            for what in zone.query:
                if subjects[what] is not None:
                    yield zone, what, shown[what], f"{subjects[what]}.{zone.zone}"

    def _lookup(self, name):
        d = self.resolver.lookupAddress(name)
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        return d.addTimeout(self.deadline, clock)

    def _answers(self, name):
        """
        A Deferred firing with the A records (dotted quads) listing `name`,
        or failing with DNSNameError when it is not listed: from the cache,
        from a lookup under way for it, or from a new lookup.
        """
        known, answers = self.cache.get(name)
        if known:
            return defer.fail(error.DNSNameError(name)) if answers is None else defer.succeed(answers)
        waiting = defer.Deferred()
        if name in self.asking:
            self.asking[name].append(waiting)
            return waiting
        self.asking[name] = [waiting]

        def answered(result):
            records = [rr for rr in result[0] if rr.type == dns.A]
            answers = [rr.payload.dottedQuad() for rr in records]
            self.cache.put(name, answers, min((rr.ttl for rr in records), default=0))
            return answers

        def failed(failure):
            if failure.check(error.DNSNameError):
                self.cache.put(name, None, negative_ttl(failure))
            return failure

        def tell(result):
            for d in self.asking.pop(name):
                if d.called:  # cancelled meanwhile (the check's timeout)
                    continue
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)
            return None

        self._lookup(name).addCallbacks(answered, failed).addBoth(tell)
        return waiting

    def mail(self, session, sender):
        if session.authenticated_as:
            return None
        asked = list(self._names(session, sender))
        if not asked:
            return None
        # Every answer cached (the usual case for an MX that hears from the
        # same clients and domains): the verdict now, without a Deferred a name.
        cached = []
        for _, _, _, qname in asked:
            known, answers = self.cache.get(qname)
            if not known:
                break
            cached.append((True, answers if answers is not None else _NOT_LISTED))
        else:
            return self._judge(session, asked, cached)
        d = defer.DeferredList([self._answers(q) for _, _, _, q in asked], consumeErrors=True)
        return d.addCallback(lambda results: self._judge(session, asked, results))

    def _judge(self, session, asked, results):
        """The verdict from the lookups' (ok, answers or Failure) results, in the order of `asked`."""
        hits, unanswered = [], []
        for (zone, what, subject, qname), (ok, result) in zip(asked, results):
            if result is _NOT_LISTED:
                continue
            if not ok:
                if result.check(error.DNSNameError):
                    continue  # NXDOMAIN: not listed
                if result.check(defer.TimeoutError, defer.CancelledError, dns.DNSQueryTimeoutError):
                    unanswered.append(zone.zone)
                else:
                    log.info("dnsbl: {name}: {problem}", name=qname, problem=result.getErrorMessage())
                continue
            counted = [a for a in result if zone.counts(a)]
            if counted:
                hits.append(Hit(zone, what, subject, counted))
        session.state["dnsbl"] = {"hits": [(h.zone.zone, h.what, h.answers) for h in hits]}
        allowed = [h for h in hits if h.zone.allow]
        if allowed:
            session.state["dnsbl"]["allowed"] = allowed[0].zone.zone
            log.info("dnsbl: {what}", what=allowed[0].describe())
            return Verdict.accept()
        blocked = [h for h in hits if not h.zone.allow]
        score = sum(h.zone.weight for h in blocked)
        session.state["dnsbl"]["score"] = score
        if blocked and score >= self.threshold:
            reasons = "; ".join(h.describe() for h in blocked)
            return Verdict.reject(f"{reasons}", 550, "5.7.1")
        if unanswered:
            # No listing reached the threshold, and some lists said nothing:
            # the check's on_error decides (tempfail or continue).
            raise ListsUnanswered(f"no answer from {', '.join(sorted(set(unanswered)))} in {self.deadline}s")
        return None


def from_section(section, context):
    """A DNSBLCheck from its checked [checks.dnsbl] table (docs/check-dnsbl.md)."""
    resolver = getattr(context, "dns", None)
    if resolver is None:
        raise ValueError("dnsbl needs the server's resolver (context.dns)")
    zones = []
    for key, allow in (("block", False), ("allow", True)):
        for i, entry in enumerate(section.get(key) or []):
            zones.append(_zone(entry, f"{key}[{i}]", allow))
    if not any(not z.allow for z in zones):
        raise ValueError("block: at least one block list is needed, e.g. block = [{ zone = \"zen.spamhaus.org\" }]")
    threshold = section.get("threshold", 1.0)
    if threshold <= 0:
        raise ValueError(f"threshold: must be a positive number, not {threshold!r}")
    deadline = section.get("deadline", DEFAULT_DEADLINE)
    if deadline <= 0:
        raise ValueError(f"deadline: must be a positive number of seconds, not {deadline!r}")
    return DNSBLCheck(resolver, zones, threshold, deadline)


ZONE_KEYS = ("zone", "query", "weight", "returns")


def _zone(entry, key, allow):
    if isinstance(entry, str):
        entry = {"zone": entry}
    if not isinstance(entry, dict):
        raise ValueError(f"{key}: a zone name or a table {{ zone = ..., weight = ... }}, not {entry!r}")
    unknown = set(entry) - set(ZONE_KEYS)
    if unknown:
        raise ValueError(f"{key}.{sorted(unknown)[0]}: unknown key; known: {', '.join(ZONE_KEYS)}")
    zone = entry.get("zone")
    if not isinstance(zone, str) or "." not in zone.strip("."):
        raise ValueError(f"{key}.zone: a DNS zone such as 'zen.spamhaus.org' is required, not {zone!r}")
    query = entry.get("query", ["ip"])
    if isinstance(query, str):
        query = [query]
    if not isinstance(query, list) or not query or any(q not in QUERIES for q in query):
        raise ValueError(f"{key}.query: a list of {', '.join(QUERIES)}, not {query!r}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"{key}.weight: must be a number, not {weight!r}")
    returns = entry.get("returns", list(DEFAULT_RETURNS))
    if isinstance(returns, str):
        returns = [returns]
    if not isinstance(returns, list) or not returns:
        raise ValueError(f"{key}.returns: a list of addresses or networks, e.g. ['127.0.0.2', '127.0.0.4/30']")
    for r in returns:
        try:
            ipaddress.ip_network(r, strict=False)
        except (ValueError, TypeError):
            raise ValueError(f"{key}.returns: {r!r} is no address or network")
    return Zone(zone, query, weight, returns, allow)
