"""
POP3 as a client sees it (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034
AUTH): the plain port with STLS and the implicit-TLS port, over loopback
with poplib and, where the exact bytes matter, a raw socket.
"""

import base64
import os
import poplib
import smtplib
import time

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.pop3.mailbox import uidl_for
from tests.helpers import LineClient, MailServer, client_tls, in_thread

USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}

# What a careless store or server would damage: leading dots (dot-stuffing),
# a "From " line (mbox quoting), 8-bit UTF-8, a 500-character line.
TRICKY = (
    "From: carol@remote.test\r\n"
    "To: alice@example.test\r\n"
    "Subject: =?utf-8?q?tricky?=\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    ".a line with one leading dot\r\n"
    "..two leading dots\r\n"
    ".\tdot and tab\r\n"
    "From the start of a line, as mbox would quote it\r\n"
    ">From already quoted\r\n"
    "Grüße aus Köln — ünïcödé ✉\r\n"
    + "L" * 500
    + "\r\n"
    "\r\n"
    "last line\r\n"
).encode("utf-8")


def message(n):
    return f"From: carol@remote.test\r\nSubject: message {n}\r\n\r\nbody {n}\r\nline two\r\nline three\r\n".encode()


def pop3s(server, user="alice@example.test", password="alice-pw"):
    p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=10)
    try:
        p.user(user)
        p.pass_(password)
    except Exception:
        p.close()
        raise
    return p


def pop3_stls(server, user="alice@example.test", password="alice-pw"):
    p = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=10)
    try:
        p.stls(context=client_tls())
        p.user(user)
        p.pass_(password)
    except Exception:
        p.close()
        raise
    return p


def raw_login(server, user="alice@example.test", password="alice-pw"):
    """A LineClient logged in over POP3S, greeting and +OK consumed."""
    c = LineClient(server.port("pop3s"), tls=True)
    assert c.line().startswith(b"+OK")
    c.send(f"USER {user}\r\nPASS {password}\r\n".encode())
    assert c.line().startswith(b"+OK")
    reply = c.line()
    assert reply.startswith(b"+OK"), reply
    return c


def capa(c):
    c.send(b"CAPA\r\n")
    status = c.line()
    assert status.startswith(b"+OK"), status
    return [line.decode().upper() for line in c.pop_multiline()]


def retrieved(lines):
    """poplib's RETR lines as bytes with CRLF line ends."""
    return b"".join(line + b"\r\n" for line in lines)


class UniqueIDs(unittest.TestCase):
    """RFC 1939 7 UIDL: 1 to 70 characters in 0x21..0x7E, the same for a message forever."""

    def assertValid(self, uid):
        self.assertTrue(1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid), uid)

    def test_a_maildir_key_is_its_own_uid_without_the_size_fields(self):
        self.assertEqual(uidl_for("1795708589.M200192P14435Q1.host,S=60,W=67"), "1795708589.M200192P14435Q1.host")

    def test_a_long_name_gets_a_short_stable_uid(self):
        key = "1700000000.M1P1Q1." + "h" * 100
        self.assertValid(uidl_for(key))
        self.assertEqual(uidl_for(key), uidl_for(key))

    def test_a_name_with_spaces_or_8bit_gets_a_valid_uid(self):
        for key in ("1700000000.with space", "1700000000.h\xf6st"):
            self.assertValid(uidl_for(key))
        self.assertNotEqual(uidl_for("1700000000.with space"), uidl_for("1700000000.h\xf6st"))


class POP3TestCase(unittest.TestCase):
    messages = 0

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self).start(users=USERS)
        for n in range(1, self.messages + 1):
            yield self.deliver(message(n))

    def deliver(self, data, to="alice@example.test"):
        def send():
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp")) as s:
                s.sendmail("carol@remote.test", [to], data)

        return in_thread(send)

    def files(self, address="alice@example.test"):
        root = self.server.maildir(address)
        return sorted(
            name for sub in ("new", "cur") if os.path.isdir(os.path.join(root, sub))
            for name in os.listdir(os.path.join(root, sub))
        )


