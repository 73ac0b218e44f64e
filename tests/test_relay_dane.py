"""
DANE for SMTP (RFC 7672) on the relay, over real sockets: a DNS server in
the test publishes example.org's MX and `_25._tcp.mx.example.org` TLSA
records and marks the zone's answers authenticated (the AD bit a
validating resolver sets); the sender runs with `[dns] validating = true`.
The receiving MX speaks STARTTLS with a certificate the TLSA records do or
do not match.
"""

import hashlib
import os
import shutil
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.names import dns
from twisted.trial import unittest

from mailplat import config as configuration
from mailplat.delivery.relay import dane
from mailplat.dns import SharedResolver
from mailplat.testing.dns import Record_TLSA, start_dns_server, tlsa, txt
from tests.helpers import collect_log
from tests.test_relay_delivery import ALICE, BOB, DomainServer, messages_in, queue_of, scripted_server, wait_for
from tests.test_relay_mtasts import ENFORCE, POLICY_HOST, RelayedMessages, TestCA, start_policy_host

MX = "mx.example.org"
TLSA_NAME = f"_25._tcp.{MX}"


def _load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def spki_sha256(cert):
    return hashlib.sha256(
        cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).digest()


def cert_sha256(cert):
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


class DANECase(RelayedMessages, unittest.TestCase):
    """A (example.test, validating resolver) relays to example.org, whose MX is on loopback."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-dane-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = TestCA(self.dir)
        self.log = collect_log(self)

    def start_dns(self, records=(), authenticated=True, extra=None):
        zone = {
            "example.org": [dns.Record_MX(10, MX.encode())],
            MX: [dns.Record_A("127.0.0.1")],
            POLICY_HOST: [dns.Record_A("127.0.0.1")],
        }
        if records:
            zone[TLSA_NAME] = list(records)
        zone.update(extra or {})
        self.dns = start_dns_server(self, zone, authenticated={"example.org"} if authenticated else ())
        return self.dns

    def issue(self, *names, chain=False, ca=None):
        """A certificate for the receiver (from the test CA, or `ca`), with the CA after it when `chain`."""
        ca = ca or self.ca
        cert_path, key_path, _ = ca.issue(*(names or (MX,)))
        if chain:
            with open(ca.path, "rb") as f:
                ca_pem = f.read()
            with open(cert_path, "ab") as f:
                f.write(ca_pem)
        return cert_path, key_path

    @defer.inlineCallbacks
    def start_receiver(self, cert_path, key_path):
        extra = f'[tls]\ncertificate = "{cert_path}"\nkey = "{key_path}"\n'
        self.b = DomainServer(self, "example.org", listeners=("smtp",), extra=extra)
        yield self.b.start(users=BOB)
        return self.b.port("smtp")

    @defer.inlineCallbacks
    def start_sender(self, mx_port, validating=True, mta_sts=False, policy_port=443, **keys):
        keys = dict({"retry_first": 3600, "retry_initial": 3600}, **keys)
        lines = ["[relay]", f"mx_port = {mx_port}", f"mta_sts = {'true' if mta_sts else 'false'}",
                 f"mta_sts_port = {policy_port}", f'tls_trust_file = "{self.ca.path}"']
        lines += [f"{k} = {v}" for k, v in keys.items()]
        lines += ["[dns]", f'servers = ["{self.dns.address}"]', "timeout = 5",
                  f"validating = {'true' if validating else 'false'}"]
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra="\n".join(lines) + "\n")
        yield self.a.start(users=ALICE)
        return queue_of(self.a)

    @defer.inlineCallbacks
    def relay_one(self, cert, key, require_tls=False, **sender):
        """
        Start the receiver with `cert` and `key`, then the sender (with
        L{start_sender}'s keywords `sender`), and send one message: its queue id.
        """
        mx_port = yield self.start_receiver(cert, key)
        yield self.start_sender(mx_port, **sender)
        queue_id = yield self.send(require_tls=require_tls)
        return queue_id

    def unsign(self, qtype):
        """From now on the answers to `qtype` queries come without the AD bit (an unsigned zone)."""
        original = self.dns.factory._responseFromMessage

        def unsigned(message, *args, **kwargs):
            response = original(message, *args, **kwargs)
            if message.queries and message.queries[0].type == qtype:
                response.authenticData = 0
            return response

        self.dns.factory._responseFromMessage = unsigned

    @defer.inlineCallbacks
    def delivered(self, queue_id):
        [data] = yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        yield wait_for(lambda: queue_id not in queue_of(self.a).entries)
        return data

    def logged(self, text):
        return [line for line in self.log if text in line]


class DANEEndEntity(DANECase):
    @defer.inlineCallbacks
    def test_a_certificate_matching_3_1_1_is_delivered_over_tls(self):
        cert, key = self.issue()
        self.start_dns([tlsa(3, 1, 1, spki_sha256(_load(cert)))])
        queue_id = yield self.relay_one(cert, key)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)  # RFC 3848: B saw TLS
        self.assertTrue(self.logged("DANE: example.org: MX mx.example.org: 1 usable TLSA record(s) (3 1 1)"))
        self.assertTrue(self.logged("certificate matches a TLSA record"))
        # The sender asked for the AD bit (RFC 6840 5.7) and looked the TLSA up.
        self.assertIn((TLSA_NAME, 52), self.dns.queries)

    @defer.inlineCallbacks
    def test_a_full_certificate_record_comes_over_tcp_and_matches(self):
        # 3 0 0: the whole certificate in the record; the answer is too
        # long for UDP, so the lookup goes again over TCP (RFC 1035 4.2.1).
        cert, key = self.issue()
        der = _load(cert).public_bytes(serialization.Encoding.DER)
        self.start_dns([tlsa(3, 0, 0, der), tlsa(3, 0, 0, der[::-1])])
        queue_id = yield self.relay_one(cert, key)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)
        self.assertTrue(self.logged("2 usable TLSA record(s) (3 0 0)"))

    @defer.inlineCallbacks
    def test_an_end_entity_match_ignores_the_name_and_the_issuer(self):
        # RFC 7672 3.1.1: with DANE-EE, neither names nor the chain are checked.
        other_ca = TestCA(tempfile.mkdtemp(dir=self.dir), cn="nobody trusts this CA")
        cert, key = self.issue("not-the-mx.example.net", ca=other_ca)
        self.start_dns([tlsa(3, 0, 1, cert_sha256(_load(cert)))])
        queue_id = yield self.relay_one(cert, key)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)

    @defer.inlineCallbacks
    def test_a_mismatching_record_is_not_delivered_and_waits(self):
        cert, key = self.issue()
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)])
        mx_port = yield self.start_receiver(cert, key)
        queue = yield self.start_sender(mx_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])
        self.assertIn("4.7.5 DANE", recipient["error"])
        self.assertIn("the certificate matches none of the 1 usable TLSA record(s)", recipient["error"])
        # Still queued, to be retried; and never tried in clear.
        self.assertIn(queue_id, queue.entries)
        self.assertEqual(queue.pool.plaintext_until, {})
        self.assertTrue(self.logged("result=deferred"))

    @defer.inlineCallbacks
    def test_an_mx_host_that_does_not_match_is_skipped_for_the_next(self):
        cert, key = self.issue("mx.example.org", "mx2.example.org")
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)], extra={
            "example.org": [dns.Record_MX(10, MX.encode()), dns.Record_MX(20, b"mx2.example.org")],
            "mx2.example.org": [dns.Record_A("127.0.0.1")],
            "_25._tcp.mx2.example.org": [tlsa(3, 1, 1, spki_sha256(_load(cert)))],
        })
        queue_id = yield self.relay_one(cert, key)
        yield self.delivered(queue_id)
        [failed] = self.logged("result=deferred")
        self.assertIn("mx.example.org[127.0.0.1]", failed)
        self.assertIn("4.7.5 DANE", failed)
        [sent] = self.logged("result=sent")
        self.assertIn("via=mx2.example.org[127.0.0.1]", sent)

    @defer.inlineCallbacks
    def test_a_receiver_without_starttls_gets_nothing(self):
        factory, mx_port = scripted_server(self)  # offers no STARTTLS
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)])
        yield self.start_sender(mx_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(factory.messages, [])
        self.assertFalse([c for c in factory.sessions[0] if c.startswith(b"MAIL")])
        self.assertIn("4.7.5 DANE", recipient["error"])

    @defer.inlineCallbacks
    def test_a_broken_handshake_is_not_followed_by_plaintext(self):
        factory, mx_port = scripted_server(self, broken_tls=True)
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)])
        queue = yield self.start_sender(mx_port, retry_first=1, retry_initial=1)
        queue_id = yield self.send()
        yield self.wait_deferred(queue_id)
        yield wait_for(lambda: len(factory.sessions) >= 2 and not queue.entries[queue_id].busy)
        self.assertEqual(factory.messages, [])
        for session in factory.sessions:
            self.assertFalse([c for c in session if c.startswith(b"MAIL")])

    @defer.inlineCallbacks
    def test_the_failure_names_the_domains_tls_rpt_address(self):
        cert, key = self.issue()
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)],
                       extra={"_smtp._tls.example.org": [txt("v=TLSRPTv1; rua=mailto:tlsrpt@example.org")]})
        queue_id = yield self.relay_one(cert, key)
        recipient = yield self.wait_deferred(queue_id)
        self.assertIn("TLS-RPT: mailto:tlsrpt@example.org", recipient["error"])
        self.assertTrue([line for line in self.logged("result=deferred") if "TLS-RPT: mailto:tlsrpt@example.org" in line])


class DANEAlias(DANECase):
    """An MX host that is a secure CNAME alias (RFC 7672 2.2.3): the expanded name's TLSA records first."""

    TARGET = "real.example.org"

    def start_alias_dns(self, at_target=(), at_alias=()):
        extra = {MX: [dns.Record_CNAME(self.TARGET.encode())], self.TARGET: [dns.Record_A("127.0.0.1")]}
        if at_target:
            extra[f"_25._tcp.{self.TARGET}"] = list(at_target)
        return self.start_dns(list(at_alias), extra=extra)

    @defer.inlineCallbacks
    def test_the_expanded_names_records_are_used(self):
        cert, key = self.issue(self.TARGET)
        self.start_alias_dns(at_target=[tlsa(3, 1, 1, spki_sha256(_load(cert)))])
        queue_id = yield self.relay_one(cert, key)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)
        self.assertTrue(self.logged(f"DANE: {MX}: an alias of {self.TARGET}, whose TLSA records are used"))
        self.assertTrue(self.logged(f"DANE: example.org: MX {MX}: 1 usable TLSA record(s) (3 1 1)"))
        self.assertIn((f"_25._tcp.{self.TARGET}", 52), self.dns.queries)

    @defer.inlineCallbacks
    def test_the_expanded_names_records_win_over_the_alias_records(self):
        # A mismatching record at the expanded name is not bypassed by a
        # matching one at the alias: the message waits.
        cert, key = self.issue()
        self.start_alias_dns(at_target=[tlsa(3, 1, 1, b"\x01" * 32)],
                             at_alias=[tlsa(3, 1, 1, spki_sha256(_load(cert)))])
        mx_port = yield self.start_receiver(cert, key)
        queue = yield self.start_sender(mx_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])
        self.assertIn("the certificate matches none of the 1 usable TLSA record(s)", recipient["error"])
        self.assertIn(queue_id, queue.entries)

    @defer.inlineCallbacks
    def test_without_records_at_the_expanded_name_the_alias_records_hold(self):
        cert, key = self.issue()
        self.start_alias_dns(at_alias=[tlsa(3, 1, 1, b"\x01" * 32)])
        mx_port = yield self.start_receiver(cert, key)
        yield self.start_sender(mx_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertIn("4.7.5 DANE", recipient["error"])
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])

    def test_the_expansion_follows_a_chain_and_stops_at_a_loop(self):
        def answer(*pairs):
            message = dns.Message()
            message.answers = [dns.RRHeader(a, dns.CNAME, payload=dns.Record_CNAME(b)) for a, b in pairs]
            return _Answer(message)

        self.assertEqual(dane.cname_target(answer(("a.test", "b.test"), ("b.test", "c.test")), "a.test"), "c.test")
        self.assertIsNone(dane.cname_target(answer(), "a.test"))
        self.assertEqual(dane.cname_target(answer(("a.test", "b.test"), ("b.test", "a.test")), "a.test"), "a.test")


