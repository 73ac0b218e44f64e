"""
An authoritative DNS server for tests: twisted.names serving records held
in memory, on one loopback port over UDP and TCP (TCP for the answers
that do not fit a datagram), so `[dns] servers = ["127.0.0.1:PORT"]`
points the whole server at it.

    server = TestDNSServer({
        "example.org": [dns.Record_MX(10, b"mx.example.org")],
        "mx.example.org": [dns.Record_A("127.0.0.1")],
        "s1._domainkey.example.org": [txt("v=DKIM1; k=rsa; p=...")],
    })
    port = server.start()            # then server.address == "127.0.0.1:PORT"
    ...
    server.queries                   # [(name, type name), ...] as asked
    server.delay = 5                 # answer each query 5 s late (None: at once)
    server.silent = True             # answer nothing (a name server that is down)
    yield server.stop()

A validating resolver stands in for DNSSEC: answers for the names and zones
in `authenticated` carry the AD bit (RFC 4035 3.2.3) when the query asked
for it (AD or DO, RFC 6840 5.7); names in `servfail` are answered SERVFAIL
(a resolver whose validation failed). TLSA records (RFC 6698) are served
with L{tlsa}:

    server = TestDNSServer({..., "_25._tcp.mx.example.org": [tlsa(3, 1, 1, digest)]},
                           authenticated={"example.org"})
    server.servfail.add("_25._tcp.mx.example.org")
    server.authenticated.discard("example.org")    # insecure from now on

From a trial test, L{start_dns_server} starts one and stops it at cleanup.
Names are answered by the zone they fall in (a zone is each name's last
two labels unless `zones` says otherwise): a name in a zone without
records is NXDOMAIN, as a real authoritative server would say.
"""

import struct

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.names import authority, common, dns, server


def txt(text):
    """A TXT record for `text`, cut into strings of at most 255 octets (RFC 1035 3.3.14)."""
    data = text.encode() if isinstance(text, str) else text
    return dns.Record_TXT(*[data[i : i + 255] for i in range(0, len(data), 255)] or [b""], ttl=60)


def _name(name):
    return (name.encode("idna") if isinstance(name, str) else name).lower().rstrip(b".")


TLSA = 52  # RFC 6698 7.1: the TLSA RR type (twisted.names has no class for it)


class Record_TLSA(dns.UnknownRecord):
    """A TLSA record as served: usage, selector, matching type, data; or any `raw` RDATA (a malformed one)."""

    TYPE = TLSA
    fancybasename = "TLSA"

    def __init__(self, usage=3, selector=1, matching_type=1, data=b"", ttl=60, raw=None):
        wire = raw if raw is not None else struct.pack("!BBB", usage, selector, matching_type) + data
        dns.UnknownRecord.__init__(self, wire, ttl)


def tlsa(usage, selector, matching_type, data, ttl=60):
    """A TLSA record for the test server; `data` as bytes or hex."""
    if isinstance(data, str):
        data = bytes.fromhex(data)
    return Record_TLSA(usage, selector, matching_type, data, ttl)


def _under(name, names):
    """`name` is one of `names` or below one of them."""
    return any(name == n or name.endswith(b"." + n) for n in names)


class MemoryAuthority(authority.FileAuthority):
    """One zone held in memory (FileAuthority without the file)."""

    def __init__(self, zone, records):
        common.ResolverBase.__init__(self)
        self._cache = {}
        soa = dns.Record_SOA(mname=b"ns." + zone, rname=b"hostmaster." + zone, serial=1, minimum=1, expire=60, ttl=1)
        self.soa = (zone, soa)
        self.records = {name: list(rrs) for name, rrs in records.items()}
        self.records.setdefault(zone, []).append(soa)


class _RecordingFactory(server.DNSServerFactory):
    """Keeps the (name, type) of every query, so a test can see what was asked."""

    def __init__(self, authorities, queries):
        server.DNSServerFactory.__init__(self, authorities=authorities)
        self.queries = queries
        self.delay = None
        self.silent = False
        self.pending = []
        self.authenticated = set()  # names/zones whose answers get the AD bit
        self.servfail = set()  # names answered SERVFAIL

    def _responseFromMessage(self, message, rCode=dns.OK, answers=None, authority=None, additional=None):
        response = server.DNSServerFactory._responseFromMessage(self, message, rCode, answers, authority, additional)
        # RFC 6840 5.7: AD only for a query that asked (AD or DO set).
        asked = message.authenticData or getattr(message, "dnssecOK", False)
        names = {_name(q.name.name) for q in message.queries}
        if asked and rCode in (dns.OK, dns.ENAME) and names and all(_under(n, self.authenticated) for n in names):
            response.authenticData = 1
        return response

    def handleQuery(self, message, protocol, address):
        for q in message.queries:
            self.queries.append((q.name.name.decode("ascii", "replace").lower(), dns.QUERY_TYPES.get(q.type, q.type)))
        if self.silent:
            return None
        if any(_name(q.name.name) in self.servfail for q in message.queries):
            self.sendReply(protocol, self._responseFromMessage(message, rCode=dns.ESERVER), address)
            return None
        if self.delay:
            call = reactor.callLater(self.delay, server.DNSServerFactory.handleQuery, self, message, protocol, address)
            self.pending.append(call)
            return None
        return server.DNSServerFactory.handleQuery(self, message, protocol, address)


