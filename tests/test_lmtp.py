"""
The `lmtp` local delivery agent end to end: a mailplat server with
[delivery] local = "lmtp" in front of an LMTP server started in the test
(standing in for Dovecot), driven by smtplib. Each recipient gets the LMTP
server's answer; a 4xx from LMTP never loses mail: the client gets 451 and
keeps the message.
"""

import smtplib

from twisted.internet import defer
from twisted.trial import unittest

from mailplat import config as configuration
from mailplat.config import ConfigError
from mailplat.delivery.lmtp import LMTPDelivery, LMTPReply, _where, from_config
from mailplat.interfaces import BackendContext, Envelope, PermanentFailure, TemporaryFailure
from mailplat.store.source import BytesSource
from mailplat.testing import LMTPServer
from tests.helpers import MailServer, collect_log, free_port, in_thread

USERS = {"alice@example.test": "pw-a", "bob@example.test": "pw-b", "carol@example.test": "pw-c"}
MESSAGE = b"From: dave@remote.test\r\nSubject: via LMTP\r\n\r\nHello.\r\n.dot line\r\n"


class LMTPMailServer(MailServer):
    """The test harness's server, delivering through LMTP instead of maildir."""

    def __init__(self, testcase, endpoint, **kwargs):
        extra = f'\n[delivery.lmtp]\nendpoint = "{endpoint}"\ntimeout = 10\nconnect_timeout = 5\n' + kwargs.pop("extra", "")
        super().__init__(testcase, listeners=("smtp",), extra=extra, **kwargs)

    def config_text(self):
        return super().config_text().replace('local = "maildir"', 'local = "lmtp"')


