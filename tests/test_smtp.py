"""
The SMTP listeners as a client sees them: the MX port (local mail only),
submission (STARTTLS, then AUTH) and SMTPS (implicit TLS, then AUTH).
Real clients over loopback: smtplib where it suffices, raw sockets where the
exact bytes or their order matter.
"""

import base64
import glob
import os
import smtplib
import socket
import ssl
import time

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.helpers import LineClient, MailServer, client_tls, in_thread

USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}
MESSAGE = b"From: carol@remote.test\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nHello, Alice.\r\n"


def stored(server, address):
    """The bytes of every message in the user's INBOX (new/ and cur/), oldest first."""
    root = server.maildir(address)
    paths = glob.glob(os.path.join(root, "new", "*")) + glob.glob(os.path.join(root, "cur", "*"))
    out = []
    for path in sorted(paths, key=os.path.getmtime):
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def leftovers(server, address):
    """Files in the user's tmp/ (a finished delivery leaves none)."""
    return glob.glob(os.path.join(server.maildir(address), "tmp", "*"))


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def ehlo_extensions(client):
    """EHLO over a LineClient; the extension keywords, upper-cased."""
    client.send(b"EHLO client.test\r\n")
    code, lines = client.smtp_reply()
    assert code == 250, (code, lines)
    return [line.upper() for line in lines[1:]]


def open_session(port, ehlo=True, tls=False):
    """A LineClient past the greeting (and EHLO)."""
    c = LineClient(port, tls=tls)
    code, _ = c.smtp_reply()
    assert code == 220
    if ehlo:
        ehlo_extensions(c)
    return c


def starttls(c):
    c.send(b"STARTTLS\r\n")
    code, lines = c.smtp_reply()
    assert code == 220, (code, lines)
    c.starttls()
    return ehlo_extensions(c)


def command(c, line):
    c.send(line + b"\r\n")
    return c.smtp_reply()


class SMTPTestCase(unittest.TestCase):
    listeners = None
    extra = ""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=self.listeners, extra=self.extra).start(users=USERS)

    def port(self, name):
        return self.server.port(name)

    def run_client(self, f, *args):
        return in_thread(f, *args)