class _Answer:
    def __init__(self, message):
        self.message = message


class DANEInsecure(DANECase):
    """Without an authenticated answer, DANE does not apply: opportunistic TLS as before."""

    @defer.inlineCallbacks
    def test_no_ad_bit_delivers_opportunistically(self):
        cert, key = self.issue()
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)], authenticated=False)
        queue_id = yield self.relay_one(cert, key)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)
        self.assertTrue(self.logged("the MX answer is not DNSSEC-authenticated"))

    @defer.inlineCallbacks
    def test_an_unauthenticated_tlsa_answer_is_ignored(self):
        cert, key = self.issue()
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)])
        # The MX answer is authenticated, the TLSA answer is not (a child
        # zone that is not signed).
        self.unsign(52)
        queue_id = yield self.relay_one(cert, key)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)
        self.assertTrue(self.logged("no authenticated TLSA records; no DANE"))

    @defer.inlineCallbacks
    def test_unauthenticated_address_records_mean_no_dane(self):
        # RFC 7672 2.2.2: the MX host's A records come from an unsigned zone.
        cert, key = self.issue()
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)])
        self.unsign(dns.A)
        queue_id = yield self.relay_one(cert, key)
        yield self.delivered(queue_id)
        self.assertTrue(self.logged("the address records are not authenticated; no DANE"))

    @defer.inlineCallbacks
    def test_validating_false_never_believes_the_ad_bit(self):
        cert, key = self.issue()
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)])
        queue_id = yield self.relay_one(cert, key, validating=False)
        yield self.delivered(queue_id)
        self.assertNotIn((TLSA_NAME, 52), self.dns.queries)

    @defer.inlineCallbacks
    def test_no_tlsa_records_delivers_opportunistically_even_without_starttls(self):
        factory, mx_port = scripted_server(self)
        self.start_dns()
        yield self.start_sender(mx_port)
        yield self.send()
        yield wait_for(lambda: factory.messages)
        self.assertIn((TLSA_NAME, 52), self.dns.queries)


