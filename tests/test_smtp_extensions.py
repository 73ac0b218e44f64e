"""
ESMTP extensions and the wire behaviour of the SMTP server (issue 4):
the EHLO list, SIZE, PIPELINING order, SMTPUTF8, CHUNKING/BDAT, enhanced
status codes, parameters, and the framing that must never be fooled.
"""

import glob
import mailbox
import os
import smtplib

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import LineClient, MailServer, client_tls, in_thread

USERS = {"alice@example.test": "pw-alice", "bob@example.test": "pw-bob"}


def delivered(server, address):
    """The messages in a user's maildir (new/ and cur/), as bytes, oldest first."""
    root = server.maildir(address)
    paths = sorted(glob.glob(os.path.join(root, "new", "*")) + glob.glob(os.path.join(root, "cur", "*")))
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.append(f.read())
    return out


def body_of(message):
    """The part after the header block."""
    return message.split(b"\n\n", 1)[1]


class EHLO(unittest.TestCase):
    @defer.inlineCallbacks
    def test_mx_advertises_size_8bitmime_pipelining_smtputf8_chunking_enhancedstatuscodes(self):
        server = yield MailServer(self).start(users=USERS)

        def ehlo():
            with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
                s.ehlo("client.test")
                return s.esmtp_features

        features = yield in_thread(ehlo)
        for name in ("size", "8bitmime", "pipelining", "smtputf8", "chunking", "enhancedstatuscodes", "starttls"):
            self.assertIn(name, features)
        self.assertEqual(features["size"], str(server.config.limits["message_size"]))
        self.assertNotIn("auth", features)

    @defer.inlineCallbacks
    def test_every_reply_carries_an_enhanced_status_code(self):
        server = yield MailServer(self).start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            replies = []
            for command in (b"EHLO x", b"MAIL FROM:<a@remote.test>", b"RCPT TO:<nobody@example.test>",
                            b"RCPT TO:<alice@example.test>", b"RSET", b"NOOP", b"FOO"):
                c.send(command + b"\r\n")
                replies.append(c.smtp_reply())
            c.send(b"QUIT\r\n")
            c.smtp_reply()
            c.close()
            return replies

        replies = yield in_thread(talk)
        for code, lines in replies[1:]:
            self.assertRegex(lines[-1], r"^[245]\.\d{1,3}\.\d{1,3} ", (code, lines))
        self.assertEqual(replies[2][0], 550)
        self.assertTrue(replies[2][1][0].startswith("5.1.1"))


