"""
REQUIRETLS (RFC 8689): offered and accepted only over TLS; a message sent
with it travels only over verified TLS (an MTA-STS enforce policy here) to
a next hop that offers REQUIRETLS too, else it bounces with 5.7.30; a
message saying `TLS-Required: No` goes past the domain's MTA-STS policy.
"""

import smtplib

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.smtp import server as smtp_server
from tests.helpers import MailServer, client_tls, in_thread
from tests.test_relay_delivery import messages_in, records, scripted_server, wait_for
from tests.test_relay_mtasts import ENFORCE, MTASTSCase, start_policy_host


def ehlo_features(port, tls):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        if tls:
            s.starttls(context=client_tls())
        s.ehlo("client.example.net")
        return set(s.esmtp_features)


def mail_command(port, command, tls=False):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        if tls:
            s.starttls(context=client_tls())
        s.ehlo("client.example.net")
        return s.docmd(command)


class Offered(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp",))
        yield self.server.start()

    @defer.inlineCallbacks
    def test_requiretls_is_offered_only_after_starttls(self):
        plain = yield in_thread(ehlo_features, self.server.port("smtp"), tls=False)
        secure = yield in_thread(ehlo_features, self.server.port("smtp"), tls=True)
        self.assertNotIn("requiretls", plain)
        self.assertIn("requiretls", secure)

    @defer.inlineCallbacks
    def test_mail_with_requiretls_without_tls_is_refused_530(self):
        code, text = yield in_thread(mail_command, self.server.port("smtp"), "MAIL FROM:<x@example.net> REQUIRETLS")
        self.assertEqual(code, 530)
        self.assertIn(b"5.7.10", text)

    @defer.inlineCallbacks
    def test_mail_with_requiretls_over_tls_is_accepted(self):
        code, _ = yield in_thread(mail_command, self.server.port("smtp"), "MAIL FROM:<x@example.net> REQUIRETLS", tls=True)
        self.assertEqual(code, 250)

    @defer.inlineCallbacks
    def test_requiretls_takes_no_value(self):
        code, _ = yield in_thread(mail_command, self.server.port("smtp"), "MAIL FROM:<x@example.net> REQUIRETLS=yes", tls=True)
        self.assertEqual(code, 501)


def submit_requiretls(port):
    """Blocking: alice submits one message with MAIL FROM ... REQUIRETLS."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=client_tls())
        s.login("alice@example.test", "alice-pw")
        message = b"From: alice@example.test\r\nTo: bob@example.org\r\nSubject: secret\r\n\r\nbody\r\n"
        return s.sendmail("alice@example.test", ["bob@example.org"], message, mail_options=["REQUIRETLS"])


class Relayed(MTASTSCase):
    @defer.inlineCallbacks
    def test_the_flag_is_kept_in_the_queue_record(self):
        self.start_dns()
        _, policy_port = start_policy_host(self, self.ca, ENFORCE)
        factory, mx_port = scripted_server(self)  # no STARTTLS: the message waits
        yield self.start_sender(mx_port, policy_port)
        yield in_thread(submit_requiretls, self.a.port("submission"))
        [record] = yield wait_for(lambda: [r for r in records(self.a) if r["recipients"][0]["attempts"]])
        self.assertTrue(record["require_tls"])
        self.assertEqual(record["recipients"][0]["state"], "deferred")
        self.assertEqual(factory.messages, [])

    @defer.inlineCallbacks
    def test_goes_over_verified_tls_to_a_next_hop_offering_requiretls(self):
        params = []
        original = smtp_server.MailplatSMTP._check_mail_param
        self.patch(smtp_server.MailplatSMTP, "_check_mail_param",
                   lambda self, key, value: params.append(key) or original(self, key, value))
        self.start_dns()
        _, policy_port = start_policy_host(self, self.ca, ENFORCE)
        mx_port = yield self.start_receiver()
        queue = yield self.start_sender(mx_port, policy_port)
        queue_id = yield self.send(require_tls=True)
        [data] = yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        self.assertIn(b"with ESMTPS", data)
        self.assertIn("REQUIRETLS", params)  # B saw MAIL FROM:<...> REQUIRETLS
        yield wait_for(lambda: queue_id not in queue.entries)
        self.assertEqual(messages_in(self.a, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_without_a_verified_path_it_bounces_5_7_30(self):
        self.start_dns(policy_id=None)  # no MTA-STS: TLS to the MX would be opportunistic
        mx_port = yield self.start_receiver()
        yield self.start_sender(mx_port, 1)
        yield self.send(require_tls=True)
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"))
        self.assertIn(b"Status: 5.7.30", dsn)
        self.assertIn(b"REQUIRETLS", dsn)
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])

    @defer.inlineCallbacks
    def test_a_next_hop_without_requiretls_bounces_5_7_30(self):
        self.patch(smtp_server.MailplatSMTP, "_extensions",
                   lambda self, original=smtp_server.MailplatSMTP._extensions: [e for e in original(self) if e != "REQUIRETLS"])
        self.start_dns()
        _, policy_port = start_policy_host(self, self.ca, ENFORCE)
        mx_port = yield self.start_receiver()
        yield self.start_sender(mx_port, policy_port)
        yield self.send(require_tls=True)
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"))
        self.assertIn(b"Status: 5.7.30", dsn)
        self.assertIn(b"does not support REQUIRETLS", dsn)
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])

    @defer.inlineCallbacks
    def test_tls_required_no_goes_past_an_enforce_policy(self):
        self.start_dns()
        _, policy_port = start_policy_host(self, self.ca, ENFORCE)
        factory, mx_port = scripted_server(self)  # no STARTTLS
        yield self.start_sender(mx_port, policy_port)
        yield self.send(header="TLS-Required: No\n")
        [message] = yield wait_for(lambda: factory.messages)
        self.assertIn(b"TLS-Required: No", message)

    @defer.inlineCallbacks
    def test_tls_required_no_is_ignored_with_requiretls(self):
        self.start_dns(policy_id=None)
        factory, mx_port = scripted_server(self)
        yield self.start_sender(mx_port, 1)
        yield self.send(require_tls=True, header="TLS-Required: No\n")
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"))
        self.assertIn(b"Status: 5.7.30", dsn)
        self.assertEqual(factory.messages, [])
