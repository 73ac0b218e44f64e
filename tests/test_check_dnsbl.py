"""
The dnsbl check (docs/check-dnsbl.md): block and allow lists asked through
the server's resolver, here an in-test name server: the client's address
(IPv4 and IPv6 nibbles), the HELO and sender domains; weights, threshold,
per-zone return-code filters; a name server that never answers.
"""

import smtplib

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailplat.checks import EnabledCheck, run_stage
from mailplat.dns import SharedResolver
from mailplat.interfaces import BackendContext, CheckSession, Verdict
from mailplat.spam.dnsbl import NEGATIVE_TTL, AnswerCache, domain_of, negative_ttl, reversed_address
from mailplat.testing.check import CheckConformance
from mailplat.testing.dns import start_dns_server
from plugins import mailplat_spam
from tests.helpers import NO_NAMES_ZONES, MailServer, in_thread

ZONES = ("bl.example", "dbl.example", "wl.example", "other.example", "test")

RECORDS = {
    # 192.0.2.1 on bl.example; 192.0.2.2 on bl and other; 192.0.2.3 allow-listed.
    "1.2.0.192.bl.example": [dns.Record_A("127.0.0.2")],
    "2.2.0.192.bl.example": [dns.Record_A("127.0.0.2")],
    "2.2.0.192.other.example": [dns.Record_A("127.0.0.10")],
    "3.2.0.192.bl.example": [dns.Record_A("127.0.0.2")],
    "3.2.0.192.wl.example": [dns.Record_A("127.0.10.1")],
    # A "query refused" answer (Spamhaus' 127.255.255.254) is no listing.
    "4.2.0.192.bl.example": [dns.Record_A("127.255.255.254")],
    # 2001:db8::1, reversed nibbles.
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example": [dns.Record_A("127.0.0.3")],
    "spammer.test.dbl.example": [dns.Record_A("127.0.1.2")],
    "helo.spammer.test.dbl.example": [dns.Record_A("127.0.1.2")],
}


def section(**extra):
    base = {
        "block": [
            {"zone": "bl.example", "weight": 1.0, "returns": ["127.0.0.2/31"]},
            {"zone": "other.example", "weight": 0.5, "returns": ["127.0.0.10"]},
            {"zone": "dbl.example", "query": ["helo", "sender"], "weight": 0.5},
        ],
        "allow": [{"zone": "wl.example"}],
        "threshold": 1.0,
        "deadline": 3.0,
    }
    base.update(extra)
    return base