class DANETrustAnchor(DANECase):
    @defer.inlineCallbacks
    def test_usage_2_delivers_with_a_chain_up_to_the_matched_ca(self):
        cert, key = self.issue(chain=True)
        self.start_dns([tlsa(2, 0, 1, cert_sha256(self.ca.cert))])
        queue_id = yield self.relay_one(cert, key)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)

    @defer.inlineCallbacks
    def test_usage_2_checks_the_name(self):
        # RFC 7672 3.2.2: under DANE-TA the certificate must name the MX host (or the domain).
        cert, key = self.issue("mail.example.net", chain=True)
        self.start_dns([tlsa(2, 1, 1, spki_sha256(self.ca.cert))])
        queue_id = yield self.relay_one(cert, key)
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])
        self.assertIn("mail.example.net", recipient["error"])

    @defer.inlineCallbacks
    def test_usage_2_needs_the_ca_in_the_chain(self):
        cert, key = self.issue(chain=False)
        self.start_dns([tlsa(2, 0, 1, cert_sha256(self.ca.cert))])
        queue_id = yield self.relay_one(cert, key)
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])
        self.assertIn("4.7.5 DANE", recipient["error"])


class DANEBadRecords(DANECase):
    """RFC 7672 2.2: unusable records leave STARTTLS required, the certificate unchecked; never a traceback."""

    MALFORMED = [
        Record_TLSA(raw=b"\x03\x01"),  # shorter than its fixed fields
        tlsa(3, 1, 1, b"\x01" * 5),  # a SHA-256 digest of 5 octets
        tlsa(1, 1, 1, b"\x01" * 32),  # PKIX-EE: unusable for SMTP (RFC 7672 3.1.3)
        tlsa(0, 0, 1, b"\x01" * 32),  # PKIX-TA
        tlsa(3, 7, 1, b"\x01" * 32),  # unknown selector
        tlsa(3, 1, 9, b"\x01" * 32),  # unknown matching type
    ]

    @defer.inlineCallbacks
    def test_only_unusable_records_still_require_starttls(self):
        factory, mx_port = scripted_server(self)
        self.start_dns(self.MALFORMED)
        yield self.start_sender(mx_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(factory.messages, [])
        self.assertIn("4.7.5 DANE", recipient["error"])
        self.assertTrue(self.logged("6 TLSA record(s), none usable"))
        self.assertTrue(self.logged("malformed (RDATA of 2 octets)"))
        self.flushLoggedErrors()
        self.assertFalse(self.logged("Traceback"))

    @defer.inlineCallbacks
    def test_only_unusable_records_deliver_over_unchecked_tls(self):
        cert, key = self.issue("anything.example.net")
        self.start_dns(self.MALFORMED)
        queue_id = yield self.relay_one(cert, key)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)

    @defer.inlineCallbacks
    def test_a_usable_record_among_malformed_ones_is_used(self):
        cert, key = self.issue()
        self.start_dns(self.MALFORMED + [tlsa(3, 1, 1, spki_sha256(_load(cert)))])
        queue_id = yield self.relay_one(cert, key)
        yield self.delivered(queue_id)

    @defer.inlineCallbacks
    def test_servfail_on_the_tlsa_lookup_defers_without_connecting(self):
        factory, mx_port = scripted_server(self)
        self.start_dns([tlsa(3, 1, 1, b"\x01" * 32)])
        self.dns.servfail.add(TLSA_NAME)
        yield self.start_sender(mx_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(factory.sessions, [])
        self.assertIn("4.7.5", recipient["error"])
        self.assertIn("TLSA lookup of _25._tcp.mx.example.org failed", recipient["error"])


class DANEAndMTASTS(DANECase):
    @defer.inlineCallbacks
    def test_dane_takes_precedence_over_an_enforce_policy(self):
        # RFC 8461 2: the MX's certificate is from a CA the sender does not
        # trust (MTA-STS would refuse it) but matches its TLSA record.
        other_ca = TestCA(tempfile.mkdtemp(dir=self.dir), cn="nobody trusts this CA")
        cert, key = self.issue(MX, ca=other_ca)
        self.start_dns([tlsa(3, 1, 1, spki_sha256(_load(cert)))],
                       extra={"_mta-sts.example.org": [txt("v=STSv1; id=1")]})
        policy, policy_port = start_policy_host(self, self.ca, ENFORCE)
        queue_id = yield self.relay_one(cert, key, mta_sts=True, policy_port=policy_port)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)


    @defer.inlineCallbacks
    def test_an_enforce_failure_names_the_tls_rpt_address(self):
        factory, mx_port = scripted_server(self)  # no STARTTLS; no DANE (unsigned zone)
        self.start_dns(authenticated=False, extra={
            "_mta-sts.example.org": [txt("v=STSv1; id=1")],
            "_smtp._tls.example.org": [txt("v=TLSRPTv1; rua=https://reports.example.org/tlsrpt")],
        })
        _, policy_port = start_policy_host(self, self.ca, ENFORCE)
        yield self.start_sender(mx_port, mta_sts=True, policy_port=policy_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(factory.messages, [])
        self.assertIn("4.7.5 MTA-STS", recipient["error"])
        self.assertIn("(TLS-RPT: https://reports.example.org/tlsrpt)", recipient["error"])


class DANEAndREQUIRETLS(DANECase):
    @defer.inlineCallbacks
    def test_a_dane_host_is_a_verified_path_for_requiretls(self):
        # RFC 8689 4.2: DANE authenticates the next hop as MTA-STS would.
        cert, key = self.issue()
        self.start_dns([tlsa(3, 1, 1, spki_sha256(_load(cert)))])
        queue_id = yield self.relay_one(cert, key, require_tls=True)
        data = yield self.delivered(queue_id)
        self.assertIn(b"with ESMTPS", data)

    @defer.inlineCallbacks
    def test_unusable_records_are_no_verified_path(self):
        cert, key = self.issue()
        self.start_dns([tlsa(1, 1, 1, spki_sha256(_load(cert)))])  # PKIX-EE: unusable
        mx_port = yield self.start_receiver(cert, key)
        queue = yield self.start_sender(mx_port)
        queue_id = yield self.send(require_tls=True)
        yield wait_for(lambda: queue_id not in queue.entries)
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"))
        self.assertIn(b"5.7.30", dsn)


# --- the parts on their own ---------------------------------------------------------------


class ParseTLSA(unittest.TestCase):
    def test_usable_records(self):
        for usage, selector, matching, size in ((3, 1, 1, 32), (3, 0, 2, 64), (2, 1, 0, 91), (2, 0, 1, 32)):
            record, reason = dane.parse_tlsa(bytes([usage, selector, matching]) + b"\x00" * size)
            self.assertIsNone(reason)
            self.assertEqual((record.usage, record.selector, record.matching_type), (usage, selector, matching))

    def test_unusable_records_say_why(self):
        cases = {
            b"": "malformed", b"\x03\x01\x01": "malformed", b"\x01\x01\x01" + b"\x00" * 32: "PKIX-EE",
            b"\x00\x00\x01" + b"\x00" * 32: "PKIX-TA", b"\x03\x02\x01" + b"\x00" * 32: "selector",
            b"\x03\x01\x03" + b"\x00" * 32: "matching type", b"\x03\x01\x01" + b"\x00" * 31: "31 octets",
            b"\x03\x01\x02" + b"\x00" * 32: "not 64",
        }
        for rdata, why in cases.items():
            record, reason = dane.parse_tlsa(rdata)
            self.assertIsNone(record)
            self.assertIn(why, reason)

    def test_not_bytes_is_malformed(self):
        self.assertIsNone(dane.parse_tlsa(None)[0])


class CheckChain(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-dane-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = TestCA(self.dir)
        cert_path, _, _ = self.ca.issue(MX, "*.example.org")
        self.leaf = _load(cert_path)

    def policy(self, *records):
        return dane.TLSAPolicy(MX, [dane.parse_tlsa(bytes([u, s, m]) + d)[0] for u, s, m, d in records],
                               names=[MX, "example.org"])

    def test_end_entity_full_certificate_and_sha512(self):
        der = self.leaf.public_bytes(serialization.Encoding.DER)
        self.assertIsNone(self.policy((3, 0, 0, der)).check([self.leaf]))
        self.assertIsNone(self.policy((3, 0, 2, hashlib.sha512(der).digest())).check([self.leaf]))

    def test_no_certificate_does_not_match(self):
        self.assertIn("no certificate", self.policy((3, 1, 1, spki_sha256(self.leaf))).check([]))

    def test_trust_anchor_with_a_wildcard_name(self):
        cert_path, _, _ = self.ca.issue("*.example.org")
        leaf = _load(cert_path)
        self.assertIsNone(self.policy((2, 1, 1, spki_sha256(self.ca.cert))).check([leaf, self.ca.cert]))

    def test_trust_anchor_that_did_not_sign_the_leaf(self):
        other = TestCA(tempfile.mkdtemp(dir=self.dir), cn="other")
        reason = self.policy((2, 0, 1, cert_sha256(other.cert))).check([self.leaf, other.cert])
        self.assertIn("does not verify", reason)

    def test_the_leaf_is_not_a_trust_anchor(self):
        reason = self.policy((2, 0, 1, cert_sha256(self.leaf))).check([self.leaf])
        self.assertIn("matches none", reason)

    def test_a_policy_without_usable_records_accepts_any_chain(self):
        self.assertIsNone(dane.TLSAPolicy(MX, [], ["PKIX-EE"]).check([self.leaf]))


class ValidatingResolver(unittest.TestCase):
    """`[dns] validating`: the AD bit is asked for and believed only when set."""

    def start(self, authenticated=True):
        self.dns = start_dns_server(
            self, {"example.org": [dns.Record_MX(10, MX.encode())], TLSA_NAME: [tlsa(3, 1, 1, b"\x01" * 32)]},
            authenticated={"example.org"} if authenticated else ())

    def resolver(self, validating):
        resolver = SharedResolver({"servers": [("127.0.0.1", self.dns.port)], "timeout": 2, "validating": validating})
        self.addCleanup(resolver.close)
        return resolver

    @defer.inlineCallbacks
    def test_an_authenticated_answer_with_validating_true(self):
        self.start()
        answer = yield self.resolver(True).lookup_secure("example.org", dns.MX)
        self.assertTrue(answer.authenticated)
        self.assertEqual([str(a.payload.name) for a in answer.records], [MX])

    @defer.inlineCallbacks
    def test_validating_false_never_says_authenticated(self):
        self.start()
        answer = yield self.resolver(False).lookup_secure("example.org", dns.MX)
        self.assertFalse(answer.authenticated)

    @defer.inlineCallbacks
    def test_an_unsigned_zone_is_not_authenticated(self):
        self.start(authenticated=False)
        answer = yield self.resolver(True).lookup_secure("example.org", dns.MX)
        self.assertFalse(answer.authenticated)

    @defer.inlineCallbacks
    def test_tlsa_records_come_back_whole(self):
        self.start()
        answer = yield self.resolver(True).lookup_secure(TLSA_NAME, dane.TLSA)
        self.assertEqual([a.payload.data for a in answer.records], [b"\x03\x01\x01" + b"\x01" * 32])

    @defer.inlineCallbacks
    def test_an_authenticated_nxdomain_says_so(self):
        self.start()
        from twisted.names import error

        with self.assertRaises(error.DNSNameError) as caught:
            yield self.resolver(True).lookup_secure("nothing.example.org", dns.MX)
        self.assertTrue(caught.exception.authenticated)

    def test_the_config_key(self):
        from tests.test_dns_config import BASE

        directory = tempfile.mkdtemp(prefix="mailplat-dane-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "mailplat.toml")
        with open(path, "w") as f:
            f.write(BASE + "[dns]\nvalidating = true\n")
        self.assertTrue(configuration.load(path, cwd=directory).dns["validating"])
        with open(path, "w") as f:
            f.write(BASE + '[dns]\nvalidating = "yes"\n')
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(path, cwd=directory)
        self.assertIn("dns.validating", str(caught.exception))
