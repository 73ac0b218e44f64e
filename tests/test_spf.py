"""
SPF (RFC 7208) as mailplat.auth.spf evaluates it: records served by a real
in-test name server (UDP on loopback), asked through the server's resolver
(mailplat.dns), one result per RFC case.
"""

from twisted.internet import defer
from twisted.names import dns
from twisted.trial import unittest

from mailplat.auth import spf
from mailplat.auth.lookups import Lookups
from mailplat.dns import SharedResolver
from mailplat.testing.dns import start_dns_server, txt

CLIENT = "192.0.2.10"
CLIENT6 = "2001:db8::10"

RECORDS = {
    "pass.example": [txt("v=spf1 ip4:192.0.2.0/24 -all")],
    "fail.example": [txt("v=spf1 -all exp=explain.fail.example")],
    "explain.fail.example": [txt("%{i} may not send for %{d} (from %{l})")],
    "softfail.example": [txt("v=spf1 ~all")],
    "neutral.example": [txt("v=spf1 ?all")],
    "nomatch.example": [txt("v=spf1 ip4:198.51.100.1")],
    "other.example": [txt("some other text")],
    "syntax.example": [txt("v=spf1 ip4:192.0.2.300 -all")],
    "unknown.example": [txt("v=spf1 frobnicate -all")],
    "twice.example": [txt("v=spf1 -all"), txt("v=spf1 +all")],
    "include.example": [txt("v=spf1 include:pass.example -all")],
    "include-fail.example": [txt("v=spf1 include:fail.example ?all")],
    "include-none.example": [txt("v=spf1 include:nothing.example -all")],
    "redirect.example": [txt("v=spf1 redirect=pass.example")],
    "redirect-none.example": [txt("v=spf1 redirect=nothing.example")],
    "a.example": [txt("v=spf1 a:host.a.example/24 -all")],
    "host.a.example": [dns.Record_A("192.0.2.200")],
    "mx.example": [txt("v=spf1 mx -all"), dns.Record_MX(10, b"mail.mx.example")],
    "mail.mx.example": [dns.Record_A("192.0.2.10")],
    "ip6.example": [txt("v=spf1 ip6:2001:db8::/32 -all")],
    "macro.example": [txt("v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all")],
    # 10.2.0.192 reversed, "alice-x" -> last label of reversed split on - : "alice"
    "10.2.0.192.alice._spf.macro.example": [dns.Record_A("127.0.0.2")],
    "voids.example": [txt("v=spf1 a:n1.voids.example a:n2.voids.example a:n3.voids.example -all")],
    "ptr.example": [txt("v=spf1 ptr -all")],
    "host.ptr.example": [dns.Record_A("192.0.2.10")],
}
# A record far larger than a datagram: answered over TCP, still a verdict.
RECORDS["huge.example"] = [txt("v=spf1 " + "ip4:198.51.100.1 " * 2500 + "-all")]
RECORDS["garbage.example"] = [txt(b"v=spf1 \xff\x00\r\n -all")]
# Eleven DNS mechanisms in a chain of includes: the 11th lookup is a permerror.
for n in range(12):
    RECORDS[f"l{n}.loop.example"] = [txt(f"v=spf1 include:l{n + 1}.loop.example -all")]
RECORDS["l12.loop.example"] = [txt("v=spf1 +all")]
# The address records a ptr mechanism validates.
PTR_NAME = "10.2.0.192.in-addr.arpa"

ZONES = [
    "pass.example", "fail.example", "softfail.example", "neutral.example", "nomatch.example",
    "other.example", "syntax.example", "unknown.example", "twice.example", "include.example",
    "include-fail.example", "include-none.example", "redirect.example", "redirect-none.example",
    "a.example", "mx.example", "ip6.example", "macro.example", "voids.example", "loop.example",
    "ptr.example", "nothing.example", "in-addr.arpa", "huge.example", "garbage.example",
]


