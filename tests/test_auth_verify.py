"""
Inbound SPF, DKIM and DMARC on the MX port (mailplat.auth.verify): a real
server (tests/helpers.py) whose `[dns] servers` is an in-test name server,
messages sent with smtplib from 127.0.0.1 and signed in the test with
dkimpy, the Authentication-Results field read back from the maildir.
"""

import base64
import glob
import os
import smtplib
import time

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mailplat import config as configuration
from mailplat.auth import results
from mailplat.testing.dns import start_dns_server, txt
from tests.helpers import MailServer, in_thread
from tests.test_smtp import stored

HOST = "mail.example.test"
RCPT = "bob@example.test"

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
PUBLIC = base64.b64encode(_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()

SPF_HERE = "v=spf1 ip4:127.0.0.0/8 -all"
RECORDS = {
    "good.example": [txt(SPF_HERE)],
    "mail.good.example": [txt(SPF_HERE)],
    "client.good.example": [txt(SPF_HERE)],
    "_dmarc.good.example": [txt("v=DMARC1; p=reject")],
    "sel._domainkey.good.example": [txt(f"v=DKIM1; k=rsa; p={PUBLIC}")],
    "revoked._domainkey.good.example": [txt("v=DKIM1; k=rsa; p=")],
    "broken._domainkey.good.example": [txt("v=DKIM1; k=rsa; p=!!!not-base64")],
    "arc._domainkey.fwd.example": [txt(f"v=DKIM1; k=rsa; p={PUBLIC}")],
    "other.example": [txt(SPF_HERE)],
    "_dmarc.other.example": [txt("v=DMARC1; p=bogus")],
    "strict.example": [txt(SPF_HERE)],
    "mail.strict.example": [txt(SPF_HERE)],
    "_dmarc.strict.example": [txt("v=DMARC1; p=reject; aspf=s; adkim=s")],
    "quarantine.example": [txt("v=spf1 -all")],
    "_dmarc.quarantine.example": [txt("v=DMARC1; p=quarantine")],
    "half.example": [txt("v=spf1 -all")],
    "_dmarc.half.example": [txt("v=DMARC1; p=reject; pct=50")],
    "parent.example": [txt("v=spf1 -all")],
    "_dmarc.parent.example": [txt("v=DMARC1; p=none; sp=reject")],
    "nodmarc.example": [txt("v=spf1 -all")],
}
ZONES = ["fwd.example", "good.example", "other.example", "strict.example", "quarantine.example", "half.example", "parent.example", "nodmarc.example"]


def message(from_addr, subject="hello", body=b"Hello, Bob.\r\n", extra=b""):
    return (
        extra
        + f"From: {from_addr}\r\nTo: {RCPT}\r\nSubject: {subject}\r\n".encode()
        + b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <t@example>\r\n\r\n"
        + body
    )


def sign(data, selector=b"sel", domain=b"good.example", **options):
    return dkim.sign(data, selector, domain, PRIVATE, include_headers=[b"from", b"to", b"subject"], **options) + data


def send(port, data, sender="alice@good.example", timeout=30):
    """Blocking: one message to the MX; the (code, text) of the end of data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
        s.ehlo("client.good.example")
        s.mail(sender)
        s.rcpt(RCPT)
        code, text = s.data(data)
        return code, text.decode()


def auth_results(stored_message):
    """The values of the Authentication-Results fields, unfolded, in order."""
    fields, current = [], None
    for line in stored_message.split(b"\n\n")[0].split(b"\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            fields[-1] += b" " + line.strip()
        elif line.lower().startswith(b"authentication-results:"):
            fields.append(line.split(b":", 1)[1].strip())
            current = True
        else:
            current = None
    return [f.decode() for f in fields]


class VerifyCase(unittest.TestCase):
    authentication = ""
    dns_timeout = 2

    @defer.inlineCallbacks
    def setUp(self):
        self.dns = start_dns_server(self, RECORDS, zones=ZONES)
        yield self.start_server(f'servers = ["{self.dns.address}"]')

    @defer.inlineCallbacks
    def start_server(self, servers, authentication=None):
        extra = f"[dns]\n{servers}\ntimeout = {self.dns_timeout}\n"
        extra += "[authentication]\n" + (self.authentication if authentication is None else authentication)
        self.server = MailServer(self, listeners=("smtp",), extra=extra)
        yield self.server.start(users={RCPT: "pw"})
        # The Junk folder (made at the first IMAP login; a store without it delivers to INBOX).
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.server.maildir(RCPT), ".Junk", sub))

    def junk(self):
        return glob.glob(os.path.join(self.server.maildir(RCPT), ".Junk", "new", "*"))

    @defer.inlineCallbacks
    def deliver(self, data, sender="alice@good.example"):
        """Send; the end-of-data reply and the one stored copy's A-R fields."""
        reply = yield in_thread(send, self.server.port("smtp"), data, sender)
        messages = stored(self.server, RCPT)
        self.messages = messages
        return reply, (auth_results(messages[-1]) if messages else None)

    @defer.inlineCallbacks
    def verdict(self, data, sender="alice@good.example"):
        (code, text), fields = yield self.deliver(data, sender)
        self.assertEqual(code, 250, text)
        self.assertEqual(len(fields), 1, fields)
        self.assertTrue(fields[0].startswith(HOST + ";"), fields[0])
        return fields[0]


class SPFOverSMTPTests(VerifyCase):
    @defer.inlineCallbacks
    def test_pass_is_in_the_header_at_the_top(self):
        field = yield self.verdict(message("alice@good.example"))
        self.assertIn("spf=pass smtp.mailfrom=alice@good.example", field)
        # Under the Return-Path of the final delivery, above everything else.
        self.assertTrue(self.messages[-1].split(b"\n", 1)[1].startswith(b"Authentication-Results: mail.example.test;"))

    @defer.inlineCallbacks
    def test_fail(self):
        field = yield self.verdict(message("alice@nodmarc.example"), sender="alice@nodmarc.example")
        self.assertIn("spf=fail", field)
        self.assertIn("dmarc=none", field)

    @defer.inlineCallbacks
    def test_none(self):
        field = yield self.verdict(message("x@unknown-domain.example"), sender="x@unknown-domain.example")
        self.assertIn("spf=none smtp.mailfrom=x@unknown-domain.example", field)

    @defer.inlineCallbacks
    def test_null_sender_is_checked_by_helo(self):
        field = yield self.verdict(message("alice@good.example"), sender="")
        self.assertIn("smtp.helo=client.good.example", field)


class AuthLogLineTests(VerifyCase):
    """An `auth` log line for a message whose checks found something, none for a clean pass."""

    @defer.inlineCallbacks
    def test_a_failure_is_logged(self):
        from tests.helpers import collect_log

        log = collect_log(self)
        yield self.verdict(message("alice@nodmarc.example"), sender="alice@nodmarc.example")
        [line] = [t for t in log if t.startswith("auth ")]
        self.assertIn("auth alice@nodmarc.example from 127.0.0.1: spf=fail dkim=none dmarc=none action=none", line)

    @defer.inlineCallbacks
    def test_a_pass_is_in_the_header_only(self):
        from tests.helpers import collect_log

        log = collect_log(self)
        field = yield self.verdict(message("alice@good.example"))
        self.assertIn("dmarc=pass", field)
        self.assertEqual([t for t in log if t.startswith("auth ")], [])


class SPFFailPolicyTests(VerifyCase):
    authentication = 'spf_fail = "reject"\n'

    @defer.inlineCallbacks
    def test_spf_fail_without_dmarc_can_be_refused(self):
        (code, text), _ = yield self.deliver(message("alice@nodmarc.example"), sender="alice@nodmarc.example")
        self.assertEqual(code, 550)
        self.assertIn("5.7.1", text)
        self.assertEqual(stored(self.server, RCPT), [])


class DKIMTests(VerifyCase):
    @defer.inlineCallbacks
    def test_good_signature(self):
        field = yield self.verdict(sign(message("alice@good.example")))
        self.assertIn("dkim=pass header.d=good.example header.s=sel", field)
        self.assertIn("dmarc=pass", field)

    @defer.inlineCallbacks
    def test_unsigned(self):
        field = yield self.verdict(message("alice@good.example"))
        self.assertIn("dkim=none", field)

    @defer.inlineCallbacks
    def test_bad_body_hash(self):
        signed = sign(message("alice@good.example")).replace(b"Hello, Bob.", b"Hello, Eve.")
        field = yield self.verdict(signed)
        self.assertIn("dkim=fail (body hash did not verify) header.d=good.example", field)

    @defer.inlineCallbacks
    def test_bad_signature(self):
        signed = sign(message("alice@good.example")).replace(b"Subject: hello", b"Subject: pay now")
        field = yield self.verdict(signed)
        self.assertIn("dkim=fail (signature did not verify) header.d=good.example", field)

    @defer.inlineCallbacks
    def test_missing_key(self):
        field = yield self.verdict(sign(message("alice@good.example"), selector=b"nokey"))
        self.assertIn("dkim=permerror (no key) header.d=good.example header.s=nokey", field)

    @defer.inlineCallbacks
    def test_revoked_key(self):
        field = yield self.verdict(sign(message("alice@good.example"), selector=b"revoked"))
        self.assertIn("dkim=fail (key revoked) header.d=good.example header.s=revoked", field)

    @defer.inlineCallbacks
    def test_length_tag_ignores_what_follows_the_signed_body(self):
        signed = sign(message("alice@good.example"), length=True) + b"Appended by a list.\r\n"
        field = yield self.verdict(signed)
        self.assertIn("dkim=pass header.d=good.example", field)

    @defer.inlineCallbacks
    def test_every_signature_is_reported(self):
        once = sign(message("alice@good.example"))
        twice = sign(once, selector=b"nokey")
        field = yield self.verdict(twice)
        self.assertIn("dkim=permerror (no key) header.d=good.example header.s=nokey", field)
        self.assertIn("dkim=pass header.d=good.example header.s=sel", field)

    @defer.inlineCallbacks
    def test_fifty_signatures_give_a_bounded_verdict(self):
        signed = sign(message("alice@good.example"))
        signature = signed[: signed.index(b"From:")]
        data = signature * 50 + signed[len(signature) :]
        before = len(self.dns.queries)
        started = time.monotonic()
        field = yield self.verdict(data)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(field.count("dkim=pass"), 10)
        # One key lookup for the fifty copies of one signature.
        self.assertEqual([q for q in self.dns.queries[before:] if "_domainkey" in q[0]], [("sel._domainkey.good.example", "TXT")])

    @defer.inlineCallbacks
    def test_malformed_key_record_is_a_permerror(self):
        field = yield self.verdict(sign(message("alice@good.example"), selector=b"broken"))
        self.assertIn("dkim=permerror", field)
        self.assertIn("header.s=broken", field)

    @defer.inlineCallbacks
    def test_absurd_tags_are_a_permerror(self):
        signed = sign(message("alice@good.example"))
        bad = signed.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x=1; t=99999999999999999999; l=" + b"9" * 80 + b";")
        field = yield self.verdict(bad)
        self.assertIn("dkim=permerror", field)


class DMARCTests(VerifyCase):
    @defer.inlineCallbacks
    def test_aligned_by_spf_relaxed(self):
        field = yield self.verdict(message("alice@good.example"), sender="bounce@mail.good.example")
        self.assertIn("dmarc=pass", field)
        self.assertIn("header.from=good.example", field)

    @defer.inlineCallbacks
    def test_strict_spf_alignment_needs_the_same_name(self):
        (code, text), _ = yield self.deliver(message("alice@strict.example"), sender="bounce@mail.strict.example")
        self.assertEqual(code, 550)

    @defer.inlineCallbacks
    def test_strict_dkim_alignment_needs_the_same_name(self):
        signed = sign(message("alice@sub.strict.example"), domain=b"good.example")
        (code, text), _ = yield self.deliver(signed, sender="bounce@other.example")
        self.assertEqual(code, 550)

    @defer.inlineCallbacks
    def test_aligned_by_dkim(self):
        field = yield self.verdict(sign(message("alice@good.example")), sender="bounce@other.example")
        self.assertIn("spf=pass smtp.mailfrom=bounce@other.example", field)
        self.assertIn("dmarc=pass", field)

    @defer.inlineCallbacks
    def test_reject_is_refused_with_550_and_the_reason(self):
        (code, text), _ = yield self.deliver(message("ceo@good.example"), sender="phisher@other.example")
        self.assertEqual(code, 550)
        self.assertIn("5.7.1", text)
        self.assertIn("DMARC policy of good.example", text)
        self.assertEqual(stored(self.server, RCPT), [])

    @defer.inlineCallbacks
    def test_quarantine_goes_to_junk(self):
        (code, _), _ = yield self.deliver(message("alice@quarantine.example"), sender="alice@other.example")
        self.assertEqual(code, 250)
        self.assertEqual(stored(self.server, RCPT), [])
        junk = self.junk()
        self.assertEqual(len(junk), 1)
        with open(junk[0], "rb") as f:
            self.assertIn(b"dmarc=fail (p=quarantine sp=quarantine dis=quarantine)", f.read())

    @defer.inlineCallbacks
    def test_subdomain_policy(self):
        (code, text), _ = yield self.deliver(message("alice@sub.parent.example"), sender="alice@other.example")
        self.assertEqual(code, 550, text)

    @defer.inlineCallbacks
    def test_organisational_domain_policy_p_for_itself(self):
        field = yield self.verdict(message("alice@parent.example"), sender="alice@other.example")
        self.assertIn("dmarc=fail (p=none sp=reject dis=none)", field)

    @defer.inlineCallbacks
    def test_pct_outside_the_sample_is_quarantined_not_rejected(self):
        self.server.service.backends.verifier.random = lambda: 0.7  # 70 >= pct=50
        (code, _), _ = yield self.deliver(message("alice@half.example"), sender="alice@other.example")
        self.assertEqual(code, 250)
        self.assertEqual(len(self.junk()), 1)

    @defer.inlineCallbacks
    def test_pct_inside_the_sample_is_rejected(self):
        self.server.service.backends.verifier.random = lambda: 0.2
        (code, _), _ = yield self.deliver(message("alice@half.example"), sender="alice@other.example")
        self.assertEqual(code, 550)

    @defer.inlineCallbacks
    def test_malformed_dmarc_record_is_no_policy(self):
        field = yield self.verdict(message("alice@other.example"), sender="alice@nodmarc.example")
        self.assertIn("spf=fail", field)
        self.assertIn("dmarc=none", field)

    @defer.inlineCallbacks
    def test_two_from_fields_is_a_permerror(self):
        data = message("alice@good.example", extra=b"From: mallory@other.example\r\n")
        field = yield self.verdict(data)
        self.assertIn("dmarc=permerror", field)


def forwarded(data, hops=(b"fwd.example",)):
    """`data` as mailing lists at fwd.example hand it on: Subject changed, then ARC-sealed per hop."""
    data = data.replace(b"Subject: hello", b"Subject: [list] hello")
    for n, hop in enumerate(hops):
        # A sealer records the chain it received (cv=): from the second hop on, arc=pass.
        data = b"Authentication-Results: " + hop + b"; dkim=pass header.d=good.example" + (b"; arc=pass" if n else b"") + b"\r\n" + data
        data = b"".join(dkim.arc_sign(data, b"arc", b"fwd.example", PRIVATE, hop)) + data
    return data


class ARCTests(VerifyCase):
    @defer.inlineCallbacks
    def arc_verdict(self, data):
        (code, text), fields = yield self.deliver(data, sender="list-bounces@fwd.example")
        self.assertEqual(code, 250, text)
        self.assertTrue(fields[0].startswith(HOST + ";"), fields)
        self.assertEqual(sum(1 for f in fields if f.lower().startswith(HOST)), 1)
        return fields[0]

    @defer.inlineCallbacks
    def test_a_chain_through_a_forwarder(self):
        field = yield self.arc_verdict(forwarded(sign(message("alice@other.example"))))
        self.assertIn("dkim=fail (signature did not verify) header.d=good.example", field)
        self.assertIn("arc=pass (i=1)", field)

    @defer.inlineCallbacks
    def test_a_chain_of_two(self):
        field = yield self.arc_verdict(forwarded(sign(message("alice@other.example")), hops=(b"fwd.example", b"relay.fwd.example")))
        self.assertIn("arc=pass (i=2)", field)

    @defer.inlineCallbacks
    def test_a_body_changed_after_sealing_breaks_the_chain(self):
        data = forwarded(sign(message("alice@other.example"))).replace(b"Hello, Bob.", b"Hello, Eve.")
        field = yield self.arc_verdict(data)
        self.assertIn("arc=fail", field)

    @defer.inlineCallbacks
    def test_an_arc_pass_does_not_override_a_dmarc_reject(self):
        (code, _), _ = yield self.deliver(forwarded(sign(message("alice@good.example"))), sender="list-bounces@fwd.example")
        self.assertEqual(code, 550)

    @defer.inlineCallbacks
    def test_no_chain_no_arc_result(self):
        field = yield self.verdict(message("alice@good.example"))
        self.assertNotIn("; arc=", field)


class DomainPolicyTests(VerifyCase):
    authentication = '[authentication.domains."example.test"]\ndmarc_reject = "quarantine"\n'

    @defer.inlineCallbacks
    def test_a_recipient_domain_can_quarantine_instead_of_reject(self):
        (code, _), _ = yield self.deliver(message("ceo@good.example"), sender="phisher@other.example")
        self.assertEqual(code, 250)
        self.assertEqual(len(self.junk()), 1)


class SpoofingTests(VerifyCase):
    @defer.inlineCallbacks
    def test_a_field_claiming_our_name_is_removed(self):
        forged = (
            b"Authentication-Results: MAIL.example.test; dkim=pass header.d=bank.example\r\n"
            b"Authentication-Results: (comment) mail.example.test. 1;\r\n\tdmarc=pass\r\n"
            b"Authentication-Results: relay.other.example; spf=pass\r\n"
        )
        (code, _), kept = yield self.deliver(message("alice@good.example", extra=forged))
        self.assertEqual(code, 250)
        self.assertEqual(len(kept), 2)
        self.assertTrue(kept[0].startswith("mail.example.test; spf=pass"))
        self.assertEqual(kept[1], "relay.other.example; spf=pass")
        self.assertNotIn(b"bank.example", self.messages[-1])
        self.assertIn(b"Subject: hello", self.messages[-1])

    @defer.inlineCallbacks
    def test_header_injection_through_the_from_domain(self):
        data = message("<a@evil.example\r\n Authentication-Results: mail.example.test; dmarc=pass>")
        field = yield self.verdict(data)
        self.assertNotIn("dmarc=pass", field)
        self.assertEqual(len(auth_results(self.messages[-1])), 1)

    def test_values_from_the_message_cannot_break_the_field(self):
        clause = results.result_clause("dkim", "fail", "x)\r\nFrom: a (b", [("header.d", "evil.example\r\nX: y")])
        self.assertNotIn("\r", clause)
        self.assertNotIn("\n", clause)
        self.assertEqual(clause, 'dkim=fail (x??From: a b) header.d="evil.example??X: y"')


class VerificationOffTests(VerifyCase):
    authentication = "verify = false\n"

    @defer.inlineCallbacks
    def test_no_checks_but_forged_fields_still_removed(self):
        before = len(self.dns.queries)
        forged = b"Authentication-Results: mail.example.test; dmarc=pass\r\n"
        (code, _), fields = yield self.deliver(message("alice@good.example", extra=forged))
        self.assertEqual(code, 250)
        self.assertEqual(fields, [])
        self.assertEqual(self.dns.queries[before:], [])


class AuthenticatedMailTests(VerifyCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.dns = start_dns_server(self, RECORDS, zones=ZONES)
        extra = f'[dns]\nservers = ["{self.dns.address}"]\ntimeout = 2\n'
        self.server = MailServer(self, listeners=("submission",), extra=extra)
        yield self.server.start(users={RCPT: "pw", "alice@example.test": "alice-pw"})

    @defer.inlineCallbacks
    def test_submission_is_not_checked(self):
        from tests.test_dkim_sign import submit

        before = len(self.dns.queries)
        yield in_thread(submit, self.server.port("submission"), message("alice@example.test"), recipients=[RCPT])
        [stored_message] = stored(self.server, RCPT)
        self.assertEqual(auth_results(stored_message), [])
        self.assertEqual(self.dns.queries[before:], [])


class TemporaryFailureTests(VerifyCase):
    dns_timeout = 1

    @defer.inlineCallbacks
    def setUp(self):
        # A UDP port nobody answers on: the name server is down.
        self.dns = start_dns_server(self, RECORDS, zones=ZONES)
        self.dns.silent = True
        yield self.start_server(f'servers = ["{self.dns.address}"]')

    @defer.inlineCallbacks
    def test_accepted_with_temperror_and_no_longer_than_the_timeout(self):
        started = time.monotonic()
        field = yield self.verdict(message("alice@good.example"))
        self.assertLess(time.monotonic() - started, 3)
        self.assertIn("spf=temperror", field)
        self.assertIn("dmarc=temperror", field)

    @defer.inlineCallbacks
    def test_closed_port(self):
        yield self.server.stop()
        yield self.start_server('servers = ["127.0.0.1:9"]')
        started = time.monotonic()
        field = yield self.verdict(sign(message("alice@good.example")))
        self.assertLess(time.monotonic() - started, 3)
        self.assertIn("spf=temperror", field)
        self.assertIn("dkim=temperror", field)

    @defer.inlineCallbacks
    def test_defer_answers_451(self):
        yield self.server.stop()
        yield self.start_server(f'servers = ["{self.dns.address}"]', authentication='temperror = "defer"\n')
        (code, text), _ = yield self.deliver(message("alice@good.example"))
        self.assertEqual(code, 451)
        self.assertIn("4.7.24", text)
        self.assertEqual(stored(self.server, RCPT), [])


class SlowDNSTests(VerifyCase):
    dns_timeout = 10

    @defer.inlineCallbacks
    def test_other_sessions_are_served_while_a_check_waits(self):
        self.dns.delay = 5
        slow = in_thread(send, self.server.port("smtp"), message("alice@good.example"))
        yield deferLater(reactor, 0.5, lambda: None)

        def quick():
            started = time.monotonic()
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
                s.ehlo("other.example")
                s.noop()
            return time.monotonic() - started

        took = yield in_thread(quick)
        self.assertLess(took, 1)
        self.assertFalse(slow.called)
        code, _ = yield slow
        self.assertEqual(code, 250)
        self.assertIn("spf=pass", auth_results(stored(self.server, RCPT)[0])[0])


class ConfigTests(unittest.TestCase):
    def load(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nhostname = "h.example"\nstate_dir = "s"\n' + text)
        return configuration.load(path)

    def test_defaults(self):
        settings = self.load("").authentication
        self.assertEqual(settings["policy"], {"dmarc_reject": "reject", "dmarc_quarantine": "quarantine", "spf_fail": "none", "temperror": "accept"})
        self.assertTrue(settings["verify"])

    def test_unknown_key_is_named(self):
        e = self.assertRaises(configuration.ConfigError, self.load, "[authentication]\nspf_reject = true\n")
        self.assertIn("authentication.spf_reject", str(e))

    def test_bad_value_is_named(self):
        e = self.assertRaises(configuration.ConfigError, self.load, '[authentication]\ntemperror = "bounce"\n')
        self.assertIn("authentication.temperror", str(e))

    def test_unknown_domain_key_is_named(self):
        e = self.assertRaises(configuration.ConfigError, self.load, '[authentication.domains."a.example"]\nverify = false\n')
        self.assertIn('authentication.domains.a.example.verify', str(e))


class TheSuitesOwnNameServer(unittest.TestCase):
    """
    tests/helpers.py gives every MailServer a name server of its own that
    knows no names: the suites never ask the machine's resolver, and a
    sender domain without records is SPF `none`, not `temperror`.
    """

    @defer.inlineCallbacks
    def test_a_message_on_the_mx_is_checked_against_the_test_name_server(self):
        server = MailServer(self, listeners=("smtp",))
        yield server.start(users={RCPT: "pw"})
        code, _ = yield in_thread(send, server.port("smtp"), message("alice@nowhere.example"), "alice@nowhere.example")
        self.assertEqual(code, 250)
        [stored_message] = stored(server, RCPT)
        [field] = auth_results(stored_message)
        self.assertIn("spf=none", field)
        self.assertIn(("nowhere.example", "TXT"), server.dns.queries)


class _CountingResolver:
    """A resolver answering TXT questions from a dict it can be changed in; counts the questions."""

    def __init__(self, answers):
        self.answers = answers  # name -> list of texts, or an Exception to fail with
        self.asked = []

    def lookupText(self, name):
        from twisted.names import dns, error

        self.asked.append(name)
        answer = self.answers.get(name.decode())
        if answer is None:
            return defer.fail(error.DNSNameError(name))
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(([dns.RRHeader(name, dns.TXT, ttl=60, payload=dns.Record_TXT(t.encode(), ttl=60))
                               for t in answer], [], []))


class CachedAnswersTests(unittest.TestCase):
    """The answers and parses kept across messages are never stale and never another's."""

    def setUp(self):
        from twisted.internet.task import Clock

        from mailplat.auth.lookups import AnswerCache

        self.clock = Clock()
        self.cache = AnswerCache(self.clock)
        self.resolver = _CountingResolver({"a.example": ["v=spf1 -all"]})

    def txt(self, name):
        from mailplat.auth.lookups import Lookups

        out = []
        Lookups(self.resolver, deadline=10, clock=self.clock, cache=self.cache).txt(name).addBoth(out.append)
        return out[0]

    def test_an_answer_is_asked_once_within_its_ttl(self):
        self.assertEqual(self.txt("a.example"), [b"v=spf1 -all"])
        self.assertEqual(self.txt("A.example."), [b"v=spf1 -all"])
        self.assertEqual(self.resolver.asked, [b"a.example"])

    def test_an_expired_answer_is_asked_again_and_the_new_one_is_used(self):
        self.txt("a.example")
        self.resolver.answers["a.example"] = ["v=spf1 +all"]
        self.clock.advance(61)
        self.assertEqual(self.txt("a.example"), [b"v=spf1 +all"])
        self.assertEqual(len(self.resolver.asked), 2)

    def test_a_name_that_does_not_exist_is_kept_as_no_records(self):
        self.assertEqual(self.txt("b.example"), [])
        self.assertEqual(self.txt("b.example"), [])
        self.assertEqual(self.resolver.asked, [b"b.example"])

    def test_a_temporary_failure_is_not_kept(self):
        from mailplat.auth.lookups import DNSTemporaryError

        self.resolver.answers["c.example"] = RuntimeError("SERVFAIL")
        failure = self.txt("c.example")
        self.assertTrue(failure.check(DNSTemporaryError))
        self.resolver.answers["c.example"] = ["v=spf1 ~all"]
        self.assertEqual(self.txt("c.example"), [b"v=spf1 ~all"])

    def test_a_kept_spf_parse_is_a_fresh_copy_and_errors_stay_errors(self):
        from mailplat.auth import spf

        directives, modifiers = spf.parse(b"v=spf1 ip4:192.0.2.0/24 -all exp=e.example")
        directives.clear()
        modifiers.clear()
        self.assertEqual(len(spf.parse(b"v=spf1 ip4:192.0.2.0/24 -all exp=e.example")[0]), 2)
        for _ in range(2):
            self.assertRaises(spf.PermError, spf.parse, b"v=spf1 ip4:192.0.2.300 -all")
        self.assertEqual(spf.parse(b"v=spf1 ~all")[0][0][0], "softfail")

    def test_each_from_value_has_its_own_domain(self):
        from mailplat.auth.verify import author_domain

        self.assertEqual(author_domain(b"From: a@one.example\nSubject: 1\n"), ("one.example", None))
        self.assertEqual(author_domain(b"Subject: 2\nFrom: A <a@one.example>\n"), ("one.example", None))
        self.assertEqual(author_domain(b"From: a@two.example\n"), ("two.example", None))
        self.assertEqual(author_domain(b"From: a@one.example\nFrom: a@one.example\n"), (None, "more than one From field"))
        self.assertEqual(author_domain(b"From: a@one.example, b@two.example\n"), (None, "no single From domain"))

    def test_each_dmarc_record_text_has_its_own_parse(self):
        from mailplat.auth import dmarc

        self.assertEqual(dmarc.parse_record(b"v=DMARC1; p=reject").p, "reject")
        self.assertEqual(dmarc.parse_record(b"v=DMARC1; p=none").p, "none")
        self.assertIsNone(dmarc.parse_record(b"v=DMARC2; p=reject"))
