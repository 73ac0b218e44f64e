"""The shortest path through the server: SMTP in, POP3 out."""

import poplib
import smtplib

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, in_thread


class SMTPToPOP3(unittest.TestCase):
    @defer.inlineCallbacks
    def test_message_sent_to_mx_is_read_over_pop3s(self):
        server = yield MailServer(self).start(users={"alice@example.test": "pw1"})
        body = b"Subject: hi\r\n\r\nhello there\r\n"

        def send():
            with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
                s.sendmail("bob@remote.test", ["alice@example.test"], body)

        def read():
            p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls())
            p.user("alice@example.test")
            p.pass_("pw1")
            _, lines, _ = p.retr(1)
            p.quit()
            return lines

        yield in_thread(send)
        lines = yield in_thread(read)
        self.assertIn(b"hello there", lines)
        self.assertEqual(lines[0], b"Return-Path: <bob@remote.test>")