def send(port, recipients, message=MESSAGE):
    """One SMTP transaction: ({rcpt: (code, text)}, (data code, text) or None)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("remote.test")
        client.mail("dave@remote.test")
        answers = {r: client.rcpt(r) for r in recipients}
        if not any(code == 250 for code, _ in answers.values()):
            client.rset()
            return answers, None
        code, text = client.data(message)
        return answers, (code, text.decode())


class EndToEnd(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.lmtp = LMTPServer(users=USERS)
        yield self.lmtp.start(self)
        self.server = yield LMTPMailServer(self, self.lmtp.endpoint).start(users=USERS)
        self.port = self.server.port("smtp")

    @defer.inlineCallbacks
    def test_accepted_mail_reaches_the_lmtp_server_byte_for_byte(self):
        answers, data = yield in_thread(send, self.port, ["alice@example.test"])
        self.assertEqual(data[0], 250)
        [stored] = self.lmtp.messages["alice@example.test"]
        self.assertTrue(stored.endswith(MESSAGE.replace(b"\r\n", b"\n")), stored)
        # Our trace fields go first: the MX's Authentication-Results, then Received.
        self.assertTrue(stored.startswith(b"Authentication-Results: mail.example.test;"), stored[:80])
        self.assertIn(b"\nReceived: ", stored)
        self.assertNotIn(b"Return-Path", stored, "the LMTP server adds Return-Path itself")
        self.assertEqual(self.lmtp.senders, ["dave@remote.test"])
        self.assertIn("LHLO mail.example.test", self.lmtp.commands)

    @defer.inlineCallbacks
    def test_each_recipient_gets_the_lmtp_servers_answer_at_rcpt(self):
        self.lmtp.rcpt_replies["bob@example.test"] = "550 5.1.1 <bob@example.test> User doesn't exist"
        self.lmtp.rcpt_replies["carol@example.test"] = "452 4.2.2 Mailbox is full"
        answers, data = yield in_thread(send, self.port, list(USERS))
        self.assertEqual(answers["alice@example.test"][0], 250)
        self.assertEqual(answers["bob@example.test"][0], 550)
        self.assertIn(b"5.1.1", answers["bob@example.test"][1])
        self.assertEqual(answers["carol@example.test"][0], 451)
        self.assertIn(b"4.2.2", answers["carol@example.test"][1])
        self.assertEqual(data[0], 250)
        self.assertEqual(list(self.lmtp.messages), ["alice@example.test"])

    @defer.inlineCallbacks
    def test_unknown_users_are_refused_before_lmtp_is_asked(self):
        answers, data = yield in_thread(send, self.port, ["nobody@example.test"])
        self.assertEqual(answers["nobody@example.test"][0], 550)
        self.assertFalse(any(c.startswith("RCPT") for c in self.lmtp.commands))

    @defer.inlineCallbacks
    def test_a_4xx_after_data_gives_the_client_451_and_nothing_is_lost(self):
        self.lmtp.data_replies["alice@example.test"] = "452 4.2.2 Mailbox is full"
        answers, data = yield in_thread(send, self.port, ["alice@example.test"])
        self.assertEqual(data[0], 451)
        self.assertIn("4.2.2", data[1])
        self.assertEqual(self.lmtp.messages, {})
        # The client keeps the message and retries; this time it goes through.
        del self.lmtp.data_replies["alice@example.test"]
        answers, data = yield in_thread(send, self.port, ["alice@example.test"])
        self.assertEqual(data[0], 250)
        self.assertEqual(len(self.lmtp.messages["alice@example.test"]), 1)

    @defer.inlineCallbacks
    def test_one_recipients_4xx_after_data_fails_the_whole_message_temporarily(self):
        self.lmtp.data_replies["bob@example.test"] = "451 4.3.0 Temporary internal error"
        answers, data = yield in_thread(send, self.port, ["alice@example.test", "bob@example.test"])
        self.assertEqual(data[0], 451)
        self.assertNotIn("bob@example.test", self.lmtp.messages)

    @defer.inlineCallbacks
    def test_a_5xx_after_data_for_some_is_a_5xx_naming_who_got_it(self):
        self.lmtp.data_replies["bob@example.test"] = "552 5.2.2 Quota exceeded"
        answers, data = yield in_thread(send, self.port, ["alice@example.test", "bob@example.test"])
        self.assertEqual(data[0], 552)
        self.assertIn("not delivered to bob@example.test", data[1])
        self.assertIn("delivered to alice@example.test", data[1])
        self.assertEqual(list(self.lmtp.messages), ["alice@example.test"])

    @defer.inlineCallbacks
    def test_each_recipients_answer_after_data_is_a_delivered_or_delivery_failed_line(self):
        log = collect_log(self)
        self.lmtp.data_replies["bob@example.test"] = "552 5.2.2 Quota exceeded"
        answers, data = yield in_thread(send, self.port, ["alice@example.test", "bob@example.test"])
        self.assertEqual(data[0], 552)
        host = _where(self.lmtp.endpoint)
        [delivered] = [t for t in log if t.startswith("delivered ")]
        self.assertRegex(delivered, rf"^delivered id=[0-9A-F]+ rcpt=<alice@example.test> mailbox={host} backend=lmtp delay=\d+\.\d{{3}}$")
        [failed] = [t for t in log if t.startswith("delivery-failed ")]
        self.assertIn(f"rcpt=<bob@example.test> mailbox={host} backend=lmtp outcome=refused code=552 status=5.2.2 ", failed)
        self.assertIn("Quota exceeded", failed)

    @defer.inlineCallbacks
    def test_a_connection_dropped_after_data_gives_451(self):
        self.lmtp.drop_after_data = True
        answers, data = yield in_thread(send, self.port, ["alice@example.test"])
        self.assertEqual(data[0], 451)

    @defer.inlineCallbacks
    def test_an_unreachable_lmtp_server_gives_451_at_rcpt(self):
        yield self.lmtp.stop()
        answers, data = yield in_thread(send, self.port, ["alice@example.test"])
        self.assertEqual(answers["alice@example.test"][0], 451)
        self.assertIsNone(data)
        self.flushLoggedErrors()


class Transaction(unittest.TestCase):
    """The agent on its own: what the SMTP side does not show."""

    @defer.inlineCallbacks
    def setUp(self):
        self.lmtp = LMTPServer(users=USERS)
        yield self.lmtp.start(self)
        self.agent = LMTPDelivery(self.lmtp.endpoint, "mx.example.test", timeout=5, connect_timeout=5)

    @defer.inlineCallbacks
    def test_a_session_lost_before_data_is_replayed(self):
        t = self.agent.start(Envelope("dave@remote.test"))
        yield t.add_recipient("alice@example.test")
        yield t.add_recipient("bob@example.test")
        t._client.transport.loseConnection()  # the LMTP server's idle timeout
        while t._client.connected_now:
            yield in_thread(lambda: None)
        yield t.deliver(BytesSource(b"Subject: x\n\nhi\n"))
        self.assertEqual(sorted(self.lmtp.messages), ["alice@example.test", "bob@example.test"])
        self.assertEqual(self.lmtp.sessions, 2)

    @defer.inlineCallbacks
    def test_one_session_per_transaction_closed_with_quit(self):
        t = self.agent.start(Envelope(""))
        yield t.add_recipient("alice@example.test")
        yield t.deliver(BytesSource(b"Subject: bounce\n\nhi\n"))
        self.assertIn("MAIL FROM:<>", self.lmtp.commands)
        while self.lmtp.connections:
            yield in_thread(lambda: None)
        self.assertEqual(self.lmtp.commands[-1], "QUIT")

    @defer.inlineCallbacks
    def test_a_refused_sender_is_a_failure_at_the_first_recipient(self):
        self.lmtp.mail_reply = "451 4.3.0 try later"
        t = self.agent.start(Envelope("dave@remote.test"))
        yield self.assertFailure(t.add_recipient("alice@example.test"), TemporaryFailure)
        self.lmtp.mail_reply = "550 5.7.1 not you"
        t = self.agent.start(Envelope("dave@remote.test"))
        yield self.assertFailure(t.add_recipient("alice@example.test"), PermanentFailure)

    @defer.inlineCallbacks
    def test_a_silent_server_times_out_temporarily(self):
        self.lmtp.greeting = None  # accepts the connection, says nothing
        agent = LMTPDelivery(self.lmtp.endpoint, "mx.example.test", timeout=0.2, connect_timeout=5)
        t = agent.start(Envelope("dave@remote.test"))
        failure = yield self.assertFailure(t.add_recipient("alice@example.test"), TemporaryFailure)
        self.assertIn("did not answer within 0.2s", failure.text)

    def test_malformed_replies_fail_temporarily(self):
        self.lmtp.greeting = "hello there"
        t = self.agent.start(Envelope("dave@remote.test"))
        d = self.assertFailure(t.add_recipient("alice@example.test"), TemporaryFailure)
        return d.addCallback(lambda _: self.flushLoggedErrors())

    def test_reply_parsing_keeps_code_enhanced_code_and_text(self):
        reply = LMTPReply(452, ["4.2.2 Mailbox", "is full"])
        self.assertEqual((reply.code, reply.enhanced, reply.text), (452, "4.2.2", "Mailbox is full"))
        self.assertIsInstance(reply.failure("x"), TemporaryFailure)
        self.assertEqual(LMTPReply(550, ["no such user"]).failure("x").enhanced, "5.0.0")


class Config(unittest.TestCase):
    def context(self):
        return BackendContext(configuration.load(None))

    def test_the_endpoint_is_required(self):
        e = self.assertRaises(ValueError, from_config, {"local": "lmtp"}, self.context())
        self.assertIn("endpoint", str(e))

    def test_a_bad_endpoint_is_named(self):
        e = self.assertRaises(ValueError, from_config, {"lmtp": {"endpoint": "carrier-pigeon:x"}}, self.context())
        self.assertIn("lmtp.endpoint", str(e))

    def test_unknown_keys_are_named(self):
        e = self.assertRaises(ValueError, from_config, {"lmtp": {"endpoint": "unix:path=/x", "port": 24}}, self.context())
        self.assertIn("lmtp.port", str(e))

    def test_unix_endpoints_are_accepted(self):
        agent = from_config({"lmtp": {"endpoint": "unix:path=/run/dovecot/lmtp"}}, self.context())
        self.assertEqual(agent.hostname, "mail.example.test")

    def test_the_server_refuses_to_start_without_an_endpoint(self):
        server = LMTPMailServer(self, f"tcp:host=127.0.0.1:port={free_port()}")
        server.extra = ""
        return self.assertFailure(server.start(), ConfigError)
