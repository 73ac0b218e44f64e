"""
Logs an operator can grep (issue 12, item 2): one line per message per
outcome (`accepted` with the queue id the 250 answer gives, `refused` with
code, reason and recipient), one line per failed login and per lockout,
read from the server's log over real sockets.
"""

import imaplib
import poplib
import re
import smtplib

from twisted.internet import defer
from twisted.trial import unittest

from mailplat import oplog
from mailplat.interfaces import TemporaryFailure
from tests.helpers import MailServer, client_tls, collect_log, in_thread

USERS = {"alice@example.test": "alice-pw"}
MESSAGE = b"From: carol@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"


def lines(log, what):
    return [t for t in log if t.startswith(what + " ")]


class LineFormat(unittest.TestCase):
    def test_fields_are_key_value_in_the_order_given(self):
        self.assertEqual(oplog.line("refused", code=550, rcpt="<a@b>"), "refused code=550 rcpt=<a@b>")

    def test_a_value_with_spaces_is_quoted(self):
        self.assertEqual(oplog.line("refused", reason="no such user"), 'refused reason="no such user"')

    def test_none_is_a_dash_and_booleans_are_yes_or_no(self):
        self.assertEqual(oplog.line("accepted", user=None, tls=True), "accepted user=- tls=yes")

    def test_lists_are_comma_separated(self):
        self.assertEqual(oplog.line("accepted", rcpts=["<a@b>", "<c@d>"]), "accepted rcpts=<a@b>,<c@d>")

    def test_queue_ids_are_unique_and_upper_case_hex(self):
        ids = {oplog.new_queue_id() for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        self.assertTrue(all(re.fullmatch(r"[0-9A-F]{16,}", i) for i in ids))


class OperatorLog(unittest.TestCase):
    listeners = ("smtp", "submission", "pop3s", "imaps")
    extra = "\n[limits]\nmessage_size = 2000\nauth_failures = 3\nauth_failure_delay = 0\n"

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=self.listeners, extra=self.extra).start(users=USERS)
        self.log = collect_log(self)

    def port(self, name):
        return self.server.port(name)

    @defer.inlineCallbacks
    def test_an_accepted_message_is_one_line_with_the_queue_id_of_the_250(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.ehlo("client.test")
                s.mail("carol@remote.test")
                s.rcpt("alice@example.test")
                return s.data(MESSAGE)

        code, text = yield in_thread(send)
        self.assertEqual(code, 250)
        queue_id = re.search(rb"accepted for delivery as ([0-9A-F]+)$", text).group(1).decode()
        accepted = lines(self.log, "accepted")
        self.assertEqual(len(accepted), 1, self.log)
        self.assertRegex(
            accepted[0],
            rf"^accepted id={queue_id} port=mx client=\[127.0.0.1\] client_name=- helo=client.test tls=no user=- "
            r"from=<carol@remote.test> size=\d+ nrcpt=1 rcpts=<alice@example.test> folder=-$",
        )

    @defer.inlineCallbacks
    def test_an_unknown_recipient_is_a_refused_line_with_code_reason_and_recipient(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.ehlo("client.test")
                s.mail("carol@remote.test")
                return s.rcpt("nobody@example.test")

        code, _ = yield in_thread(send)
        self.assertEqual(code, 550)
        refused = lines(self.log, "refused")
        self.assertEqual(len(refused), 1, self.log)
        self.assertRegex(refused[0], r"^refused id=[0-9A-F]+ code=550 status=5.1.1 stage=rcpt port=mx client=\[127.0.0.1\] ")
        self.assertIn("from=<carol@remote.test> rcpt=<nobody@example.test>", refused[0])
        self.assertIn("reason=", refused[0])

    @defer.inlineCallbacks
    def test_relay_refused_on_the_mx_port_is_logged(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.ehlo("client.test")
                s.mail("carol@remote.test")
                return s.rcpt("dave@elsewhere.test")

        code, _ = yield in_thread(send)
        self.assertEqual(code, 554)
        [refused] = lines(self.log, "refused")
        self.assertIn("code=554 status=5.7.1 stage=rcpt", refused)
        self.assertIn("rcpt=<dave@elsewhere.test>", refused)
        self.assertIn('reason="relay access denied: elsewhere.test is not handled here"', refused)

    @defer.inlineCallbacks
    def test_a_refused_sender_on_submission_names_the_user_and_the_sender(self):
        self.server.add_user("bob@example.test", "bob-pw")

        def send():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "alice-pw")
                return s.mail("bob@example.test")

        code, _ = yield in_thread(send)
        self.assertEqual(code, 553)
        [refused] = lines(self.log, "refused")
        self.assertIn("code=553 status=5.7.1 stage=mail port=submission", refused)
        self.assertIn("user=alice@example.test from=<bob@example.test> rcpt=-", refused)

    @defer.inlineCallbacks
    def test_a_message_too_big_is_refused_at_data(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.ehlo("client.test")
                s.mail("carol@remote.test")
                s.rcpt("alice@example.test")
                return s.data(MESSAGE + b"x" * 3000 + b"\r\n")

        code, _ = yield in_thread(send)
        self.assertEqual(code, 552)
        [refused] = lines(self.log, "refused")
        self.assertIn("code=552 status=5.3.4 stage=data", refused)
        self.assertEqual(lines(self.log, "accepted"), [])

    @defer.inlineCallbacks
    def test_a_failed_pop3_login_is_one_line(self):
        def login():
            c = poplib.POP3_SSL("127.0.0.1", self.port("pop3s"), context=client_tls(), timeout=10)
            try:
                c.user("alice@example.test")
                c.pass_("wrong")
            finally:
                c.close()

        yield self.assertFailure(in_thread(login), poplib.error_proto)
        [failed] = lines(self.log, "login-failed")
        self.assertEqual(
            failed,
            'login-failed protocol=pop3 client=[127.0.0.1] user=alice@example.test reason="bad credentials" failures=1/3',
        )

    @defer.inlineCallbacks
    def test_a_failed_imap_login_is_one_line(self):
        def login():
            c = imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), ssl_context=client_tls(), timeout=10)
            try:
                c.login("alice@example.test", "wrong")
            finally:
                c.shutdown()

        yield self.assertFailure(in_thread(login), imaplib.IMAP4.error)
        [failed] = lines(self.log, "login-failed")
        self.assertIn("login-failed protocol=imap client=[127.0.0.1] user=alice@example.test", failed)

    @defer.inlineCallbacks
    def test_a_failed_smtp_login_is_one_line(self):
        def login():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.starttls(context=client_tls())
                s.ehlo()
                s.user, s.password = "alice@example.test", "wrong"
                s.auth("PLAIN", s.auth_plain)  # one mechanism: smtplib's login() tries each

        yield self.assertFailure(in_thread(login), smtplib.SMTPAuthenticationError)
        [failed] = lines(self.log, "login-failed")
        self.assertIn("login-failed protocol=smtp client=[127.0.0.1] user=alice@example.test", failed)

    @defer.inlineCallbacks
    def test_a_lockout_is_one_line_and_each_login_refused_after_it_one_more(self):
        def login():
            c = poplib.POP3_SSL("127.0.0.1", self.port("pop3s"), context=client_tls(), timeout=10)
            try:
                c.user("alice@example.test")
                c.pass_("wrong")
            finally:
                c.close()

        for _ in range(4):
            yield self.assertFailure(in_thread(login), poplib.error_proto)
        self.assertEqual(
            lines(self.log, "lockout"), ["lockout client=[127.0.0.1] failures=3 seconds=600 last_user=alice@example.test"]
        )
        failed = lines(self.log, "login-failed")
        self.assertEqual(len(failed), 4, failed)
        self.assertIn('reason="locked out"', failed[3])


class ServerSideFailures(unittest.TestCase):
    """A 4xx caused by our side (here: a passwd-file that cannot be read) is logged with the reason, every time."""

    @defer.inlineCallbacks
    def setUp(self):
        import os

        self.server = yield MailServer(self, listeners=("smtp", "pop3s")).start(users=USERS)
        self.log = collect_log(self)
        users = os.path.join(self.server.state, "users")
        os.remove(users)
        os.mkdir(users)  # read() now fails: "Is a directory"

    def port(self, name):
        return self.server.port(name)

    @defer.inlineCallbacks
    def test_a_login_answered_with_a_temporary_failure_is_logged_with_the_reason(self):
        def login():
            c = poplib.POP3_SSL("127.0.0.1", self.port("pop3s"), context=client_tls(), timeout=10)
            try:
                c.user("alice@example.test")
                c.pass_("alice-pw")
            finally:
                c.close()

        for _ in range(2):
            yield self.assertFailure(in_thread(login), poplib.error_proto)
        tempfails = lines(self.log, "login-tempfail")
        self.assertEqual(len(tempfails), 2, self.log)
        self.assertEqual(
            tempfails[0],
            'login-tempfail protocol=pop3 client=[127.0.0.1] user=alice@example.test '
            'reason="cannot read passwd-file: Is a directory"',
        )

    @defer.inlineCallbacks
    def test_a_recipient_answered_with_451_is_a_refused_line_with_the_reason(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.ehlo("client.test")
                s.mail("carol@remote.test")
                return s.rcpt("alice@example.test")

        code, _ = yield in_thread(send)
        self.assertEqual(code, 451)
        [refused] = lines(self.log, "refused")
        self.assertIn("code=451", refused)
        self.assertIn('rcpt=<alice@example.test> check=- reason="cannot read passwd-file: Is a directory"', refused)


TWO_USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}


def send_to(port, recipients, message=MESSAGE):
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.ehlo("client.test")
        s.mail("carol@remote.test")
        for r in recipients:
            s.rcpt(r)
        return s.data(message)


class _TwoUsers(unittest.TestCase):
    extra = ""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=("smtp",), extra=self.extra).start(users=TWO_USERS)
        self.log = collect_log(self)


