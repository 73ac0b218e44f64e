"""
The server's one DNS resolver (`[dns] servers`, `[dns] timeout`), built with
twisted.names: every part that looks names up (relay MX and address
lookups, and the SPF/DKIM/DMARC checks to come) asks this one object, so a
test or an operator points all of them at one name server.

    resolver = SharedResolver(config.dns)
    answers, authority, additional = yield resolver.lookupMailExchange("example.org")
    resolver.close()          # when the server stops

It provides twisted.names' IResolver: the lookup methods are those of the
underlying resolver (/etc/hosts first, then the name servers).

`[dns] validating = true` says the name servers validate DNSSEC (a local
unbound): queries then carry the AD bit (RFC 6840 5.7, which asks a
validating resolver to say whether it validated the answer) and
L{SharedResolver.lookup_secure} reports the AD bit of the answer. Without
it no answer is ever taken as authenticated (DANE, docs/relay.md, needs it).

    answer = yield resolver.lookup_secure("_25._tcp.mx.example.org", 52)
    answer.records, answer.authenticated
"""

import errno
import os
import time

from twisted.internet import defer, error, reactor
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.task import deferLater
from twisted.names import client, dns, hosts, resolve

DEFAULT_TIMEOUT = 10  # seconds a lookup may take in all, retries included
RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = b"/etc/hosts"


def retry_timeouts(total):
    """
    A total time for a lookup as twisted.names' per-try timeouts: a first
    try of one second (a lost UDP datagram is the common failure), then the
    rest of the time for a second try (which goes to the next server).
    """
    if total <= 2:
        return (total,)
    return (1, total - 1)


def _asking_for_ad(write):
    """A protocol's writeMessage that sets the AD bit of the queries it sends (RFC 6840 5.7)."""

    def write_message(message, *address):
        if not message.answer:
            message.authenticData = 1
        return write(message, *address)

    return write_message