class EndToEnd(POP3TestCase):
    """smtplib -> MX -> maildir -> poplib, byte for byte."""

    def check_tricky(self, lines):
        data = retrieved(lines)
        # Return-Path, the MX's Authentication-Results, then our Received.
        self.assertTrue(data.startswith(b"Return-Path: <carol@remote.test>\r\nAuthentication-Results: mail.example.test;"), data[:80])
        self.assertIn(b"\r\nReceived: from ", data)
        # Everything after the trace headers is exactly what the client sent.
        self.assertTrue(data.endswith(TRICKY), data)
        self.assertEqual(data.count(b"Received:"), 1)
        head = data[: len(data) - len(TRICKY)]
        self.assertIn(b"with ESMTP", head)

    @defer.inlineCallbacks
    def test_message_is_read_byte_exact_over_stls(self):
        yield self.deliver(TRICKY)

        def read():
            p = pop3_stls(self.server)
            _, lines, octets = p.retr(1)
            p.quit()
            return lines

        lines = yield in_thread(read)
        self.check_tricky(lines)

    @defer.inlineCallbacks
    def test_message_is_read_byte_exact_over_pop3s(self):
        yield self.deliver(TRICKY)

        def read():
            p = pop3s(self.server)
            _, lines, octets = p.retr(1)
            p.quit()
            return lines

        lines = yield in_thread(read)
        self.check_tricky(lines)

    @defer.inlineCallbacks
    def test_retr_on_the_wire_is_crlf_and_dot_stuffed(self):
        yield self.deliver(TRICKY)

        def read():
            c = raw_login(self.server)
            c.send(b"RETR 1\r\n")
            status = c.line()
            wire, c.buffer = c.buffer, b""
            while not wire.endswith(b"\r\n.\r\n"):
                wire += c.sock.recv(65536)
            c.close()
            return status, wire

        status, wire = yield in_thread(read)
        self.assertTrue(status.startswith(b"+OK"))
        body = wire[: -len(b".\r\n")]
        stuffed = (b"\r\n" + TRICKY).replace(b"\r\n.", b"\r\n..")[2:]
        self.assertTrue(body.endswith(stuffed), body[-700:])
        self.assertIn(b"\r\n...two leading dots\r\n", body)
        self.assertEqual(body.count(b"\n"), body.count(b"\r\n"))

    @defer.inlineCallbacks
    def test_message_larger_than_memory_spool_is_read_byte_exact(self):
        # Over 1 MB the server spools DATA to a file: the same bytes must come out.
        body = b"".join(b"%07d " % n + b"x" * 70 + b"\r\n" for n in range(40000))
        data = b"Subject: big\r\n\r\n.starts with a dot\r\n" + body
        yield self.deliver(data)

        def read():
            p = pop3s(self.server)
            size = int(p.list(1).split()[2])
            _, lines, octets = p.retr(1)
            p.quit()
            return size, retrieved(lines)

        size, got = yield in_thread(read)
        self.assertGreater(len(data), 3 * 1024 * 1024)
        self.assertTrue(got.endswith(data))
        self.assertEqual(size, len(got))

    @defer.inlineCallbacks
    def test_list_size_is_the_exact_octet_count_retrieved(self):
        yield self.deliver(TRICKY)

        def read():
            p = pop3s(self.server)
            listed = p.list(1)
            _, lines, octets = p.retr(1)
            p.quit()
            return listed, lines, octets

        listed, lines, octets = yield in_thread(read)
        size = int(listed.split()[2])
        self.assertEqual(size, len(retrieved(lines)))
        self.assertEqual(size, octets)