class Size(unittest.TestCase):
    @defer.inlineCallbacks
    def test_declared_size_over_the_limit_is_refused_at_mail(self):
        server = yield MailServer(self, extra="[limits]\nmessage_size = 1000\n").start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test> SIZE=1001\r\n")
            c.smtp_reply()
            reply = c.smtp_reply()
            c.close()
            return reply

        code, lines = yield in_thread(talk)
        self.assertEqual(code, 552)
        self.assertTrue(lines[0].startswith("5.3.4"))

    @defer.inlineCallbacks
    def test_message_growing_past_the_limit_is_refused_and_not_delivered(self):
        server = yield MailServer(self, extra="[limits]\nmessage_size = 1000\n").start(users=USERS)

        def talk():
            # No SIZE parameter: the server only learns the size while reading.
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            for _ in range(4):
                c.smtp_reply()
            c.send(b"Subject: big\r\n\r\n" + (b"x" * 68 + b"\r\n") * 20 + b".\r\n")
            reply = c.smtp_reply()
            c.close()
            return reply

        code, lines = yield in_thread(talk)
        self.assertEqual(code, 552)
        self.assertTrue(lines[0].startswith("5.3.4"))
        self.assertEqual(delivered(server, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_declared_size_under_the_limit_is_accepted(self):
        server = yield MailServer(self).start(users=USERS)

        def send():
            with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
                s.sendmail("a@remote.test", ["alice@example.test"], b"Subject: s\r\n\r\nok\r\n",
                           mail_options=["SIZE=30", "BODY=8BITMIME"])

        yield in_thread(send)
        self.assertEqual(len(delivered(server, "alice@example.test")), 1)


class Pipelining(unittest.TestCase):
    @defer.inlineCallbacks
    def test_batch_in_one_packet_answered_in_order_with_refused_recipient_in_the_middle(self):
        server = yield MailServer(self).start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\n")
            c.smtp_reply()
            c.send(
                b"MAIL FROM:<a@remote.test>\r\n"
                b"RCPT TO:<alice@example.test>\r\n"
                b"RCPT TO:<nobody@example.test>\r\n"
                b"RCPT TO:<bob@example.test>\r\n"
                b"DATA\r\n"
            )
            codes = [c.smtp_reply()[0] for _ in range(5)]
            c.send(b"Subject: p\r\n\r\npipelined\r\n.\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
            codes += [c.smtp_reply()[0] for _ in range(4)]
            c.send(b"second\r\n.\r\nQUIT\r\n")
            codes += [c.smtp_reply()[0] for _ in range(2)]
            c.close()
            return codes

        codes = yield in_thread(talk)
        self.assertEqual(codes, [250, 250, 550, 250, 354, 250, 250, 250, 354, 250, 221])
        self.assertEqual(len(delivered(server, "alice@example.test")), 1)
        self.assertEqual(len(delivered(server, "bob@example.test")), 2)


class SMTPUTF8(unittest.TestCase):
    @defer.inlineCallbacks
    def test_utf8_sender_and_headers_are_delivered_intact(self):
        server = yield MailServer(self).start(users=USERS)
        message = "From: Jörg <jörg@remote.test>\r\nSubject: Grüße\r\n\r\nHallo Bob, schön!\r\n".encode()

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\n")
            c.smtp_reply()
            c.send("MAIL FROM:<jörg@remote.test> SMTPUTF8\r\n".encode())
            first = c.smtp_reply()
            c.send(b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
            c.smtp_reply()
            c.smtp_reply()
            c.send(message + b".\r\n")
            last = c.smtp_reply()
            c.close()
            return first[0], last[0]

        codes = yield in_thread(talk)
        self.assertEqual(codes, (250, 250))
        [stored] = delivered(server, "bob@example.test")
        self.assertIn("Return-Path: <jörg@remote.test>".encode(), stored)
        self.assertIn(message.replace(b"\r\n", b"\n"), stored)
        self.assertIn(b"with UTF8SMTP", stored)

    @defer.inlineCallbacks
    def test_utf8_address_without_smtputf8_parameter_is_refused(self):
        server = yield MailServer(self).start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\n")
            c.smtp_reply()
            c.send("MAIL FROM:<jörg@remote.test>\r\n".encode())
            reply = c.smtp_reply()
            c.close()
            return reply

        code, lines = yield in_thread(talk)
        self.assertEqual(code, 553)
        self.assertIn("SMTPUTF8", lines[0])


class Chunking(unittest.TestCase):
    @defer.inlineCallbacks
    def test_bdat_chunks_make_one_message_byte_exact(self):
        server = yield MailServer(self).start(users=USERS)
        part1 = b"Subject: chunks\r\n\r\n.a line with a dot\r"
        part2 = b"\nsecond line\r\n"

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
            codes = [c.smtp_reply()[0] for _ in range(3)]
            c.send(b"BDAT %d\r\n" % len(part1) + part1)
            codes.append(c.smtp_reply()[0])
            c.send(b"BDAT %d LAST\r\n" % len(part2) + part2 + b"QUIT\r\n")
            codes += [c.smtp_reply()[0] for _ in range(2)]
            c.close()
            return codes

        codes = yield in_thread(talk)
        self.assertEqual(codes, [250, 250, 250, 250, 250, 221])
        [stored] = delivered(server, "alice@example.test")
        self.assertTrue(stored.endswith(b"Subject: chunks\n\n.a line with a dot\nsecond line\n"), stored)

    @defer.inlineCallbacks
    def test_bdat_without_mail_is_refused_and_its_octets_are_not_read_as_commands(self):
        server = yield MailServer(self).start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\n")
            c.smtp_reply()
            chunk = b"MAIL FROM:<evil@remote.test>\r\n"
            c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
            replies = [c.smtp_reply()[0] for _ in range(2)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        self.assertEqual(replies, [503, 250])


class Framing(unittest.TestCase):
    """Only <CRLF>.<CRLF> ends DATA (CVE-2023-51764 class: SMTP smuggling)."""

    VARIANTS = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\r.\r\n",
        b"\n.\r",
    ]

    @defer.inlineCallbacks
    def test_no_bare_line_end_variant_ends_data_or_smuggles_a_second_message(self):
        server = yield MailServer(self).start(users=USERS)

        def talk(variant):
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            for _ in range(4):
                c.smtp_reply()
            c.send(
                b"Subject: outer\r\n\r\nbefore" + variant
                + b"MAIL FROM:<smuggled@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                + b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n"
            )
            reply = c.smtp_reply()
            c.send(b"QUIT\r\n")
            c.smtp_reply()
            c.close()
            return reply

        for variant in self.VARIANTS:
            code, _ = yield in_thread(talk, variant)
            self.assertEqual(code, 250, variant)
        self.assertEqual(delivered(server, "bob@example.test"), [], "a smuggled message was delivered")
        self.assertEqual(len(delivered(server, "alice@example.test")), len(self.VARIANTS))

    @defer.inlineCallbacks
    def test_a_20000_character_line_rejects_the_message_and_is_never_read_as_commands(self):
        server = yield MailServer(self).start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            for _ in range(4):
                c.smtp_reply()
            c.send(b"Subject: long\r\n\r\n" + b"y" * 20000
                   + b"\r\nRSET\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nevil\r\n.\r\n")
            reply = c.smtp_reply()
            c.send(b"NOOP\r\n")
            after = c.smtp_reply()
            c.close()
            return reply, after

        (code, lines), after = yield in_thread(talk)
        self.assertEqual(code, 554)
        self.assertTrue(lines[0].startswith("5.6.0"))
        self.assertEqual(after[0], 250)
        self.assertEqual(delivered(server, "alice@example.test"), [])
        self.assertEqual(delivered(server, "bob@example.test"), [])

    @defer.inlineCallbacks
    def test_dot_stuffed_lines_are_unstuffed_once(self):
        server = yield MailServer(self).start(users=USERS)

        def send():
            with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
                s.sendmail("a@remote.test", ["alice@example.test"], b"Subject: d\r\n\r\n.\r\n..\r\n.x\r\n")

        yield in_thread(send)
        [stored] = delivered(server, "alice@example.test")
        self.assertTrue(stored.endswith(b"\n\n.\n..\n.x\n"))


class Parameters(unittest.TestCase):
    @defer.inlineCallbacks
    def test_unknown_mail_parameter_gets_555(self):
        server = yield MailServer(self).start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test> FROBNICATE=1\r\n")
            c.smtp_reply()
            reply = c.smtp_reply()
            c.close()
            return reply

        code, lines = yield in_thread(talk)
        self.assertEqual(code, 555)
        self.assertTrue(lines[0].startswith("5.5.4"))

    @defer.inlineCallbacks
    def test_null_sender_is_accepted(self):
        server = yield MailServer(self).start(users=USERS)

        def send():
            with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
                s.sendmail("<>", ["alice@example.test"], b"Subject: bounce\r\n\r\nreport\r\n")

        yield in_thread(send)
        [stored] = delivered(server, "alice@example.test")
        self.assertTrue(stored.startswith(b"Return-Path: <>\n"))

    @defer.inlineCallbacks
    def test_recipient_limit_answers_452(self):
        server = yield MailServer(self, extra="[limits]\nrecipients = 2\n").start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\n")
            c.smtp_reply()
            c.smtp_reply()
            codes = []
            for rcpt in (b"alice", b"bob", b"alice"):
                c.send(b"RCPT TO:<" + rcpt + b"@example.test>\r\n")
                codes.append(c.smtp_reply())
            c.close()
            return codes

        replies = yield in_thread(talk)
        self.assertEqual([r[0] for r in replies], [250, 250, 452])
        self.assertTrue(replies[2][1][0].startswith("4.5.3"))


class Submission(unittest.TestCase):
    @defer.inlineCallbacks
    def test_submission_adds_message_id_and_date_when_missing(self):
        server = yield MailServer(self).start(users=USERS)

        def send():
            with smtplib.SMTP("127.0.0.1", server.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "pw-alice")
                s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: no ids\r\n\r\nhi\r\n")

        yield in_thread(send)
        [stored] = delivered(server, "bob@example.test")
        msg = mailbox.MaildirMessage(stored)
        self.assertRegex(msg["Message-ID"], r"^<[0-9a-f]{32}@mail\.example\.test>$")
        self.assertIsNotNone(msg["Date"])
        self.assertIn(b"with ESMTPSA", stored)

    @defer.inlineCallbacks
    def test_submission_keeps_existing_message_id_and_date(self):
        server = yield MailServer(self).start(users=USERS)
        message = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <keep@me>\r\nSubject: ids\r\n\r\nhi\r\n"

        def send():
            with smtplib.SMTP_SSL("127.0.0.1", server.port("smtps"), context=client_tls()) as s:
                s.login("alice@example.test", "pw-alice")
                s.sendmail("alice@example.test", ["bob@example.test"], message)

        yield in_thread(send)
        [stored] = delivered(server, "bob@example.test")
        self.assertEqual(stored.count(b"Message-ID:"), 1)
        self.assertEqual(stored.count(b"Date:"), 1)
        self.assertIn(b"<keep@me>", stored)

    @defer.inlineCallbacks
    def test_authenticated_user_may_not_send_as_someone_else(self):
        server = yield MailServer(self).start(users=USERS)

        def send():
            with smtplib.SMTP_SSL("127.0.0.1", server.port("smtps"), context=client_tls()) as s:
                s.login("alice@example.test", "pw-alice")
                s.sendmail("bob@example.test", ["bob@example.test"], b"Subject: forged\r\n\r\nhi\r\n")

        e = yield self.assertFailure(in_thread(send), smtplib.SMTPSenderRefused)
        self.assertEqual(e.smtp_code, 553)

    @defer.inlineCallbacks
    def test_authenticated_user_may_send_with_a_plus_tag(self):
        server = yield MailServer(self).start(users=USERS)

        def send():
            with smtplib.SMTP_SSL("127.0.0.1", server.port("smtps"), context=client_tls()) as s:
                s.login("alice@example.test", "pw-alice")
                s.sendmail("alice+news@example.test", ["bob@example.test"], b"Subject: tag\r\n\r\nhi\r\n")

        yield in_thread(send)
        self.assertEqual(len(delivered(server, "bob@example.test")), 1)

    @defer.inlineCallbacks
    def test_restrict_sender_can_be_turned_off(self):
        server = yield MailServer(self, extra="[smtp]\nrestrict_sender = false\n").start(users=USERS)

        def send():
            with smtplib.SMTP_SSL("127.0.0.1", server.port("smtps"), context=client_tls()) as s:
                s.login("alice@example.test", "pw-alice")
                s.sendmail("newsletter@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nhi\r\n")

        yield in_thread(send)
        self.assertEqual(len(delivered(server, "bob@example.test")), 1)


class Timeouts(unittest.TestCase):
    """RFC 5321 4.5.3.2: an idle client is told 421 and disconnected."""

    @defer.inlineCallbacks
    def test_idle_client_gets_421_and_is_disconnected(self):
        server = yield MailServer(self, extra="[limits]\ncommand_timeout = 1\n").start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"), timeout=10)
            c.smtp_reply()
            reply = c.smtp_reply()  # nothing sent: the server speaks first
            closed = c.closed()
            c.close()
            return reply, closed

        (code, lines), closed = yield in_thread(talk)
        self.assertEqual(code, 421)
        self.assertTrue(lines[0].startswith("4.4.2"))
        self.assertTrue(closed)

    @defer.inlineCallbacks
    def test_stalled_data_times_out_and_delivers_nothing(self):
        server = yield MailServer(self, extra="[limits]\ndata_timeout = 1\n").start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"), timeout=10)
            c.smtp_reply()
            c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            for _ in range(4):
                c.smtp_reply()
            c.send(b"Subject: half\r\n\r\nhalf a messa")
            reply = c.smtp_reply()
            c.close()
            return reply

        code, _ = yield in_thread(talk)
        self.assertEqual(code, 421)
        self.assertEqual(delivered(server, "alice@example.test"), [])


class Junk(unittest.TestCase):
    @defer.inlineCallbacks
    def test_binary_junk_gets_500_and_the_session_survives(self):
        server = yield MailServer(self).start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"\x00\xff\xfe\x80junk\r\n\x16\x03\x01\x02\r\n")
            replies = [c.smtp_reply()[0] for _ in range(2)]
            c.send(b"EHLO x\r\n")
            replies.append(c.smtp_reply()[0])
            c.close()
            return replies

        replies = yield in_thread(talk)
        self.assertEqual(replies, [500, 500, 250])

    @defer.inlineCallbacks
    def test_a_client_that_keeps_sending_junk_is_cut_off(self):
        server = yield MailServer(self).start(users=USERS)

        def talk():
            c = LineClient(server.port("smtp"))
            c.smtp_reply()
            c.send(b"JUNK\r\n" * 25)
            codes = []
            try:
                while True:
                    codes.append(c.smtp_reply()[0])
            except (EOFError, OSError):
                pass
            c.close()
            return codes

        codes = yield in_thread(talk)
        self.assertEqual(codes[-1], 421)
        self.assertLess(len(codes), 25)
