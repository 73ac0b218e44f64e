"""
TLS-RPT records (RFC 8460 3): the parser, the choice among a name's TXT
records, and the lookup through a resolver (a DNS server in the test).
"""

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.auth import records, tlsrpt
from mailplat.dns import SharedResolver
from mailplat.testing.dns import start_dns_server, txt


class ParseRecord(unittest.TestCase):
    def test_mailto_and_https(self):
        record = tlsrpt.parse_record("v=TLSRPTv1; rua=mailto:tlsrpt@example.org,https://reports.example.org/v1/")
        self.assertEqual(record.rua, ["mailto:tlsrpt@example.org", "https://reports.example.org/v1/"])
        self.assertEqual(str(record), "mailto:tlsrpt@example.org,https://reports.example.org/v1/")

    def test_bytes_a_final_semicolon_and_extensions(self):
        record = tlsrpt.parse_record(b"v=TLSRPTv1;rua=mailto:r@example.org; ext-1=value;")
        self.assertEqual(record.rua, ["mailto:r@example.org"])
        self.assertEqual(record.extensions, {"ext-1": "value"})

    def test_errors_name_the_problem(self):
        cases = {
            "v=TLSRPTv2; rua=mailto:r@example.org": "does not start with v=TLSRPTv1",
            "rua=mailto:r@example.org; v=TLSRPTv1": "does not start",
            "v=TLSRPTv1": "no rua=",
            "v=TLSRPTv1; rua=mailto:a@example.org; rua=mailto:b@example.org": "more than one rua=",
            "v=TLSRPTv1; rua=ftp://example.org/": "mailto: or https:",
            "v=TLSRPTv1; rua=mailto:nobody": "not a mail address",
            "v=TLSRPTv1; rua=https:///path": "no host",
            "v=TLSRPTv1; rua=": "not a URI",
            "v=TLSRPTv1; rua=mailto:r@example.org; garbage": "not a name=value field",
            "v=TLSRPTv1; rua=mailto:r@example.org; b@d=x": "not a valid extension",
            "v=TLSRPTv1; rua=mailto:r@example.org" + "x" * 5000: "at most",
        }
        for text, why in cases.items():
            with self.assertRaises(tlsrpt.TLSRPTError) as caught:
                tlsrpt.parse_record(text)
            self.assertIn(why, str(caught.exception), text)


class Select(unittest.TestCase):
    def test_other_records_are_ignored(self):
        record, problem = tlsrpt.select([b"v=spf1 -all", b"v=TLSRPTv1; rua=mailto:r@example.org"])
        self.assertIsNone(problem)
        self.assertEqual(record.rua, ["mailto:r@example.org"])

    def test_two_records_mean_none(self):
        record, problem = tlsrpt.select(["v=TLSRPTv1; rua=mailto:a@example.org", "v=TLSRPTv1; rua=mailto:b@example.org"])
        self.assertIsNone(record)
        self.assertIn("2 TLS-RPT records", problem)

    def test_none_and_a_bad_one(self):
        self.assertEqual(tlsrpt.select([]), (None, "no TLS-RPT record"))
        self.assertEqual(tlsrpt.select(["v=TLSRPTv10; rua=mailto:a@example.org"]), (None, "no TLS-RPT record"))
        record, problem = tlsrpt.select(["v=TLSRPTv1; rua=gopher://x"])
        self.assertIsNone(record)
        self.assertIn("mailto: or https:", problem)


class Lookup(unittest.TestCase):
    def resolver(self, records):
        server = start_dns_server(self, records, zones=["example.org"])
        resolver = SharedResolver({"servers": [("127.0.0.1", server.port)], "timeout": 2})
        self.addCleanup(resolver.close)
        return resolver

    @defer.inlineCallbacks
    def test_a_published_record(self):
        resolver = self.resolver({"_smtp._tls.example.org": [txt("v=TLSRPTv1; rua=mailto:tlsrpt@example.org")]})
        record = yield tlsrpt.lookup(resolver, "example.org")
        self.assertEqual(record.rua, ["mailto:tlsrpt@example.org"])

    @defer.inlineCallbacks
    def test_no_record_and_a_malformed_one_are_none_never_a_failure(self):
        resolver = self.resolver({"_smtp._tls.example.org": [txt("v=TLSRPTv1; rua=nonsense")], "example.org": []})
        self.assertIsNone((yield tlsrpt.lookup(resolver, "example.org")))
        self.assertIsNone((yield tlsrpt.lookup(resolver, "nowhere.example.org")))


class FakeLookups:
    """The TXT answers dns-check gets (mailplat.auth.lookups.Lookups' txt)."""

    def __init__(self, texts):
        self.texts = [t.encode() for t in texts]

    async def txt(self, name):
        return self.texts


class DNSCheck(unittest.TestCase):
    """`mailplat dns-check`'s TLS-RPT line checks the record with the parser."""

    record = records.Record("TLS-RPT", "_smtp._tls.example.org", "TXT", "v=TLSRPTv1; rua=mailto:postmaster@example.org",
                            required=False)

    def check(self, *texts):
        return defer.ensureDeferred(records._check_tls_rpt(FakeLookups(texts), None, self.record))

    @defer.inlineCallbacks
    def test_a_good_record_is_ok_and_says_where_reports_go(self):
        finding = yield self.check("v=spf1 -all", "v=TLSRPTv1; rua=mailto:tlsrpt@example.org,https://r.example.org/")
        self.assertEqual(finding.status, records.OK)
        self.assertIn("reports to mailto:tlsrpt@example.org,https://r.example.org/", finding.detail)

    @defer.inlineCallbacks
    def test_a_bad_uri_is_wrong_and_named(self):
        finding = yield self.check("v=TLSRPTv1; rua=ftp://example.org/")
        self.assertEqual(finding.status, records.WRONG)
        self.assertIn("the scheme must be mailto: or https:", finding.detail)

    @defer.inlineCallbacks
    def test_two_records_are_wrong(self):
        finding = yield self.check("v=TLSRPTv1; rua=mailto:a@example.org", "v=TLSRPTv1; rua=mailto:b@example.org")
        self.assertEqual(finding.status, records.WRONG)
        self.assertIn("2 TLS-RPT records", finding.detail)

    @defer.inlineCallbacks
    def test_none_is_missing_and_optional(self):
        finding = yield self.check("v=spf1 -all")
        self.assertEqual(finding.status, records.MISSING)
        self.assertIn("(optional)", finding.detail)