class Capabilities(POP3TestCase):
    """CAPA says what the session will accept, no more (RFC 2449, RFC 2595)."""

    @defer.inlineCallbacks
    def test_plain_port_before_stls_offers_stls_and_no_login(self):
        def talk():
            c = LineClient(self.server.port("pop3"))
            c.line()
            caps = capa(c)
            c.close()
            return caps

        caps = yield in_thread(talk)
        self.assertIn("STLS", caps)
        self.assertNotIn("USER", caps)
        self.assertFalse([cap for cap in caps if cap.startswith("SASL")], caps)
        for cap in ("UIDL", "TOP", "PIPELINING", "RESP-CODES"):
            self.assertIn(cap, caps)

    @defer.inlineCallbacks
    def test_plain_port_after_stls_offers_user_and_sasl_plain_not_stls(self):
        def talk():
            c = LineClient(self.server.port("pop3"))
            c.line()
            c.send(b"STLS\r\n")
            assert c.line().startswith(b"+OK")
            c.starttls()
            caps = capa(c)
            c.close()
            return caps

        caps = yield in_thread(talk)
        self.assertNotIn("STLS", caps)
        self.assertIn("USER", caps)
        self.assertIn("SASL PLAIN", caps)

    @defer.inlineCallbacks
    def test_pop3s_offers_user_and_sasl_plain_not_stls(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            caps = capa(c)
            c.close()
            return caps

        caps = yield in_thread(talk)
        self.assertNotIn("STLS", caps)
        self.assertIn("USER", caps)
        self.assertIn("SASL PLAIN", caps)

    @defer.inlineCallbacks
    def test_stls_a_second_time_is_refused(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            c.send(b"STLS\r\n")
            reply = c.line()
            c.close()
            return reply

        reply = yield in_thread(talk)
        self.assertTrue(reply.startswith(b"-ERR"), reply)


class Authentication(POP3TestCase):
    @defer.inlineCallbacks
    def test_user_is_refused_before_tls_on_the_plain_port(self):
        def talk():
            c = LineClient(self.server.port("pop3"))
            c.line()
            c.send(b"USER alice@example.test\r\nPASS alice-pw\r\nSTAT\r\n")
            replies = [c.line() for _ in range(3)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        for reply in replies:
            self.assertTrue(reply.startswith(b"-ERR"), replies)
        # RFC 2449 8.1 / RFC 3206: the AUTH response code tells the client why.
        self.assertTrue(replies[0].startswith(b"-ERR [AUTH]"), replies[0])

    @defer.inlineCallbacks
    def test_auth_plain_is_refused_before_tls_on_the_plain_port(self):
        def talk():
            c = LineClient(self.server.port("pop3"))
            c.line()
            token = base64.b64encode(b"\0alice@example.test\0alice-pw")
            c.send(b"AUTH PLAIN " + token + b"\r\nSTAT\r\n")
            replies = [c.line() for _ in range(2)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        self.assertTrue(replies[0].startswith(b"-ERR"), replies)
        self.assertTrue(replies[1].startswith(b"-ERR"), replies)

    @defer.inlineCallbacks
    def test_login_pipelined_with_commands_is_answered_in_order(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            # The password check takes a while; STAT must wait for it.
            c.send(b"USER alice@example.test\r\nPASS alice-pw\r\nSTAT\r\nQUIT\r\n")
            replies = [c.line() for _ in range(4)]
            c.close()
            return replies

        user, password, stat, quit = yield in_thread(talk)
        self.assertTrue(password.startswith(b"+OK"), password)
        self.assertEqual(stat, b"+OK 0 0")
        self.assertTrue(quit.startswith(b"+OK"), quit)

    @defer.inlineCallbacks
    def test_user_pass_after_stls_logs_in(self):
        def talk():
            p = pop3_stls(self.server)
            stat = p.stat()
            p.quit()
            return stat

        stat = yield in_thread(talk)
        self.assertEqual(stat, (0, 0))

    @defer.inlineCallbacks
    def test_auth_plain_with_initial_response_logs_in(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            token = base64.b64encode(b"\0alice@example.test\0alice-pw")
            c.send(b"AUTH PLAIN " + token + b"\r\n")
            reply = c.line()
            c.send(b"STAT\r\n")
            stat = c.line()
            c.close()
            return reply, stat

        reply, stat = yield in_thread(talk)
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertEqual(stat, b"+OK 0 0")

    @defer.inlineCallbacks
    def test_auth_plain_with_continuation_logs_in(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            c.send(b"AUTH PLAIN\r\n")
            challenge = c.line()
            c.send(base64.b64encode(b"\0alice@example.test\0alice-pw") + b"\r\n")
            reply = c.line()
            c.close()
            return challenge, reply

        challenge, reply = yield in_thread(talk)
        # RFC 5034 4: the server's challenge is "+ " and an empty one.
        self.assertEqual(challenge.rstrip(), b"+")
        self.assertTrue(reply.startswith(b"+OK"), reply)

    @defer.inlineCallbacks
    def test_auth_plain_acting_as_another_user_is_refused(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            # RFC 4616: authorize as bob with alice's credentials.
            token = base64.b64encode(b"bob@example.test\0alice@example.test\0alice-pw")
            c.send(b"AUTH PLAIN " + token + b"\r\nSTAT\r\n")
            replies = [c.line(), c.line()]
            c.close()
            return replies

        replies = yield in_thread(talk)
        self.assertTrue(replies[0].startswith(b"-ERR"), replies)
        self.assertTrue(replies[1].startswith(b"-ERR"), replies)

    @defer.inlineCallbacks
    def test_wrong_password_is_refused_with_auth_code(self):
        def talk():
            p = poplib.POP3_SSL("127.0.0.1", self.server.port("pop3s"), context=client_tls(), timeout=10)
            p.user("alice@example.test")
            try:
                p.pass_("wrong")
            finally:
                p.quit()

        e = yield self.assertFailure(in_thread(talk), poplib.error_proto)
        self.assertTrue(e.args[0].startswith(b"-ERR [AUTH]"), e.args)

    @defer.inlineCallbacks
    def test_unknown_user_is_refused_like_a_wrong_password(self):
        def talk():
            p = poplib.POP3_SSL("127.0.0.1", self.server.port("pop3s"), context=client_tls(), timeout=10)
            p.user("nobody@example.test")
            try:
                p.pass_("alice-pw")
            finally:
                p.quit()

        e = yield self.assertFailure(in_thread(talk), poplib.error_proto)
        self.assertTrue(e.args[0].startswith(b"-ERR [AUTH]"), e.args)

    @defer.inlineCallbacks
    def test_a_failed_login_can_be_followed_by_a_good_one(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            c.send(b"USER alice@example.test\r\nPASS wrong\r\n")
            replies = [c.line(), c.line()]
            c.send(b"USER alice@example.test\r\nPASS alice-pw\r\nSTAT\r\nQUIT\r\n")
            replies += [c.line() for _ in range(4)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        self.assertTrue(replies[1].startswith(b"-ERR"), replies)
        self.assertTrue(replies[3].startswith(b"+OK"), replies)
        self.assertEqual(replies[4], b"+OK 0 0")

    @defer.inlineCallbacks
    def test_password_with_spaces_is_taken_whole(self):
        # RFC 1939 7 PASS: spaces may be part of the password.
        self.server.add_user("spacey@example.test", "two  spaced words")

        def talk():
            p = pop3s(self.server, "spacey@example.test", "two  spaced words")
            stat = p.stat()
            p.quit()
            return stat

        stat = yield in_thread(talk)
        self.assertEqual(stat, (0, 0))

    @defer.inlineCallbacks
    def test_unreadable_maildrop_is_a_temporary_failure_at_login(self):
        root = self.server.maildir("alice@example.test")
        os.makedirs(os.path.dirname(root), exist_ok=True)
        with open(root, "w") as f:
            f.write("a file where the maildir should be\n")

        e = yield self.assertFailure(in_thread(pop3s, self.server), poplib.error_proto)
        self.flushLoggedErrors()
        # RFC 3206: SYS/TEMP, so the client tries again instead of asking for a new password.
        self.assertTrue(e.args[0].startswith(b"-ERR [SYS/TEMP]"), e.args)

    @defer.inlineCallbacks
    def test_transaction_commands_are_refused_before_login(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            c.send(b"STAT\r\nRETR 1\r\nDELE 1\r\n")
            replies = [c.line() for _ in range(3)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        for reply in replies:
            self.assertTrue(reply.startswith(b"-ERR"), replies)


class STLSInjection(POP3TestCase):
    """Commands pipelined after STLS in one packet are never answered (CVE-2011-0411 class)."""

    @defer.inlineCallbacks
    def test_command_pipelined_after_stls_is_discarded(self):
        def talk():
            c = LineClient(self.server.port("pop3"))
            c.line()
            c.send(b"STLS\r\nCAPA\r\n")
            status = c.line()
            c.starttls()
            # Had CAPA been kept, "+OK capability list follows" would come first.
            c.send(b"STAT\r\n")
            reply = c.line()
            c.close()
            return status, reply

        status, reply = yield in_thread(talk)
        self.assertTrue(status.startswith(b"+OK"))
        self.assertTrue(reply.startswith(b"-ERR"), reply)

    @defer.inlineCallbacks
    def test_credentials_pipelined_after_stls_do_not_log_in(self):
        def talk():
            c = LineClient(self.server.port("pop3"))
            c.line()
            c.send(b"STLS\r\nUSER alice@example.test\r\nPASS alice-pw\r\n")
            c.line()
            c.starttls()
            c.send(b"STAT\r\n")
            reply = c.line()
            c.close()
            return reply

        reply = yield in_thread(talk)
        self.assertTrue(reply.startswith(b"-ERR"), reply)


class Transaction(POP3TestCase):
    """STAT, LIST, UIDL, TOP, RETR, DELE, RSET, NOOP, QUIT (RFC 1939 5, 6, 7)."""

    messages = 3

    @defer.inlineCallbacks
    def test_stat_counts_messages_and_octets(self):
        def talk():
            p = pop3s(self.server)
            stat = p.stat()
            sizes = [len(retrieved(p.retr(n)[1])) for n in (1, 2, 3)]
            p.quit()
            return stat, sizes

        stat, sizes = yield in_thread(talk)
        self.assertEqual(stat, (3, sum(sizes)))

    @defer.inlineCallbacks
    def test_list_numbers_messages_in_arrival_order(self):
        def talk():
            p = pop3s(self.server)
            _, listing, _ = p.list()
            subjects = [next(l for l in p.top(n, 0)[1] if l.startswith(b"Subject:")) for n in (1, 2, 3)]
            p.quit()
            return listing, subjects

        listing, subjects = yield in_thread(talk)
        self.assertEqual([l.split()[0] for l in listing], [b"1", b"2", b"3"])
        self.assertEqual(subjects, [b"Subject: message 1", b"Subject: message 2", b"Subject: message 3"])

    @defer.inlineCallbacks
    def test_list_of_a_missing_message_is_an_error(self):
        def talk():
            p = pop3s(self.server)
            try:
                return p.list(4)
            finally:
                p.quit()

        e = yield self.assertFailure(in_thread(talk), poplib.error_proto)
        self.assertTrue(e.args[0].startswith(b"-ERR"))

    @defer.inlineCallbacks
    def test_uidl_is_stable_across_sessions(self):
        def uidls():
            p = pop3s(self.server)
            _, lines, _ = p.uidl()
            one = p.uidl(2)
            p.quit()
            return lines, one

        first, one = yield in_thread(uidls)
        second, _ = yield in_thread(uidls)
        self.assertEqual(first, second)
        ids = [line.split()[1] for line in first]
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual(one.split()[1:], first[1].split())
        for uid in ids:
            # RFC 1939 7: 1 to 70 characters in the range 0x21 to 0x7E.
            self.assertTrue(1 <= len(uid) <= 70 and all(0x21 <= b <= 0x7E for b in uid), uid)

    @defer.inlineCallbacks
    def test_uidl_survives_retrieval_marking_the_message_seen(self):
        def read_all():
            p = pop3s(self.server)
            lines = p.uidl()[1]
            for n in (1, 2, 3):
                p.retr(n)
            p.quit()
            return lines

        def uidls():
            p = pop3s(self.server)
            lines = p.uidl()[1]
            p.quit()
            return lines

        before = yield in_thread(read_all)
        after = yield in_thread(uidls)
        self.assertEqual(before, after)

    @defer.inlineCallbacks
    def test_top_zero_returns_headers_and_the_blank_line(self):
        def talk():
            p = pop3s(self.server)
            lines = p.top(1, 0)[1]
            p.quit()
            return lines

        lines = yield in_thread(talk)
        self.assertEqual(lines[-1], b"")
        self.assertIn(b"Subject: message 1", lines)
        self.assertNotIn(b"body 1", lines)

    @defer.inlineCallbacks
    def test_top_n_returns_the_first_n_body_lines(self):
        def talk():
            p = pop3s(self.server)
            lines = p.top(1, 2)[1]
            p.quit()
            return lines

        lines = yield in_thread(talk)
        self.assertEqual(lines[-3:], [b"", b"body 1", b"line two"])

    @defer.inlineCallbacks
    def test_top_past_the_end_returns_the_whole_message(self):
        def talk():
            p = pop3s(self.server)
            top = p.top(1, 100)[1]
            whole = p.retr(1)[1]
            p.quit()
            return top, whole

        top, whole = yield in_thread(talk)
        self.assertEqual(top, whole)

    @defer.inlineCallbacks
    def test_dele_hides_the_message_for_the_rest_of_the_session(self):
        def talk():
            p = pop3s(self.server)
            p.dele(2)
            stat = p.stat()
            listing = [l.split()[0] for l in p.list()[1]]
            try:
                p.retr(2)
                retr = None
            except poplib.error_proto as e:
                retr = e.args[0]
            p.quit()
            return stat, listing, retr

        stat, listing, retr = yield in_thread(talk)
        self.assertEqual(stat[0], 2)
        self.assertEqual(listing, [b"1", b"3"])
        self.assertTrue(retr.startswith(b"-ERR"), retr)

    @defer.inlineCallbacks
    def test_dele_is_applied_at_quit(self):
        def talk():
            p = pop3s(self.server)
            p.dele(1)
            p.quit()
            p = pop3s(self.server)
            stat = p.stat()
            subject = [l for l in p.top(1, 0)[1] if l.startswith(b"Subject:")]
            p.quit()
            return stat, subject

        stat, subject = yield in_thread(talk)
        self.assertEqual(stat[0], 2)
        self.assertEqual(subject, [b"Subject: message 2"])
        self.assertEqual(len(self.files()), 2)

    @defer.inlineCallbacks
    def test_dropped_session_deletes_nothing(self):
        def talk():
            p = pop3s(self.server)
            p.dele(1)
            p.dele(2)
            p.sock.close()  # no QUIT: RFC 1939 6, no UPDATE state

        before = self.files()
        yield in_thread(talk)

        def count():
            p = pop3s(self.server)
            stat = p.stat()
            p.quit()
            return stat

        stat = yield in_thread(count)
        self.assertEqual(stat[0], 3)
        self.assertEqual(self.files(), before)

    @defer.inlineCallbacks
    def test_uidl_and_list_leave_out_deleted_messages(self):
        def talk():
            p = pop3s(self.server)
            all_uidls = p.uidl()[1]
            p.dele(1)
            uidls = p.uidl()[1]
            listing = p.list()[1]
            p.quit()
            return all_uidls, uidls, listing

        all_uidls, uidls, listing = yield in_thread(talk)
        self.assertEqual(uidls, all_uidls[1:])
        self.assertEqual([l.split()[0] for l in listing], [b"2", b"3"])

    @defer.inlineCallbacks
    def test_two_sessions_deleting_the_same_message_both_quit_cleanly(self):
        def talk():
            p, q = pop3s(self.server), pop3s(self.server)
            p.dele(1)
            q.dele(1)
            first = p.quit()
            second = q.quit()
            r = pop3s(self.server)
            stat = r.stat()
            r.quit()
            return first, second, stat

        first, second, stat = yield in_thread(talk)
        self.assertTrue(first.startswith(b"+OK"), first)
        self.assertTrue(second.startswith(b"+OK"), second)
        self.assertEqual(stat[0], 2)

    @defer.inlineCallbacks
    def test_rset_undeletes(self):
        def talk():
            p = pop3s(self.server)
            p.dele(1)
            p.rset()
            stat = p.stat()
            p.quit()
            return stat

        stat = yield in_thread(talk)
        self.assertEqual(stat[0], 3)
        self.assertEqual(len(self.files()), 3)

    @defer.inlineCallbacks
    def test_dele_twice_is_an_error(self):
        def talk():
            p = pop3s(self.server)
            p.dele(1)
            try:
                p.dele(1)
            finally:
                p.quit()

        yield self.assertFailure(in_thread(talk), poplib.error_proto)

    @defer.inlineCallbacks
    def test_noop_answers_ok(self):
        def talk():
            p = pop3s(self.server)
            reply = p.noop()
            p.quit()
            return reply

        reply = yield in_thread(talk)
        self.assertTrue(reply.startswith(b"+OK"))

    @defer.inlineCallbacks
    def test_message_delivered_during_a_session_appears_in_the_next(self):
        def first():
            p = pop3s(self.server)
            return p, p.stat()[0]

        p, during = yield in_thread(first)
        yield self.deliver(message(4))

        def finish():
            # RFC 1939: the maildrop is fixed for the session.
            stat = p.stat()[0]
            p.quit()
            q = pop3s(self.server)
            later = q.stat()[0]
            q.quit()
            return stat, later

        stat, later = yield in_thread(finish)
        self.assertEqual((during, stat, later), (3, 3, 4))

    @defer.inlineCallbacks
    def test_pipelined_commands_are_answered_in_order(self):
        def talk():
            c = raw_login(self.server)
            c.send(b"STAT\r\nLIST\r\nUIDL 1\r\nNOOP\r\nTOP 1 0\r\nBOGUS\r\nLIST 2\r\nQUIT\r\n")
            stat = c.line()
            listing = (c.line(), c.pop_multiline())
            uidl = c.line()
            noop = c.line()
            top = (c.line(), c.pop_multiline())
            bogus = c.line()
            list2 = c.line()
            quit = c.line()
            c.close()
            return stat, listing, uidl, noop, top, bogus, list2, quit

        stat, listing, uidl, noop, top, bogus, list2, quit = yield in_thread(talk)
        self.assertTrue(stat.startswith(b"+OK 3 "), stat)
        self.assertEqual(len(listing[1]), 3)
        self.assertTrue(uidl.startswith(b"+OK 1 "), uidl)
        self.assertTrue(noop.startswith(b"+OK"), noop)
        self.assertIn(b"Subject: message 1", top[1])
        self.assertTrue(bogus.startswith(b"-ERR"), bogus)
        self.assertTrue(list2.startswith(b"+OK 2 "), list2)
        self.assertTrue(quit.startswith(b"+OK"), quit)


class BadInput(POP3TestCase):
    messages = 1

    @defer.inlineCallbacks
    def test_oversize_command_line_is_refused_and_the_session_continues(self):
        def talk():
            c = raw_login(self.server)
            c.send(b"NOOP " + b"x" * 5000 + b"\r\nSTAT\r\n")
            replies = [c.line(), c.line()]
            c.close()
            return replies

        long_line, stat = yield in_thread(talk)
        self.assertTrue(long_line.startswith(b"-ERR"), long_line)
        self.assertTrue(stat.startswith(b"+OK 1 "), stat)

    @defer.inlineCallbacks
    def test_oversize_line_is_not_executed_in_pieces(self):
        def talk():
            c = raw_login(self.server)
            # The tail of an over-long line arrives on its own: it is still
            # part of that line, never a command.
            c.send(b"NOOP " + b"x" * 5000)
            time.sleep(0.2)
            c.send(b"DELE 1\r\nQUIT\r\n")
            replies = [c.line() for _ in range(2)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        self.assertTrue(replies[0].startswith(b"-ERR"), replies)
        # Had "DELE 1" been obeyed, QUIT would have deleted the message.
        self.assertEqual(len(self.files()), 1)

    @defer.inlineCallbacks
    def test_oversize_line_in_one_packet_is_one_error(self):
        def talk():
            c = raw_login(self.server)
            c.send(b"NOOP " + b"x" * 5000 + b"DELE 1\r\nSTAT\r\nQUIT\r\n")
            replies = [c.line() for _ in range(3)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        self.assertTrue(replies[0].startswith(b"-ERR"), replies)
        self.assertTrue(replies[1].startswith(b"+OK 1 "), replies)
        self.assertEqual(len(self.files()), 1)

    @defer.inlineCallbacks
    def test_binary_junk_is_refused_and_the_session_continues(self):
        def talk():
            c = raw_login(self.server)
            c.send(b"\x00\xff\xfe\x80junk\r\n\x1b[2J\r\nSTAT\r\n")
            replies = [c.line() for _ in range(3)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        self.assertTrue(replies[0].startswith(b"-ERR"), replies)
        self.assertTrue(replies[1].startswith(b"-ERR"), replies)
        self.assertTrue(replies[2].startswith(b"+OK 1 "), replies)

    @defer.inlineCallbacks
    def test_client_that_keeps_sending_junk_is_disconnected(self):
        def talk():
            c = LineClient(self.server.port("pop3s"), tls=True)
            c.line()
            c.send(b"JUNK\r\n" * 50)
            return c.closed(wait=5)

        closed = yield in_thread(talk)
        self.assertTrue(closed)

    @defer.inlineCallbacks
    def test_bad_message_numbers_are_errors(self):
        def talk():
            c = raw_login(self.server)
            c.send(b"RETR 0\r\nRETR 2\r\nRETR x\r\nTOP 1 -1\r\nDELE\r\nSTAT\r\n")
            replies = [c.line() for _ in range(6)]
            c.close()
            return replies

        replies = yield in_thread(talk)
        for reply in replies[:5]:
            self.assertTrue(reply.startswith(b"-ERR"), replies)
        self.assertTrue(replies[5].startswith(b"+OK 1 "), replies)