class _TruncatingDatagramProtocol(dns.DNSDatagramProtocol):
    """
    UDP answers larger than 512 octets go out empty with the TC bit (RFC
    1035 4.2.1), as a real server's would, so the client asks again over
    TCP. (twisted.names' server sends them whole, which no client reads.)
    """

    def writeMessage(self, message, address):
        if len(message.toStr()) > 512:
            message.trunc = 1
            message.answers, message.authority, message.additional = [], [], []
        dns.DNSDatagramProtocol.writeMessage(self, message, address)


class TestDNSServer:
    """
    @param records: {name: [dns.Record_*]}; names as str or bytes.
    @param zones: the zone names; default: each name's last two labels.
    @param authenticated: names or zones (str or bytes) whose answers carry
        the AD bit, as a validating resolver's would (see L{authenticated}).
    """

    def __init__(self, records, zones=None, authenticated=()):
        by_name = {}
        for name, rrs in records.items():
            by_name.setdefault(_name(name), []).extend(rrs)
        if zones is None:
            zones = {b".".join(n.split(b".")[-2:]) for n in by_name}
        zones = sorted({_name(z) for z in zones}, key=len, reverse=True)  # the longest zone first
        grouped = {z: {} for z in zones}
        for name, rrs in by_name.items():
            zone = next((z for z in zones if name == z or name.endswith(b"." + z)), None)
            if zone is None:
                raise ValueError(f"{name!r} is in none of the zones {zones!r}")
            grouped[zone][name] = rrs
        self.queries = []
        self.authorities = [MemoryAuthority(z, grouped[z]) for z in zones]
        self.factory = _RecordingFactory(self.authorities, self.queries)
        self.factory.authenticated.update(_name(n) for n in authenticated)
        self.port = None
        self._listening = []

    def start(self, interface="127.0.0.1"):
        """Listen on one free port, UDP and TCP; returns the port number."""
        for _ in range(20):
            udp = reactor.listenUDP(0, _TruncatingDatagramProtocol(self.factory), interface=interface)
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, self.factory, interface=interface)
            except CannotListenError:
                udp.stopListening()
                continue
            self._listening = [udp, tcp]
            self.port = port
            self.interface = interface
            return port
        raise RuntimeError("no free port for the test DNS server")

    @property
    def address(self):
        """"127.0.0.1:PORT", as `[dns] servers` takes it."""
        return f"{self.interface}:{self.port}"

    @property
    def delay(self):
        """Seconds each answer waits (None: at once): a slow name server."""
        return self.factory.delay

    @delay.setter
    def delay(self, seconds):
        self.factory.delay = seconds

    @property
    def silent(self):
        """True: queries are recorded and never answered (a name server that is down)."""
        return self.factory.silent

    @silent.setter
    def silent(self, value):
        self.factory.silent = value

    @property
    def authenticated(self):
        """The names whose answers, and those of the names below, carry the AD bit (`.add`, `.discard`: str or bytes)."""
        return _NameSet(self.factory.authenticated)

    def authenticate(self, name):
        """Answers for `name` and the names below it carry the AD bit from now on."""
        self.factory.authenticated.add(_name(name))

    @property
    def servfail(self):
        """The names answered SERVFAIL (`.add`, `.discard`: str or bytes)."""
        return _NameSet(self.factory.servfail)

    def add(self, name, record):
        """Serve one more record (in the zone the name falls in)."""
        name = _name(name)
        for a in self.authorities:
            zone = a.soa[0]
            if name == zone or name.endswith(b"." + zone):
                a.records.setdefault(name, []).append(record)
                return
        raise ValueError(f"{name!r} is in none of the zones")

    def stop(self):
        listening, self._listening = self._listening, []
        for call in self.factory.pending:
            if call.active():
                call.cancel()
        # TCP clients (answers too long for UDP) are disconnected too.
        for protocol in list(self.factory.connections):
            protocol.transport.loseConnection()
        d = defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in listening])
        return d.addCallback(lambda _: self._until_disconnected())

    @defer.inlineCallbacks
    def _until_disconnected(self):
        from twisted.internet.task import deferLater

        for _ in range(100):
            if not self.factory.connections:
                return
            yield deferLater(reactor, 0.01, lambda: None)


class _NameSet:
    """A view of a set of names that takes str or bytes."""

    def __init__(self, names):
        self.names = names

    def add(self, name):
        self.names.add(_name(name))

    def discard(self, name):
        self.names.discard(_name(name))

    def __contains__(self, name):
        return _name(name) in self.names


def start_dns_server(testcase, records, zones=None, authenticated=()):
    """A started L{TestDNSServer}, stopped when the trial test ends."""
    dns_server = TestDNSServer(records, zones, authenticated)
    dns_server.start()
    testcase.addCleanup(dns_server.stop)
    return dns_server
