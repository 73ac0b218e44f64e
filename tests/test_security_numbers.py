"""
Numbers from the network (issue 17 #5): a number too long for its field is
a protocol error, never a traceback or a temporary failure; and the SIZE
limit counts the octets as transmitted (RFC 1870: CRLF line ends).
"""

import poplib

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import LineClient, MailServer, client_tls, in_thread

HUGE = b"9" * 5000


class SMTPNumbers(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp",), extra="[limits]\nmessage_size = 1000\n")
        yield self.server.start(users={"alice@example.test": "pw"})

    def talk(self, *lines):
        c = LineClient(self.server.port("smtp"))
        self.addCleanup(c.close)
        c.smtp_reply()
        c.send(b"EHLO client.test\r\n")
        c.smtp_reply()
        replies = []
        for line in lines:
            c.send(line + b"\r\n")
            replies.append(c.smtp_reply())
        return c, replies

    @defer.inlineCallbacks
    def test_mail_size_with_5000_digits_is_a_syntax_error(self):
        c, replies = yield in_thread(self.talk, b"MAIL FROM:<bob@elsewhere.test> SIZE=" + HUGE)
        self.assertEqual(replies[0][0], 501)
        self.assertNotIn("local error", " ".join(replies[0][1]))

    @defer.inlineCallbacks
    def test_bdat_with_5000_digits_is_refused_and_closes(self):
        def run():
            c, replies = self.talk(b"MAIL FROM:<bob@elsewhere.test>", b"RCPT TO:<alice@example.test>",
                                   b"BDAT " + HUGE)
            return replies, c.closed()

        replies, closed = yield in_thread(run)
        self.assertEqual([r[0] for r in replies[:2]], [250, 250])
        self.assertIn(replies[2][0], (501, 552))
        self.assertTrue(closed)

    @defer.inlineCallbacks
    def test_size_limit_counts_transmitted_crlf_octets(self):
        # 600 stored octets with LF line ends are 900 on the wire with CRLF:
        # over a 1000-octet limit only when CRLF is counted as RFC 1870 says.
        body = b"x\r\n" * 350

        def run():
            c, replies = self.talk(b"MAIL FROM:<bob@elsewhere.test>", b"RCPT TO:<alice@example.test>", b"DATA")
            c.send(b"Subject: s\r\n\r\n" + body + b".\r\n")
            return replies, c.smtp_reply()

        replies, final = yield in_thread(run)
        self.assertEqual(replies[2][0], 354)
        self.assertEqual(final[0], 552)


class POP3Numbers(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp", "pop3s"))
        yield self.server.start(users={"alice@example.test": "pw"})
        yield in_thread(self.deliver)

    def deliver(self):
        import smtplib

        with smtplib.SMTP("127.0.0.1", self.server.port("smtp")) as s:
            s.sendmail("bob@elsewhere.test", ["alice@example.test"], b"Subject: one\r\n\r\nline 1\r\nline 2\r\n")

    def pop(self):
        p = poplib.POP3_SSL("127.0.0.1", self.server.port("pop3s"), context=client_tls(), timeout=10)
        self.addCleanup(p.close)
        p.user("alice@example.test")
        p.pass_("pw")
        return p

    @defer.inlineCallbacks
    def test_top_with_a_count_past_64_bits_sends_the_whole_message(self):
        def run():
            p = self.pop()
            return p.top(1, 9223372036854775808)

        status, lines, _ = yield in_thread(run)
        self.assertTrue(status.startswith(b"+OK"))
        self.assertIn(b"line 2", lines)

    @defer.inlineCallbacks
    def test_huge_or_negative_message_numbers_are_plain_errors(self):
        def run():
            p = self.pop()
            answers = []
            for command in (b"LIST " + HUGE, b"RETR " + HUGE, b"DELE -1", b"UIDL 18446744073709551617", b"TOP 1 -5"):
                p._putcmd(command.decode())
                answers.append(p._getline()[0])
            answers.append(p.noop())
            return answers

        answers = yield in_thread(run)
        for answer in answers[:-1]:
            self.assertTrue(answer.startswith(b"-ERR"), answer)
            self.assertNotIn(b"SYS/TEMP", answer)
            self.assertNotIn(b"internal", answer)
        self.assertTrue(answers[-1].startswith(b"+OK"))