class HostsFile(hosts.Resolver):
    """
    hosts.Resolver that reads the file when it changes, not at every lookup
    (twisted.names reads and parses it for each A and AAAA query, and a
    DNSBL check makes several a message): its mtime and size are looked at
    at most once a second.
    """

    check_interval = 1.0

    def __init__(self, file=HOSTS_FILE, ttl=60 * 60, clock=time.monotonic):
        hosts.Resolver.__init__(self, file, ttl)
        self._clock = clock
        self._checked = None
        self._stamp = None
        self._names = {}

    def _addresses(self, name):
        now = self._clock()
        if self._checked is None or now - self._checked >= self.check_interval:
            self._checked = now
            self._reload()
        return self._names.get(name.lower(), ())

    def _reload(self):
        try:
            st = os.stat(self.file)
        except OSError:
            self._stamp, self._names = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        names = {}
        try:
            with open(self.file, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            parts = line.split(b"#", 1)[0].split()
            if len(parts) < 2:
                continue
            try:
                address = parts[0].decode("ascii")
            except UnicodeDecodeError:
                continue
            if not (isIPAddress(address) or isIPv6Address(address)):
                continue
            for alias in parts[1:]:
                names.setdefault(alias.lower(), []).append(address)
        self._stamp, self._names = stamp, names

    def _aRecords(self, name):
        return tuple(dns.RRHeader(name, dns.A, dns.IN, self.ttl, dns.Record_A(addr, self.ttl))
                     for addr in self._addresses(name) if isIPAddress(addr))

    def _aaaaRecords(self, name):
        return tuple(dns.RRHeader(name, dns.AAAA, dns.IN, self.ttl, dns.Record_AAAA(addr, self.ttl))
                     for addr in self._addresses(name) if isIPv6Address(addr))


class _QuietDatagramProtocol(dns.DNSDatagramProtocol):
    """One query's UDP port, without the "Starting/Stopping protocol" lines it writes when it opens and closes."""

    noisy = False


class QuietClientResolver(client.Resolver):
    """
    client.Resolver whose per-query UDP ports (a new random source port
    for each query, as twisted.names does against spoofed answers) say
    less in the log: two lines a lookup rather than four.
    """

    def _connectedProtocol(self, interface=""):
        failures = 0
        protocol = _QuietDatagramProtocol(self, reactor=self._reactor)
        while True:
            try:
                self._reactor.listenUDP(dns.randomSource(), protocol, interface=interface)
            except error.CannotListenError as e:
                failures += 1
                if getattr(e.socketError, "errno", None) == errno.EMFILE or failures >= 1000:
                    raise
            else:
                return protocol


class ValidatingClientResolver(QuietClientResolver):
    """
    client.Resolver whose queries, UDP and TCP, carry the AD bit: a
    validating resolver then sets AD in its answer when it validated it
    (RFC 6840 5.7; RFC 4035 3.2.3), without the DO bit's signatures.
    """

    def __init__(self, *args, **kwargs):
        QuietClientResolver.__init__(self, *args, **kwargs)
        build = self.factory.buildProtocol

        def build_protocol(addr):
            protocol = build(addr)
            protocol.writeMessage = _asking_for_ad(protocol.writeMessage)
            return protocol

        self.factory.buildProtocol = build_protocol

    def _connectedProtocol(self, interface=""):
        protocol = QuietClientResolver._connectedProtocol(self, interface)
        protocol.writeMessage = _asking_for_ad(protocol.writeMessage)
        return protocol


def make_resolver(servers=None, timeout=DEFAULT_TIMEOUT, validating=False):
    """
    /etc/hosts, then the given name servers ([(host, port)]) or those of
    resolv.conf. No cache resolver: its expiry timers outlive the lookups.

    @param validating: the name servers validate DNSSEC: queries ask for
        the AD bit (L{ValidatingClientResolver}).
    @return: (the resolver chain, the client.Resolver inside it, whose
        resolv.conf timer L{close_resolver} stops).
    """
    timeouts = retry_timeouts(timeout)
    kind = ValidatingClientResolver if validating else QuietClientResolver
    if servers:
        upstream = kind(servers=list(servers), timeout=timeouts)
    else:
        upstream = kind(resolv=RESOLV_CONF, timeout=timeouts)
    return resolve.ResolverChain([HostsFile(HOSTS_FILE), upstream]), upstream


def close_resolver(upstream):
    """
    Stop the timer with which client.Resolver re-reads resolv.conf, and
    close the TCP connections it keeps after an answer too long for UDP
    (it never closes them itself). A Deferred that fires once they are gone.
    """
    call = getattr(upstream, "_parseCall", None)
    if call is not None and call.active():
        call.cancel()
    connections = list(getattr(upstream, "connections", []))
    for protocol in connections:
        protocol.transport.loseConnection()
    return _until_closed(upstream.connections) if connections else defer.succeed(None)


@defer.inlineCallbacks
def _until_closed(connections, tries=100):
    for _ in range(tries):
        if not connections:
            return
        yield deferLater(reactor, 0.01, lambda: None)


class SharedResolver:
    """
    The process's resolver, built on first use (client.Resolver starts a
    timer when it is built, which a server that never looks a name up
    should not leave behind).

    @param settings: the checked `[dns]` table: {"servers": [(host, port)],
        "timeout": seconds}; None for resolv.conf and the default timeout.
    """

    def __init__(self, settings=None):
        settings = settings or {}
        self.servers = list(settings.get("servers") or [])
        self.timeout = settings.get("timeout") or DEFAULT_TIMEOUT
        # `[dns] validating`: the AD bit of the name servers' answers is
        # believed (L{lookup_secure}); False: never authenticated.
        self.validating = bool(settings.get("validating"))
        self._chain = None
        self._upstream = None

    @property
    def resolver(self):
        """The twisted.names IResolver the lookups go to."""
        if self._chain is None:
            self._chain, self._upstream = make_resolver(self.servers, self.timeout, self.validating)
        return self._chain

    def __getattr__(self, name):
        # IResolver's methods (query, lookupMailExchange, lookupText, ...)
        # are the chain's: one object to hand around, built when first asked.
        if name.startswith("lookup") or name in ("query", "getHostByName"):
            return getattr(self.resolver, name)
        raise AttributeError(name)

    def lookup_secure(self, name, rtype):
        """
        One query of type `rtype` for `name` straight to the name servers
        (not /etc/hosts): a Deferred firing with a L{SecureAnswer}, whose
        `authenticated` is the answer's AD bit when `[dns] validating` is
        true, else False. Fails as the lookup methods do (DNSNameError for
        NXDOMAIN, DNSServerError for SERVFAIL, TimeoutError); the failure's
        `authenticated` attribute says whether a denial was validated.
        """
        self.resolver  # built on first use
        upstream = self._upstream
        name = name.encode("idna") if isinstance(name, str) else name
        d = upstream.queryUDP([dns.Query(name, rtype, dns.IN)], retry_timeouts(self.timeout))

        def answered(message):
            if message.trunc:
                # RFC 1035 4.2.1: the whole answer over TCP.
                return upstream.queryTCP(message.queries, self.timeout).addCallback(answered)
            authenticated = bool(self.validating and message.authenticData)
            if message.rCode != dns.OK:
                exc = upstream.exceptionForCode(message.rCode)(message)
                exc.authenticated = authenticated
                raise exc
            return SecureAnswer([a for a in message.answers if a.type == rtype], authenticated, message)

        return d.addCallback(answered)

    def close(self):
        if self._upstream is not None:
            return close_resolver(self._upstream)
        return defer.succeed(None)


class SecureAnswer:
    """
    An answer of L{SharedResolver.lookup_secure}: the RRHeaders of the
    type asked for, and whether the validating resolver vouched for them
    (AD bit, RFC 4035 3.2.3). An empty `records` with `authenticated` is
    a validated "no such records" (NODATA).
    """

    __slots__ = ("records", "authenticated", "message")

    def __init__(self, records, authenticated, message=None):
        self.records = records
        self.authenticated = authenticated
        self.message = message

    def __repr__(self):
        return f"SecureAnswer({len(self.records)} records, authenticated={self.authenticated})"
