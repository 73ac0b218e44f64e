"""
Routing by MX (RFC 5321 5.1, RFC 7505) against a DNS server from
twisted.names run inside the test: MX preference order, failover to the
next MX, the implicit MX (address records only), and the null MX bounce.
"""

from twisted.internet import defer, reactor
from twisted.names import authority, common, dns, server
from twisted.trial import unittest

from mailplat.delivery.relay.router import Router
from mailplat.interfaces import Envelope, PermanentFailure
from mailplat.store.source import BytesSource
from tests.helpers import free_port, in_thread
from tests.test_relay_delivery import (
    ALICE,
    BOB,
    MESSAGE,
    DomainServer,
    messages_in,
    queue_of,
    relay_config,
    scripted_server,
    submit,
    wait_for,
)


class MemoryAuthority(authority.FileAuthority):
    """A zone held in memory (FileAuthority without the file)."""

    def __init__(self, zone, records):
        common.ResolverBase.__init__(self)
        soa = dns.Record_SOA(mname=b"ns." + zone, rname=b"hostmaster." + zone, serial=1, minimum=1, expire=60, ttl=1)
        self.soa = (zone, soa)
        self.records = {name.lower(): rrs for name, rrs in records.items()}
        self.records.setdefault(zone, []).append(soa)


ZONE = {
    # preference order: mx-b (10) before mx-a (20), whatever the order here
    b"example.org": [dns.Record_MX(20, b"mx-a.example.org"), dns.Record_MX(10, b"mx-b.example.org")],
    b"mx-a.example.org": [dns.Record_A("127.0.0.1")],
    b"mx-b.example.org": [dns.Record_A("127.0.0.1")],
    # failover: the first MX refuses connections
    b"fail.example.org": [dns.Record_MX(10, b"mx-down.example.org"), dns.Record_MX(20, b"mx-a.example.org")],
    b"mx-down.example.org": [dns.Record_A("127.0.0.1")],
    # RFC 7505: no mail for this domain
    b"nomail.example.org": [dns.Record_MX(0, b"")],
    # no MX: the domain's own address is the implicit MX
    b"plain.example.org": [dns.Record_A("127.0.0.1")],
}


def start_dns(testcase, zone=ZONE):
    factory = server.DNSServerFactory(authorities=[MemoryAuthority(b"example.org", zone)])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


class RouterLookups(unittest.TestCase):
    """The router alone, against the test's DNS server."""

    def setUp(self):
        self.router = Router(dns_servers=[("127.0.0.1", start_dns(self))], mx_port=2525)

    @defer.inlineCallbacks
    def test_mx_hosts_come_in_preference_order(self):
        hosts = yield self.router.mx_hosts("example.org")
        self.assertEqual(hosts, ["mx-b.example.org", "mx-a.example.org"])

    @defer.inlineCallbacks
    def test_destinations_name_each_mx_with_its_address(self):
        destinations = yield self.router.route("example.org")
        self.assertEqual([(d.name, d.address, d.port) for d in destinations],
                         [("mx-b.example.org", "127.0.0.1", 2525), ("mx-a.example.org", "127.0.0.1", 2525)])

    @defer.inlineCallbacks
    def test_no_mx_means_the_domains_own_address(self):
        destinations = yield self.router.route("plain.example.org")
        self.assertEqual([(d.name, d.address) for d in destinations], [("plain.example.org", "127.0.0.1")])

    @defer.inlineCallbacks
    def test_null_mx_is_a_permanent_failure_556_5_1_10(self):
        with self.assertRaises(PermanentFailure) as caught:
            yield self.router.route("nomail.example.org")
        self.assertEqual((caught.exception.code, caught.exception.enhanced), (556, "5.1.10"))

    @defer.inlineCallbacks
    def test_a_domain_that_does_not_exist_is_permanent(self):
        with self.assertRaises(PermanentFailure) as caught:
            yield self.router.route("nowhere.example.org")
        self.assertEqual(caught.exception.enhanced, "5.1.2")