class DeliveryLines(_TwoUsers):
    """One `delivered` or `delivery-failed` line per local recipient, written by the fan-out."""

    @defer.inlineCallbacks
    def test_a_message_to_two_users_is_two_delivered_lines_with_the_id_of_the_250(self):
        code, text = yield in_thread(send_to, self.server.port("smtp"), ["alice@example.test", "bob@example.test"])
        self.assertEqual(code, 250)
        queue_id = re.search(rb"accepted for delivery as ([0-9A-F]+)$", text).group(1).decode()
        delivered = lines(self.log, "delivered")
        self.assertEqual(len(delivered), 2, self.log)
        for line, rcpt in zip(delivered, ("alice@example.test", "bob@example.test")):
            self.assertRegex(line, rf"^delivered id={queue_id} rcpt=<{rcpt}> mailbox=INBOX backend=maildir delay=\d+\.\d{{3}}$")
        self.assertEqual(lines(self.log, "delivery-failed"), [])

    @defer.inlineCallbacks
    def test_a_plus_tag_names_the_folder_asked_for(self):
        code, _ = yield in_thread(send_to, self.server.port("smtp"), ["alice+lists@example.test"])
        self.assertEqual(code, 250)
        [delivered] = lines(self.log, "delivered")
        # rcpt is the final mailbox; the folder is the one the tag asked for.
        self.assertIn(" rcpt=<alice@example.test> mailbox=lists backend=maildir ", delivered)

    @defer.inlineCallbacks
    def test_a_copy_that_cannot_be_written_is_a_delivery_failed_line_per_recipient(self):
        import os

        # bob's mail directory is a file: his copy fails, alice's is taken back (all or nothing).
        path = self.server.maildir("bob@example.test")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("not a maildir")
        code, _ = yield in_thread(send_to, self.server.port("smtp"), ["alice@example.test", "bob@example.test"])
        self.assertEqual(code, 451)
        self.flushLoggedErrors(TemporaryFailure)  # the store's failure, logged by the local agent
        self.assertEqual(lines(self.log, "delivered"), [])
        failed = lines(self.log, "delivery-failed")
        self.assertEqual(len(failed), 2, self.log)
        self.assertRegex(failed[0], r"^delivery-failed id=[0-9A-F]+ rcpt=<alice@example.test> mailbox=INBOX backend=maildir "
                                    r"outcome=deferred code=451 status=4\.\d\.\d reason=\"copy taken back: ")
        self.assertRegex(failed[1], r"^delivery-failed id=[0-9A-F]+ rcpt=<bob@example.test> mailbox=INBOX backend=maildir "
                                    r"outcome=deferred code=451 status=4\.\d\.\d reason=")


class DeliveryLinesWithAJunkCheck(_TwoUsers):
    extra = """
[checks]
enabled = ["junk"]

[checks.junk]
plugin = "header"
header = "X-Spam-Flag"
match = "^yes$"
action = "folder"
folder = "Junk"
"""

    @defer.inlineCallbacks
    def test_a_message_a_check_files_into_junk_is_delivered_to_junk(self):
        message = b"From: carol@remote.test\r\nX-Spam-Flag: yes\r\nSubject: hi\r\n\r\nhello\r\n"
        code, _ = yield in_thread(send_to, self.server.port("smtp"), ["alice@example.test", "bob@example.test"], message)
        self.assertEqual(code, 250)
        delivered = lines(self.log, "delivered")
        self.assertEqual(len(delivered), 2, self.log)
        for line in delivered:
            self.assertIn(" mailbox=Junk backend=maildir ", line)