class MXDelivery(SMTPTestCase):
    """Port 25: mail for users of the local domains, from anyone."""

    @defer.inlineCallbacks
    def test_message_for_local_user_is_stored_in_new(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE)

        yield self.run_client(send)
        new = os.listdir(os.path.join(self.server.maildir("alice@example.test"), "new"))
        self.assertEqual(len(new), 1)
        [data] = stored(self.server, "alice@example.test")
        # Stored with LF line ends, the client's bytes otherwise unchanged.
        self.assertTrue(data.endswith(MESSAGE.replace(b"\r\n", b"\n")), data)
        self.assertEqual(leftovers(self.server, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_return_path_then_received_with_esmtp_are_added_on_top(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.ehlo("client.remote.test")
                s.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE)

        yield self.run_client(send)
        [data] = stored(self.server, "alice@example.test")
        lines = data.split(b"\n")
        self.assertEqual(lines[0], b"Return-Path: <carol@remote.test>")
        # The MX's Authentication-Results (mailplat.auth.verify), then our Received.
        self.assertTrue(lines[1].startswith(b"Authentication-Results: mail.example.test;"), lines[1])
        at = next(i for i, line in enumerate(lines) if line.startswith(b"Received: "))
        self.assertTrue(lines[at].startswith(b"Received: from client.remote.test ([127.0.0.1])"), lines[at])
        received = b" ".join(l.strip() for l in lines[at : at + 3])
        # RFC 3848: plain ESMTP, no TLS, no AUTH.
        self.assertIn(b" with ESMTP", received)
        self.assertNotIn(b"ESMTPS", received)
        self.assertNotIn(b"ESMTPA", received)
        self.assertIn(b"by mail.example.test", received)

    @defer.inlineCallbacks
    def test_starttls_on_mx_records_esmtps(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.starttls(context=client_tls())
                s.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE)

        yield self.run_client(send)
        [data] = stored(self.server, "alice@example.test")
        head = data.split(MESSAGE[:10])[0]
        self.assertIn(b" with ESMTPS", head)
        self.assertNotIn(b"ESMTPSA", head)

    @defer.inlineCallbacks
    def test_null_sender_is_accepted_and_recorded_as_empty_return_path(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("<>", ["alice@example.test"], MESSAGE)

        yield self.run_client(send)
        [data] = stored(self.server, "alice@example.test")
        self.assertTrue(data.startswith(b"Return-Path: <>\n"), data[:40])

    @defer.inlineCallbacks
    def test_recipient_domain_and_local_part_are_case_insensitive(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                return s.sendmail("carol@remote.test", ["Alice@EXAMPLE.Test"], MESSAGE)

        refused = yield self.run_client(send)
        self.assertEqual(refused, {})
        self.assertEqual(len(stored(self.server, "alice@example.test")), 1)

    @defer.inlineCallbacks
    def test_one_message_to_two_users_reaches_both(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test", "bob@example.test"], MESSAGE)

        yield self.run_client(send)
        self.assertEqual(len(stored(self.server, "alice@example.test")), 1)
        self.assertEqual(len(stored(self.server, "bob@example.test")), 1)

    @defer.inlineCallbacks
    def test_received_names_the_recipient_only_when_there_is_one(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE)
                s.sendmail("carol@remote.test", ["alice@example.test", "bob@example.test"], MESSAGE)

        yield self.run_client(send)
        single, several = stored(self.server, "alice@example.test")
        self.assertIn(b"for <alice@example.test>", single.split(MESSAGE[:10])[0])
        # A Bcc recipient must not be named in the copy the others get.
        head = several.split(MESSAGE[:10])[0]
        self.assertNotIn(b"bob@example.test", head)
        self.assertNotIn(b"alice@example.test", head)

    @defer.inlineCallbacks
    def test_the_same_recipient_twice_gets_one_copy(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test", "ALICE@example.test"], MESSAGE)

        yield self.run_client(send)
        self.assertEqual(len(stored(self.server, "alice@example.test")), 1)

    @defer.inlineCallbacks
    def test_parallel_deliveries_each_get_their_own_file(self):
        def send(n):
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE + b"copy %d\r\n" % n)

        yield defer.gatherResults([self.run_client(send, n) for n in range(20)])
        copies = stored(self.server, "alice@example.test")
        self.assertEqual(sorted(c.rsplit(b"copy ", 1)[1] for c in copies), sorted(b"%d\n" % n for n in range(20)))

    @defer.inlineCallbacks
    def test_unknown_user_is_refused_at_rcpt_with_550_5_1_1(self):
        def talk():
            c = open_session(self.port("smtp"))
            self.assertEqual(command(c, b"MAIL FROM:<carol@remote.test>")[0], 250)
            code, lines = command(c, b"RCPT TO:<nobody@example.test>")
            c.close()
            return code, lines

        code, lines = yield self.run_client(talk)
        self.assertEqual(code, 550)
        self.assertTrue(lines[0].startswith("5.1.1"), lines)

    @defer.inlineCallbacks
    def test_unknown_user_does_not_stop_delivery_to_the_others(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                return s.sendmail("carol@remote.test", ["nobody@example.test", "alice@example.test"], MESSAGE)

        refused = yield self.run_client(send)
        self.assertEqual(list(refused), ["nobody@example.test"])
        self.assertEqual(refused["nobody@example.test"][0], 550)
        self.assertEqual(len(stored(self.server, "alice@example.test")), 1)
        self.assertFalse(os.path.exists(self.server.maildir("nobody@example.test")))

    @defer.inlineCallbacks
    def test_relay_to_a_remote_domain_is_refused_with_554_5_7_1(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            reply = command(c, b"RCPT TO:<dave@elsewhere.test>")
            c.close()
            return reply

        code, lines = yield self.run_client(talk)
        self.assertEqual(code, 554)
        self.assertTrue(lines[0].startswith("5.7.1"), lines)

    @defer.inlineCallbacks
    def test_auth_is_neither_offered_nor_accepted_on_mx(self):
        def talk():
            c = open_session(self.port("smtp"), ehlo=False)
            before = ehlo_extensions(c)
            after = starttls(c)
            reply = command(c, b"AUTH PLAIN " + plain("alice@example.test", "alice-pw").encode())
            c.close()
            return before, after, reply

        before, after, (code, _) = yield self.run_client(talk)
        self.assertFalse([e for e in before + after if e.startswith("AUTH")], (before, after))
        self.assertEqual(code // 100, 5)

    @defer.inlineCallbacks
    def test_ehlo_advertises_size_8bitmime_pipelining_starttls(self):
        def talk():
            c = open_session(self.port("smtp"), ehlo=False)
            ext = ehlo_extensions(c)
            c.close()
            return ext

        ext = yield self.run_client(talk)
        for keyword in ("8BITMIME", "PIPELINING", "STARTTLS", "ENHANCEDSTATUSCODES"):
            self.assertIn(keyword, ext)
        self.assertTrue([e for e in ext if e.startswith("SIZE ")], ext)


class Submission(SMTPTestCase):
    """Port 587: STARTTLS, then AUTH, then mail (RFC 6409, RFC 4954)."""

    @defer.inlineCallbacks
    def test_auth_is_not_offered_before_starttls(self):
        def talk():
            c = open_session(self.port("submission"), ehlo=False)
            ext = ehlo_extensions(c)
            c.close()
            return ext

        ext = yield self.run_client(talk)
        self.assertIn("STARTTLS", ext)
        self.assertFalse([e for e in ext if e.startswith("AUTH")], ext)

    @defer.inlineCallbacks
    def test_auth_is_refused_before_starttls(self):
        def talk():
            c = open_session(self.port("submission"))
            reply = command(c, b"AUTH PLAIN " + plain("alice@example.test", "alice-pw").encode())
            c.close()
            return reply

        code, lines = yield self.run_client(talk)
        # RFC 4954 6: 538 encryption required for requested authentication mechanism
        self.assertEqual(code, 538, lines)

    @defer.inlineCallbacks
    def test_auth_plain_and_login_are_offered_after_starttls(self):
        def talk():
            c = open_session(self.port("submission"))
            ext = starttls(c)
            c.close()
            return ext

        ext = yield self.run_client(talk)
        [auth] = [e for e in ext if e.startswith("AUTH ")]
        self.assertEqual(set(auth.split()[1:]), {"PLAIN", "LOGIN"})
        self.assertNotIn("STARTTLS", ext)

    @defer.inlineCallbacks
    def test_mail_without_auth_is_refused_with_530_before_tls(self):
        def talk():
            c = open_session(self.port("submission"))
            reply = command(c, b"MAIL FROM:<alice@example.test>")
            c.close()
            return reply

        code, lines = yield self.run_client(talk)
        self.assertEqual(code, 530, lines)

    @defer.inlineCallbacks
    def test_mail_without_auth_is_refused_with_530_after_tls(self):
        def talk():
            c = open_session(self.port("submission"))
            starttls(c)
            reply = command(c, b"MAIL FROM:<alice@example.test>")
            c.close()
            return reply

        code, lines = yield self.run_client(talk)
        self.assertEqual(code, 530, lines)

    @defer.inlineCallbacks
    def test_wrong_password_is_refused_with_535(self):
        def talk():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "wrong")

        e = yield self.assertFailure(self.run_client(talk), smtplib.SMTPAuthenticationError)
        self.assertEqual(e.smtp_code, 535)

    @defer.inlineCallbacks
    def test_authenticated_client_delivers_locally_recorded_as_esmtpsa(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "alice-pw")
                s.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)

        yield self.run_client(send)
        [data] = stored(self.server, "bob@example.test")
        self.assertTrue(data.startswith(b"Return-Path: <alice@example.test>\n"))
        self.assertIn(b" with ESMTPSA", data.split(MESSAGE[:10])[0])

    @defer.inlineCallbacks
    def test_non_local_recipient_is_told_relay_is_not_configured(self):
        def talk():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "alice-pw")
                s.mail("alice@example.test")
                return s.rcpt("dave@elsewhere.test")

        code, text = yield self.run_client(talk)
        self.assertEqual(code // 100, 5, text)
        self.assertIn(b"relay", text.lower())
        self.assertIn(b"not configured", text.lower())

    @defer.inlineCallbacks
    def test_unknown_local_user_is_refused_at_rcpt_on_submission(self):
        def talk():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "alice-pw")
                s.mail("alice@example.test")
                return s.rcpt("nobody@example.test")

        code, text = yield self.run_client(talk)
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.1.1"), text)

    @defer.inlineCallbacks
    def test_second_auth_in_a_session_is_refused(self):
        def talk():
            c = open_session(self.port("submission"))
            starttls(c)
            first = command(c, b"AUTH PLAIN " + plain("alice@example.test", "alice-pw").encode())
            second = command(c, b"AUTH PLAIN " + plain("bob@example.test", "bob-pw").encode())
            c.close()
            return first, second

        first, second = yield self.run_client(talk)
        self.assertEqual(first[0], 235)
        self.assertEqual(second[0], 503)

    @defer.inlineCallbacks
    def test_auth_plain_without_initial_response_takes_a_continuation(self):
        def talk():
            c = open_session(self.port("submission"))
            starttls(c)
            challenge = command(c, b"AUTH PLAIN")
            answer = command(c, plain("alice@example.test", "alice-pw").encode())
            c.close()
            return challenge, answer

        challenge, answer = yield self.run_client(talk)
        self.assertEqual(challenge[0], 334)
        self.assertEqual(answer[0], 235)

    @defer.inlineCallbacks
    def test_auth_cancelled_with_star_is_501(self):
        def talk():
            c = open_session(self.port("submission"))
            starttls(c)
            command(c, b"AUTH LOGIN")
            cancelled = command(c, b"*")
            noop = command(c, b"NOOP")
            c.close()
            return cancelled, noop

        cancelled, noop = yield self.run_client(talk)
        # RFC 4954 4: a "*" cancels the exchange with 501.
        self.assertEqual(cancelled[0], 501)
        self.assertEqual(noop[0], 250)


class PlaintextAuthAllowed(SMTPTestCase):
    """[tls] allow_plaintext_auth = true: AUTH without TLS, recorded as ESMTPA."""

    listeners = ("submission",)
    extra = "\n[tls]\nallow_plaintext_auth = true\n"

    @defer.inlineCallbacks
    def test_auth_without_tls_is_recorded_as_esmtpa(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.login("alice@example.test", "alice-pw")
                s.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)

        yield self.run_client(send)
        [data] = stored(self.server, "bob@example.test")
        head = data.split(MESSAGE[:10])[0]
        self.assertIn(b" with ESMTPA", head)
        self.assertNotIn(b"ESMTPSA", head)


class SMTPS(SMTPTestCase):
    """Port 465: implicit TLS (RFC 8314), AUTH required."""

    @defer.inlineCallbacks
    def test_ehlo_offers_auth_and_not_starttls(self):
        def talk():
            c = open_session(self.port("smtps"), ehlo=False, tls=True)
            ext = ehlo_extensions(c)
            c.close()
            return ext

        ext = yield self.run_client(talk)
        self.assertNotIn("STARTTLS", ext)
        self.assertTrue([e for e in ext if e.startswith("AUTH ")], ext)

    @defer.inlineCallbacks
    def test_auth_plain_then_delivery_recorded_as_esmtpsa(self):
        def send():
            with smtplib.SMTP_SSL("127.0.0.1", self.port("smtps"), context=client_tls()) as s:
                s.ehlo()
                s.auth("PLAIN", lambda challenge=None: "\0alice@example.test\0alice-pw")
                s.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)

        yield self.run_client(send)
        [data] = stored(self.server, "bob@example.test")
        self.assertIn(b" with ESMTPSA", data.split(MESSAGE[:10])[0])

    @defer.inlineCallbacks
    def test_auth_login_succeeds(self):
        def talk():
            with smtplib.SMTP_SSL("127.0.0.1", self.port("smtps"), context=client_tls()) as s:
                s.ehlo()
                s.user, s.password = "alice@example.test", "alice-pw"
                return s.auth("LOGIN", s.auth_login, initial_response_ok=False)

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 235)

    @defer.inlineCallbacks
    def test_mail_without_auth_is_refused_with_530(self):
        def talk():
            c = open_session(self.port("smtps"), tls=True)
            reply = command(c, b"MAIL FROM:<alice@example.test>")
            c.close()
            return reply

        code, lines = yield self.run_client(talk)
        self.assertEqual(code, 530, lines)

    @defer.inlineCallbacks
    def test_wrong_password_is_refused_with_535(self):
        def talk():
            with smtplib.SMTP_SSL("127.0.0.1", self.port("smtps"), context=client_tls()) as s:
                s.login("alice@example.test", "wrong")

        e = yield self.assertFailure(self.run_client(talk), smtplib.SMTPAuthenticationError)
        self.assertEqual(e.smtp_code, 535)


class STARTTLSInjection(SMTPTestCase):
    """
    CVE-2011-0411: commands sent in the same packet as STARTTLS must not be
    answered after the handshake (RFC 3207 4.2).
    """

    def injected(self, port_name):
        def talk():
            c = open_session(self.port(port_name))
            c.send(b"STARTTLS\r\nRSET\r\n")
            code, _ = c.smtp_reply()
            assert code == 220, code
            c.starttls()
            # If RSET had been kept, its "250 2.0.0 OK" would come first.
            c.send(b"EHLO after.test\r\n")
            reply = c.smtp_reply()
            c.close()
            return reply

        return self.run_client(talk)

    @defer.inlineCallbacks
    def test_command_pipelined_after_starttls_is_discarded_on_mx(self):
        code, lines = yield self.injected("smtp")
        self.assertEqual(code, 250)
        self.assertTrue(lines[0].startswith("mail.example.test Hello after.test"), lines)

    @defer.inlineCallbacks
    def test_command_pipelined_after_starttls_is_discarded_on_submission(self):
        code, lines = yield self.injected("submission")
        self.assertEqual(code, 250)
        self.assertTrue(lines[0].startswith("mail.example.test Hello after.test"), lines)

    @defer.inlineCallbacks
    def test_injected_mail_transaction_is_not_carried_into_tls(self):
        def talk():
            c = open_session(self.port("smtp"))
            c.send(b"STARTTLS\r\nMAIL FROM:<carol@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
            c.smtp_reply()
            c.starttls()
            c.send(b"EHLO after.test\r\n")
            c.smtp_reply()
            # The injected MAIL never happened: RCPT is out of sequence.
            reply = command(c, b"RCPT TO:<alice@example.test>")
            c.close()
            return reply

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 503)


class Sequence(SMTPTestCase):
    """Commands out of order and pipelined commands (RFC 5321 4.1.4, RFC 2920)."""

    listeners = ("smtp",)

    @defer.inlineCallbacks
    def test_rcpt_before_mail_is_503(self):
        def talk():
            c = open_session(self.port("smtp"))
            reply = command(c, b"RCPT TO:<alice@example.test>")
            c.close()
            return reply

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 503)

    @defer.inlineCallbacks
    def test_data_before_mail_is_503(self):
        def talk():
            c = open_session(self.port("smtp"))
            reply = command(c, b"DATA")
            c.close()
            return reply

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 503)

    @defer.inlineCallbacks
    def test_data_before_any_accepted_rcpt_is_refused(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            command(c, b"RCPT TO:<nobody@example.test>")
            reply = command(c, b"DATA")
            noop = command(c, b"NOOP")
            c.close()
            return reply, noop

        (code, _), noop = yield self.run_client(talk)
        # RFC 5321 3.3: 503 (out of sequence) or 554 (no valid recipients); never 354.
        self.assertIn(code, (503, 554))
        self.assertEqual(noop[0], 250)

    @defer.inlineCallbacks
    def test_mail_before_ehlo_is_503(self):
        def talk():
            c = open_session(self.port("smtp"), ehlo=False)
            reply = command(c, b"MAIL FROM:<carol@remote.test>")
            c.close()
            return reply

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 503)

    @defer.inlineCallbacks
    def test_helo_is_accepted_in_place_of_ehlo(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.helo("old.client.test")
                s.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE)

        yield self.run_client(send)
        [data] = stored(self.server, "alice@example.test")
        # RFC 3848: HELO is plain SMTP.
        self.assertIn(b"Received: from old.client.test", data)

    @defer.inlineCallbacks
    def test_ehlo_without_a_domain_is_501(self):
        def talk():
            c = open_session(self.port("smtp"), ehlo=False)
            reply = command(c, b"EHLO")
            c.close()
            return reply

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 501)

    @defer.inlineCallbacks
    def test_nested_mail_is_503(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            reply = command(c, b"MAIL FROM:<carol@remote.test>")
            c.close()
            return reply

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 503)

    @defer.inlineCallbacks
    def test_rset_ends_the_transaction(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            rset = command(c, b"RSET")
            rcpt = command(c, b"RCPT TO:<alice@example.test>")
            c.close()
            return rset, rcpt

        rset, rcpt = yield self.run_client(talk)
        self.assertEqual(rset[0], 250)
        self.assertEqual(rcpt[0], 503)

    @defer.inlineCallbacks
    def test_pipelined_transaction_is_answered_in_order(self):
        def talk():
            c = open_session(self.port("smtp"))
            c.send(
                b"MAIL FROM:<carol@remote.test>\r\n"
                b"RCPT TO:<nobody@example.test>\r\n"
                b"RCPT TO:<alice@example.test>\r\n"
                b"RCPT TO:<dave@elsewhere.test>\r\n"
                b"DATA\r\n"
            )
            codes = [c.smtp_reply()[0] for _ in range(5)]
            c.send(MESSAGE + b".\r\nQUIT\r\n")
            codes += [c.smtp_reply()[0], c.smtp_reply()[0]]
            c.close()
            return codes

        codes = yield self.run_client(talk)
        self.assertEqual(codes, [250, 550, 250, 554, 354, 250, 221])
        self.assertEqual(len(stored(self.server, "alice@example.test")), 1)


class BadInput(SMTPTestCase):
    """Junk, oversize input and broken clients never cost a message or the session."""

    listeners = ("smtp",)
    extra = "\n[limits]\nmessage_size = 20000\n"

    @defer.inlineCallbacks
    def test_oversize_command_line_is_500_and_the_session_continues(self):
        def talk():
            c = open_session(self.port("smtp"))
            long_line = command(c, b"NOOP " + b"x" * 20000)
            noop = command(c, b"NOOP")
            c.close()
            return long_line, noop

        long_line, noop = yield self.run_client(talk)
        self.assertEqual(long_line[0], 500)
        self.assertEqual(noop[0], 250)

    @defer.inlineCallbacks
    def test_oversize_command_line_is_not_executed_in_pieces(self):
        limit = self.server.config.limits["line_length"]

        def talk():
            c = open_session(self.port("smtp"))
            # Were a line cut at the limit, its tail would be read as QUIT:
            # put QUIT at each place near the limit where a cut could fall.
            for offset in range(-2, 3):
                c.send(b"NOOP " + b"x" * (limit - 5 + offset) + b"QUIT\r\n")
            c.send(b"NOOP\r\n")
            codes = [c.smtp_reply()[0] for _ in range(6)]
            c.close()
            return codes

        codes = yield self.run_client(talk)
        self.assertEqual(codes, [500] * 5 + [250])

    @defer.inlineCallbacks
    def test_tail_of_an_oversize_line_in_a_later_packet_is_not_a_command(self):
        def talk():
            c = open_session(self.port("smtp"))
            c.send(b"NOOP " + b"x" * 20000)
            time.sleep(0.2)
            c.send(b"QUIT\r\nNOOP\r\n")
            codes = [c.smtp_reply()[0] for _ in range(2)]
            c.close()
            return codes

        codes = yield self.run_client(talk)
        self.assertEqual(codes, [500, 250])

    @defer.inlineCallbacks
    def test_binary_junk_is_refused_and_the_session_continues(self):
        def talk():
            c = open_session(self.port("smtp"))
            c.send(b"\x00\xff\xfe\x80 junk \x01\x02\r\n\x1b[31m\r\n")
            replies = [c.smtp_reply()[0] for _ in range(2)]
            replies.append(command(c, b"NOOP")[0])
            c.close()
            return replies

        codes = yield self.run_client(talk)
        self.assertEqual([c // 100 for c in codes[:2]], [5, 5])
        self.assertEqual(codes[2], 250)

    @defer.inlineCallbacks
    def test_client_that_keeps_sending_junk_is_disconnected(self):
        def talk():
            c = open_session(self.port("smtp"))
            c.send(b"JUNK\r\n" * 50)
            return c.closed(wait=5)

        closed = yield self.run_client(talk)
        self.assertTrue(closed)

    @defer.inlineCallbacks
    def test_message_over_the_size_limit_is_552_and_not_stored(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            command(c, b"RCPT TO:<alice@example.test>")
            command(c, b"DATA")
            c.send(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 30 + b".\r\n")
            reply = c.smtp_reply()
            noop = command(c, b"NOOP")
            c.close()
            return reply, noop

        (code, lines), noop = yield self.run_client(talk)
        self.assertEqual(code, 552, lines)
        self.assertEqual(noop[0], 250)
        self.assertEqual(stored(self.server, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_declared_size_over_the_limit_is_552_at_mail(self):
        def talk():
            c = open_session(self.port("smtp"))
            reply = command(c, b"MAIL FROM:<carol@remote.test> SIZE=30000")
            c.close()
            return reply

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 552)

    @defer.inlineCallbacks
    def test_long_line_in_data_is_never_executed_as_commands(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            command(c, b"RCPT TO:<alice@example.test>")
            command(c, b"DATA")
            # Twisted's own framing replays the rest of an over-long line as
            # commands; here all of it, and what follows, is message text.
            c.send(b"Subject: x\r\n\r\n" + b"z" * 20000 + b"RSET\r\nQUIT\r\nNOOP\r\n.\r\n")
            end_of_data = c.smtp_reply()
            noop = command(c, b"NOOP")
            c.close()
            return end_of_data, noop

        (code, lines), (noop_code, noop_lines) = yield self.run_client(talk)
        self.assertNotEqual(code, 221)
        self.assertIn(code // 100, (2, 5), lines)
        # The next reply belongs to our NOOP, not to a replayed RSET/QUIT/NOOP.
        self.assertEqual((noop_code, noop_lines), (250, ["2.0.0 OK"]))

    @defer.inlineCallbacks
    def test_long_line_in_data_split_across_packets_is_never_executed_as_commands(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            command(c, b"RCPT TO:<alice@example.test>")
            command(c, b"DATA")
            c.send(b"Subject: x\r\n\r\n" + b"z" * 20000)
            time.sleep(0.2)
            c.send(b"\r\nQUIT\r\n.\r\n")
            end_of_data = c.smtp_reply()
            noop = command(c, b"NOOP")
            c.close()
            return end_of_data, noop

        (code, lines), noop = yield self.run_client(talk)
        self.assertNotEqual(code, 221)
        self.assertEqual(noop, (250, ["2.0.0 OK"]))

    @defer.inlineCallbacks
    def test_client_dropping_mid_data_leaves_nothing_in_the_maildir(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            command(c, b"RCPT TO:<alice@example.test>")
            command(c, b"DATA")
            c.send(b"Subject: half\r\n\r\nthe first half\r\n")
            c.close()

        yield self.run_client(talk)
        # Wait for the server to notice the close, then deliver something
        # after it: any work the close started has gone through the same
        # thread pool first.
        while self.server.sessions():
            yield deferLater(reactor, 0.01, lambda: None)

        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["bob@example.test"], MESSAGE)

        yield self.run_client(send)
        self.assertEqual(stored(self.server, "alice@example.test"), [])
        self.assertEqual(leftovers(self.server, "alice@example.test"), [])
        self.assertEqual(glob.glob(os.path.join(self.server.state, "tmp", "*")), [])

    @defer.inlineCallbacks
    def test_lone_lf_dot_does_not_end_data(self):
        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            command(c, b"RCPT TO:<alice@example.test>")
            command(c, b"DATA")
            # SMTP smuggling (CVE-2023-51764): only CRLF.CRLF ends the data.
            c.send(b"Subject: a\r\n\r\nbody\n.\nMAIL FROM:<x@y.test>\r\n.\r\n")
            reply = c.smtp_reply()
            c.close()
            return reply

        code, _ = yield self.run_client(talk)
        self.assertEqual(code, 250)
        [data] = stored(self.server, "alice@example.test")
        self.assertIn(b"MAIL FROM:<x@y.test>", data)


class StoreFailures(SMTPTestCase):
    """An unwritable maildir is a temporary failure: 451, never 250, never a lost copy."""

    listeners = ("smtp",)

    def break_maildir(self, address):
        # Tests run as root, so permissions stop nothing: put a file where
        # the maildir directory should be.
        path = self.server.maildir(address)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("not a directory\n")

    @defer.inlineCallbacks
    def test_unwritable_maildir_is_451_4_x_x(self):
        self.break_maildir("alice@example.test")

        def talk():
            c = open_session(self.port("smtp"))
            command(c, b"MAIL FROM:<carol@remote.test>")
            command(c, b"RCPT TO:<alice@example.test>")
            command(c, b"DATA")
            c.send(MESSAGE + b".\r\n")
            reply = c.smtp_reply()
            noop = command(c, b"NOOP")
            c.close()
            return reply, noop

        (code, lines), noop = yield self.run_client(talk)
        self.flushLoggedErrors()
        self.assertEqual(code, 451, lines)
        self.assertTrue(lines[0].startswith("4."), lines)
        self.assertEqual(noop[0], 250)

    @defer.inlineCallbacks
    def test_failure_for_one_recipient_takes_back_the_other_copies(self):
        self.break_maildir("bob@example.test")

        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test", "bob@example.test"], MESSAGE)

        e = yield self.assertFailure(self.run_client(send), smtplib.SMTPDataError)
        self.flushLoggedErrors()
        self.assertEqual(e.smtp_code, 451)
        # The client will send again to both: alice must not get it twice.
        self.assertEqual(stored(self.server, "alice@example.test"), [])


class Certificate(SMTPTestCase):
    """STARTTLS and implicit TLS present the configured certificate (made on first start)."""

    listeners = ("submission", "smtps")

    def verifying_context(self):
        return ssl.create_default_context(cafile=self.server.config.tls_certificate)

    @defer.inlineCallbacks
    def test_starttls_presents_a_certificate_for_the_hostname(self):
        def talk():
            c = open_session(self.port("submission"))
            command(c, b"STARTTLS")
            c.starttls(self.verifying_context(), server_hostname="mail.example.test")
            version = c.sock.version()
            reply = command(c, b"EHLO client.test")
            c.close()
            return version, reply

        version, (code, _) = yield self.run_client(talk)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(code, 250)

    @defer.inlineCallbacks
    def test_implicit_tls_presents_the_same_certificate(self):
        def connect():
            sock = socket.create_connection(("127.0.0.1", self.port("smtps")), timeout=10)
            with self.verifying_context().wrap_socket(sock, server_hostname="mail.example.test") as tls:
                return tls.version()

        version = yield self.run_client(connect)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