class MXDelivery(unittest.TestCase):
    """Mail submitted on A finds B through MX records."""

    @defer.inlineCallbacks
    def start(self, receivers, **keys):
        """receivers: {mx host name: DomainServer or None (nobody listening)}."""
        dns_port = start_dns(self)
        ports = {}
        for name, receiver in receivers.items():
            ports[name] = receiver.port("smtp") if receiver is not None else free_port()
        keys.setdefault("retry_first", 3600)
        extra = relay_config(dns_servers=[f"127.0.0.1:{dns_port}"], **keys)
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        yield self.a.start(users=ALICE)
        # Every MX host is 127.0.0.1 here: tell them apart by port.
        queue_of(self.a).router.port_for = lambda host: ports[host]

    @defer.inlineCallbacks
    def receiver(self, domain="example.org", users=BOB):
        server = DomainServer(self, domain, listeners=("smtp",))
        yield server.start(users=users)
        return server

    @defer.inlineCallbacks
    def test_the_most_preferred_mx_gets_the_mail(self):
        b_preferred = yield self.receiver()
        b_backup = yield self.receiver()
        yield self.start({"mx-b.example.org": b_preferred, "mx-a.example.org": b_backup})
        yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["bob@example.org"])
        yield wait_for(lambda: messages_in(b_preferred, "bob@example.org"))
        self.assertEqual(messages_in(b_backup, "bob@example.org"), [])

    @defer.inlineCallbacks
    def test_failover_to_the_next_mx_when_the_first_is_down(self):
        b = yield self.receiver("fail.example.org", users={"bob@fail.example.org": "pw"})
        yield self.start({"mx-down.example.org": None, "mx-a.example.org": b})
        queue = queue_of(self.a)
        queue_id = yield queue.enqueue(Envelope("alice@example.test"), ["bob@fail.example.org"], BytesSource(MESSAGE.replace(b"\r\n", b"\n")))
        yield wait_for(lambda: messages_in(b, "bob@fail.example.org"))
        yield wait_for(lambda: queue_id not in queue.entries)

    @defer.inlineCallbacks
    def test_failover_to_the_next_mx_on_a_4xx_reply(self):
        b = yield self.receiver("fail.example.org", users={"bob@fail.example.org": "pw"})
        yield self.start({"mx-down.example.org": None, "mx-a.example.org": b})
        factory, busy_port = scripted_server(self, rcpt_replies=[b"452 4.3.1 out of space"])
        queue = queue_of(self.a)
        queue.router.port_for = lambda host: {"mx-down.example.org": busy_port, "mx-a.example.org": b.port("smtp")}[host]
        yield queue.enqueue(Envelope("alice@example.test"), ["bob@fail.example.org"], BytesSource(b"Subject: x\n\nx\n"))
        yield wait_for(lambda: messages_in(b, "bob@fail.example.org"))
        self.assertEqual(len(factory.sessions), 1)
        self.assertEqual(factory.messages, [])

    @defer.inlineCallbacks
    def test_implicit_mx_delivers_to_the_domains_address(self):
        b = yield self.receiver("plain.example.org", users={"bob@plain.example.org": "pw"})
        yield self.start({"plain.example.org": b})
        yield queue_of(self.a).enqueue(Envelope("alice@example.test"), ["bob@plain.example.org"], BytesSource(b"Subject: x\n\nx\n"))
        yield wait_for(lambda: messages_in(b, "bob@plain.example.org"))

    @defer.inlineCallbacks
    def test_null_mx_bounces_at_once(self):
        yield self.start({})
        yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["bob@nomail.example.org"])
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"))
        self.assertIn(b"Final-Recipient: rfc822; bob@nomail.example.org", dsn)
        self.assertIn(b"Status: 5.1.10", dsn)
        self.assertIn(b"null MX", dsn)