class SPFTests(unittest.TestCase):
    def setUp(self):
        records = dict(RECORDS)
        records[PTR_NAME] = [dns.Record_PTR(b"host.ptr.example")]
        self.dns = start_dns_server(self, records, zones=ZONES)
        self.resolver = SharedResolver({"servers": [("127.0.0.1", self.dns.port)], "timeout": 2})
        self.addCleanup(self.resolver.close)

    @defer.inlineCallbacks
    def check(self, domain, ip=CLIENT, local="alice-x"):
        result = yield spf.check(Lookups(self.resolver, deadline=10), ip, f"{local}@{domain}", "helo.example")
        return result

    @defer.inlineCallbacks
    def assertResult(self, domain, expected, ip=CLIENT):
        result = yield self.check(domain, ip)
        self.assertEqual(result.result, expected, result.reason)
        return result

    def test_pass(self):
        return self.assertResult("pass.example", "pass")

    def test_fail_with_explanation(self):
        d = self.assertResult("fail.example", "fail")
        d.addCallback(lambda r: self.assertEqual(r.explanation, "192.0.2.10 may not send for fail.example (from alice-x)"))
        return d

    def test_softfail(self):
        return self.assertResult("softfail.example", "softfail")

    def test_neutral(self):
        return self.assertResult("neutral.example", "neutral")

    def test_no_mechanism_matched_is_neutral(self):
        return self.assertResult("nomatch.example", "neutral")

    def test_no_spf_record_is_none(self):
        return self.assertResult("other.example", "none")

    def test_no_such_domain_is_none(self):
        return self.assertResult("nothing.example", "none")

    def test_syntax_error_is_permerror(self):
        return self.assertResult("syntax.example", "permerror")

    def test_unknown_mechanism_is_permerror(self):
        return self.assertResult("unknown.example", "permerror")

    def test_two_records_is_permerror(self):
        return self.assertResult("twice.example", "permerror")

    def test_include_pass(self):
        return self.assertResult("include.example", "pass")

    def test_include_fail_does_not_match(self):
        return self.assertResult("include-fail.example", "neutral")

    def test_include_of_no_record_is_permerror(self):
        return self.assertResult("include-none.example", "permerror")

    def test_redirect(self):
        return self.assertResult("redirect.example", "pass")

    def test_redirect_to_no_record_is_permerror(self):
        return self.assertResult("redirect-none.example", "permerror")

    def test_a_with_prefix_length(self):
        return self.assertResult("a.example", "pass")

    def test_mx(self):
        return self.assertResult("mx.example", "pass")

    def test_mx_other_address_fails(self):
        return self.assertResult("mx.example", "fail", ip="192.0.2.11")

    def test_ip6(self):
        return self.assertResult("ip6.example", "pass", ip=CLIENT6)

    def test_ip4_mechanism_does_not_match_ipv6_client(self):
        return self.assertResult("pass.example", "fail", ip=CLIENT6)

    def test_ipv4_mapped_client_is_ipv4(self):
        return self.assertResult("pass.example", "pass", ip="::ffff:192.0.2.10")

    def test_macros_in_exists(self):
        return self.assertResult("macro.example", "pass")

    def test_more_than_ten_lookups_is_permerror(self):
        d = self.assertResult("l0.loop.example", "permerror")
        d.addCallback(lambda r: self.assertIn("10 DNS lookups", r.reason))
        return d

    def test_more_than_two_void_lookups_is_permerror(self):
        d = self.assertResult("voids.example", "permerror")
        d.addCallback(lambda r: self.assertIn("void", r.reason))
        return d

    def test_huge_record(self):
        return self.assertResult("huge.example", "fail")

    def test_binary_garbage_is_permerror(self):
        return self.assertResult("garbage.example", "permerror")

    def test_ptr(self):
        return self.assertResult("ptr.example", "pass")

    @defer.inlineCallbacks
    def test_name_server_that_does_not_answer_is_temperror(self):
        self.dns.silent = True
        resolver = SharedResolver({"servers": [("127.0.0.1", self.dns.port)], "timeout": 1})
        self.addCleanup(resolver.close)
        result = yield spf.check(Lookups(resolver, deadline=5), CLIENT, "a@pass.example", "helo.example")
        self.assertEqual(result.result, "temperror")

    @defer.inlineCallbacks
    def test_null_sender_checks_the_helo_name(self):
        result = yield spf.check(Lookups(self.resolver), CLIENT, "", "pass.example")
        self.assertEqual(result.result, "pass")

    @defer.inlineCallbacks
    def test_lookups_are_not_repeated(self):
        # include.example includes pass.example; asking twice costs one query per name.
        lookups = Lookups(self.resolver)
        yield spf.check(lookups, CLIENT, "a@include.example", "h.example")
        yield spf.check(lookups, CLIENT, "a@include.example", "h.example")
        self.assertEqual(lookups.queries, 2)


class ParseTests(unittest.TestCase):
    def test_terms(self):
        directives, modifiers = spf.parse(b"v=spf1 -ip4:10.0.0.0/8 ~a:x.example/24//64 mx ?all exp=e.%{d}")
        self.assertEqual([d[:2] for d in directives], [("fail", "ip4"), ("softfail", "a"), ("pass", "mx"), ("neutral", "all")])
        self.assertEqual(directives[1][3:], (24, 64))
        self.assertEqual(modifiers, {"exp": "e.%{d}"})

    def test_bad_records(self):
        for record in (
            b"v=spf1 ip4:1.2.3.4/33",
            b"v=spf1 a:x.example/024",
            b"v=spf1 include",
            b"v=spf1 exists:%{z}.example",
            b"v=spf1 include:%{c}.example",
            b"v=spf1 redirect=a.example redirect=b.example",
            b"v=spf1 all:x",
            b"v=spf1 include:no-dot",
            b"v=spf1 exists:%{d0}.example",
            b"v=spf1 ip6:zz::1",
            "v=spf1 a:é.example".encode(),
        ):
            self.assertRaises(spf.PermError, spf.parse, record)

    def test_spf_records_are_told_apart(self):
        self.assertEqual(spf.spf_records([b"v=spf1", b"v=spf10 -all", b"V=SPF1 -all", b"x"]), [b"v=spf1", b"V=SPF1 -all"])