class Lists(unittest.TestCase):
    def setUp(self):
        self.dns = start_dns_server(self, RECORDS, zones=ZONES)
        self.resolver = SharedResolver({"servers": [("127.0.0.1", self.dns.port)], "timeout": 2})
        self.addCleanup(self.resolver.close)

    def check(self, **extra):
        context = BackendContext(None)
        context.dns = self.resolver
        return mailplat_spam.dnsbl.from_config(section(**extra), context)

    def verdict(self, client, sender="a@remote.test", helo="client.remote.test", check=None, authenticated=None):
        session = CheckSession(client, policy="mx")
        session.helo = helo
        session.authenticated_as = authenticated
        self.session = session
        return run_stage([EnabledCheck("dnsbl", check or self.check())], "mail", session, sender)

    @defer.inlineCallbacks
    def test_a_listed_client_is_refused_naming_the_list(self):
        verdict = yield self.verdict("192.0.2.1")
        self.assertEqual((verdict.action, verdict.code, verdict.enhanced), (Verdict.REJECT, 550, "5.7.1"))
        self.assertIn("bl.example", verdict.text)
        self.assertIn("192.0.2.1", verdict.text)

    @defer.inlineCallbacks
    def test_an_unlisted_client_passes(self):
        verdict = yield self.verdict("192.0.2.99")
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertIn(("99.2.0.192.bl.example", "A"), self.dns.queries)

    @defer.inlineCallbacks
    def test_the_lookups_go_out_in_parallel(self):
        """Every list is asked before any answer comes back."""
        asked = []

        class Held:
            def lookupAddress(self, name):
                d = defer.Deferred()
                asked.append((name, d))
                return d

        check = self.check()
        check.resolver = Held()
        d = self.verdict("192.0.2.99", sender="a@clean.test", helo="clean.test", check=check)
        self.assertEqual({name for name, _ in asked}, {
            "99.2.0.192.bl.example", "99.2.0.192.other.example", "99.2.0.192.wl.example",
            "clean.test.dbl.example",
        })
        self.assertNoResult(d)
        for name, pending in asked:
            pending.errback(DNSNameError(name))
        verdict = yield d
        self.assertEqual(verdict.action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_weights_add_up_to_the_threshold(self):
        # 192.0.2.2: bl (1.0) + other (0.5); a threshold of 1.5 needs both.
        verdict = yield self.verdict("192.0.2.2", check=self.check(threshold=1.5))
        self.assertEqual(verdict.action, Verdict.REJECT)
        self.assertIn("other.example", verdict.text)
        self.assertEqual(self.session.state["dnsbl"]["score"], 1.5)
        verdict = yield self.verdict("192.0.2.1", check=self.check(threshold=1.5))
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertEqual(self.session.state["dnsbl"]["score"], 1.0)

    @defer.inlineCallbacks
    def test_the_allow_list_wins(self):
        verdict = yield self.verdict("192.0.2.3")
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertEqual(self.session.state["dnsbl"]["allowed"], "wl.example")

    @defer.inlineCallbacks
    def test_return_codes_outside_the_filter_do_not_count(self):
        # bl.example counts 127.0.0.2-3 only: a filter of 127.0.0.4 makes 192.0.2.1 clean.
        block = [{"zone": "bl.example", "returns": ["127.0.0.4"]}]
        verdict = yield self.verdict("192.0.2.1", check=self.check(block=block))
        self.assertEqual(verdict.action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_a_query_refused_answer_is_no_listing(self):
        verdict = yield self.verdict("192.0.2.4", check=self.check(block=["bl.example"]))
        self.assertEqual(verdict.action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_ipv6_clients_are_asked_by_reversed_nibbles(self):
        verdict = yield self.verdict("2001:db8::1")
        self.assertEqual(verdict.action, Verdict.REJECT)
        self.assertIn("2001:db8::1", verdict.text)

    @defer.inlineCallbacks
    def test_an_ipv4_mapped_client_is_asked_as_ipv4(self):
        verdict = yield self.verdict("::ffff:192.0.2.1")
        self.assertEqual(verdict.action, Verdict.REJECT)

    @defer.inlineCallbacks
    def test_a_listed_sender_domain_is_refused_when_weights_reach_the_threshold(self):
        verdict = yield self.verdict("192.0.2.99", sender="x@spammer.test", check=self.check(threshold=0.5))
        self.assertEqual(verdict.action, Verdict.REJECT)
        self.assertIn("spammer.test listed by dbl.example", verdict.text)

    @defer.inlineCallbacks
    def test_a_listed_helo_domain_counts(self):
        verdict = yield self.verdict("192.0.2.99", helo="helo.spammer.test", check=self.check(threshold=0.5))
        self.assertEqual(verdict.action, Verdict.REJECT)
        self.assertIn("helo.spammer.test", verdict.text)

    @defer.inlineCallbacks
    def test_authenticated_clients_are_not_looked_up(self):
        verdict = yield self.verdict("192.0.2.1", authenticated="alice@example.test")
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertEqual(self.dns.queries, [])

    @defer.inlineCallbacks
    def test_the_null_sender_and_ip_literal_helo_are_not_asked_about(self):
        yield self.verdict("192.0.2.99", sender="", helo="[192.0.2.99]")
        self.assertFalse([n for n, _ in self.dns.queries if n.endswith("dbl.example")])


class Cache(unittest.TestCase):
    """Answers are remembered for their TTL: a client seen again costs no lookup."""

    def setUp(self):
        self.dns = start_dns_server(self, RECORDS, zones=ZONES)
        self.resolver = SharedResolver({"servers": [("127.0.0.1", self.dns.port)], "timeout": 2})
        self.addCleanup(self.resolver.close)
        self.clock = [1000.0]

    def check(self, resolver=None):
        context = BackendContext(None)
        context.dns = self.resolver
        check = mailplat_spam.dnsbl.from_config(section(), context)
        check.cache = AnswerCache(now=lambda: self.clock[0])
        if resolver is not None:
            check.resolver = resolver
        return check

    def verdict(self, check, client="192.0.2.1"):
        session = CheckSession(client, policy="mx")
        session.helo = "client.remote.test"
        return run_stage([EnabledCheck("dnsbl", check)], "mail", session, "a@remote.test")

    @defer.inlineCallbacks
    def test_a_listing_is_answered_from_the_cache_within_its_ttl(self):
        check = self.check()
        first = yield self.verdict(check)
        asked = len(self.dns.queries)
        self.clock[0] += 30  # the test server's records live 60 s (twisted.names' default TTL here)
        again = yield self.verdict(check)
        self.assertEqual((first.action, again.action), (Verdict.REJECT, Verdict.REJECT))
        self.assertEqual(again.text, first.text)
        self.assertEqual(len(self.dns.queries), asked)

    @defer.inlineCallbacks
    def test_an_nxdomain_without_an_soa_is_kept_for_a_minute(self):
        # twisted.names' server answers NXDOMAIN without an authority section.
        check = self.check()
        yield self.verdict(check, "192.0.2.99")
        asked = len(self.dns.queries)
        self.clock[0] += NEGATIVE_TTL - 1
        yield self.verdict(check, "192.0.2.99")
        self.assertEqual(len(self.dns.queries), asked)
        self.clock[0] += 2
        verdict = yield self.verdict(check, "192.0.2.99")
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertEqual(len(self.dns.queries), 2 * asked)

    @defer.inlineCallbacks
    def test_a_session_whose_names_are_all_cached_is_judged_at_once(self):
        # No Deferred, no lookup: the verdict is there when mail() returns.
        check = self.check()
        for client in ("192.0.2.1", "192.0.2.99"):
            session = CheckSession(client, policy="mx")
            session.helo = "client.remote.test"
            yield check.mail(session, "a@remote.test")
        asked = len(self.dns.queries)
        listed = CheckSession("192.0.2.1", policy="mx")
        listed.helo = "client.remote.test"
        verdict = check.mail(listed, "a@remote.test")
        self.assertIsInstance(verdict, Verdict)
        self.assertEqual(verdict.action, Verdict.REJECT)
        self.assertIn("192.0.2.1 listed by", verdict.text)
        self.assertIn("score", listed.state["dnsbl"])
        unlisted = CheckSession("192.0.2.99", policy="mx")
        unlisted.helo = "client.remote.test"
        self.assertIsNone(check.mail(unlisted, "a@remote.test"))
        self.assertEqual(unlisted.state["dnsbl"], {"hits": [], "score": 0})
        self.assertEqual(len(self.dns.queries), asked)

    def test_the_negative_ttl_is_the_smaller_of_the_soa_ttl_and_minimum(self):
        # RFC 2308 5.
        message = dns.Message(rCode=dns.ENAME)
        soa = dns.Record_SOA(mname=b"ns.bl.example", rname=b"hostmaster.bl.example", minimum=10, ttl=300)
        message.authority = [dns.RRHeader(b"bl.example", dns.SOA, payload=soa, ttl=300)]
        self.assertEqual(negative_ttl(Failure(DNSNameError(message))), 10)
        self.assertEqual(negative_ttl(Failure(DNSNameError("no message"))), NEGATIVE_TTL)

    @defer.inlineCallbacks
    def test_a_name_asked_by_two_sessions_at_once_is_looked_up_once(self):
        asked = []

        class Held:
            def lookupAddress(self, name):
                d = defer.Deferred()
                asked.append((name, d))
                return d

        check = self.check(Held())
        first, second = self.verdict(check, "192.0.2.99"), self.verdict(check, "192.0.2.99")
        self.assertEqual(len(asked), 5)  # bl, other, wl for the client; dbl for the HELO and the sender
        for name, pending in asked:
            pending.errback(DNSNameError(name))
        self.assertEqual(((yield first).action, (yield second).action), (Verdict.ACCEPT, Verdict.ACCEPT))

    @defer.inlineCallbacks
    def test_a_lookup_that_timed_out_is_asked_again(self):
        asked = []

        class Silent:
            def lookupAddress(self, name):
                asked.append(name)
                return defer.fail(dns.DNSQueryTimeoutError(name))

        check = self.check(Silent())
        for _ in range(2):
            verdict = yield self.verdict(check, "192.0.2.99")
            self.assertEqual(verdict.action, Verdict.TEMPFAIL)
        self.assertEqual(len(asked), 10)

    def test_the_cache_is_bounded_in_names_and_in_time(self):
        cache = AnswerCache(size=2, max_ttl=10, now=lambda: self.clock[0])
        for name in ("a.bl", "b.bl", "c.bl"):
            cache.put(name, ["127.0.0.2"], 86400)
        self.assertEqual(cache.get("a.bl"), (False, None))
        self.assertEqual(cache.get("c.bl"), (True, ["127.0.0.2"]))
        self.clock[0] += 11  # the TTL said a day; max_ttl says 10 s
        self.assertEqual(cache.get("c.bl"), (False, None))


class NameServerDown(unittest.TestCase):
    """A name server that never answers: the deadline ends the wait, on_error decides."""

    def setUp(self):
        self.dns = start_dns_server(self, RECORDS, zones=ZONES)
        self.dns.silent = True
        self.resolver = SharedResolver({"servers": [("127.0.0.1", self.dns.port)], "timeout": 1})
        self.addCleanup(self.resolver.close)
        # twisted.names keeps its own retry timer after our deadline: let it end.
        self.addCleanup(deferLater, reactor, 1.2, lambda: None)

    def run_with(self, on_error):
        context = BackendContext(None)
        context.dns = self.resolver
        check = mailplat_spam.dnsbl.from_config(section(deadline=0.3), context)
        session = CheckSession("192.0.2.1", policy="mx")
        session.helo = "client.remote.test"
        return run_stage([EnabledCheck("dnsbl", check, on_error=on_error)], "mail", session, "a@remote.test")

    @defer.inlineCallbacks
    def test_tempfail_by_default(self):
        verdict = yield self.run_with("tempfail")
        self.assertEqual((verdict.action, verdict.code, verdict.enhanced), (Verdict.TEMPFAIL, 451, "4.7.1"))

    @defer.inlineCallbacks
    def test_continue_lets_the_mail_through(self):
        verdict = yield self.run_with("continue")
        self.assertEqual(verdict.action, Verdict.ACCEPT)


class Names(unittest.TestCase):
    def test_reversed_addresses(self):
        self.assertEqual(reversed_address("192.0.2.1"), "1.2.0.192")
        self.assertEqual(reversed_address("2001:db8::1"), "1." + "0." * 23 + "8.b.d.0.1.0.0.2")
        self.assertEqual(reversed_address("::ffff:10.0.0.1"), "1.0.0.10")
        self.assertIsNone(reversed_address("not an address"))

    def test_domains(self):
        self.assertEqual(domain_of("a@Spammer.Test"), "spammer.test")
        self.assertIsNone(domain_of("[192.0.2.1]"))
        self.assertIsNone(domain_of("localhost"))
        self.assertIsNone(domain_of(""))


class BadConfig(unittest.TestCase):
    def build(self, **extra):
        context = BackendContext(None)
        context.dns = SharedResolver()
        return mailplat_spam.dnsbl.from_config(section(**extra), context)

    def test_refused_sections_name_the_key(self):
        for extra, key in [
            ({"block": []}, "block"),
            ({"block": [{"zone": "nodot"}]}, "block[0].zone"),
            ({"block": [{"zone": "bl.example", "query": ["mx"]}]}, "block[0].query"),
            ({"block": [{"zone": "bl.example", "returns": ["nonsense"]}]}, "block[0].returns"),
            ({"block": [{"zone": "bl.example", "wieght": 1}]}, "block[0].wieght"),
            ({"threshold": 0}, "threshold"),
        ]:
            with self.assertRaises(ValueError) as caught:
                self.build(**extra)
            self.assertIn(key, str(caught.exception))


class DNSBLConforms(CheckConformance, unittest.TestCase):
    """The kit's session comes from 192.0.2.1, which bl.example lists."""

    def setUp(self):
        self.dns = start_dns_server(self, RECORDS, zones=ZONES)
        self.resolver = SharedResolver({"servers": [("127.0.0.1", self.dns.port)], "timeout": 2})
        self.addCleanup(self.resolver.close)

    cases = [
        ("mail", ("a@remote.test",), Verdict.REJECT),
        ("rcpt", ("b@example.test",), Verdict.NEXT),
    ]

    def make_check(self):
        context = BackendContext(None)
        context.dns = self.resolver
        return mailplat_spam.dnsbl.from_config(section(), context)


CHECKS = """
[checks]
enabled = ["dnsbl"]

[checks.dnsbl]
block = [{ zone = "bl.test", returns = ["127.0.0.2"] }]
deadline = 3
"""


def send(port, sender="a@remote.test"):
    """MAIL and RCPT over SMTP: the (code, text) of MAIL, then of RCPT when MAIL passed."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.remote.test")
        code, text = client.mail(sender)
        if code != 250:
            return code, text.decode()
        code, text = client.rcpt("alice@example.test")
        return code, text.decode()


class OnTheWire(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp",), extra=CHECKS)
        yield self.server.start(users={"alice@example.test": "pw"})
        self.assertIn("test", NO_NAMES_ZONES)

    @defer.inlineCallbacks
    def test_a_listed_client_gets_550_at_mail(self):
        self.server.dns.add("1.0.0.127.bl.test", dns.Record_A("127.0.0.2"))
        code, text = yield in_thread(send, self.server.port("smtp"))
        self.assertEqual(code, 550, text)
        self.assertIn("5.7.1", text)
        self.assertIn("bl.test", text)

    @defer.inlineCallbacks
    def test_an_unlisted_client_is_served(self):
        code, text = yield in_thread(send, self.server.port("smtp"))
        self.assertEqual(code, 250, text)
        self.assertIn(("1.0.0.127.bl.test", "A"), self.server.dns.queries)
