"""
IMAP end to end: the real server (SMTP in, IMAP/IMAPS out) over the real
maildir store, driven by imaplib and imapclient over sockets.
"""

import datetime
import imaplib
import mailbox
import os
import smtplib
import time

import imapclient
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, in_thread, in_thread_closing
from tests.imap_support import RawClient

ALICE = "alice@example.test"
LISTENERS = ("smtp", "imap", "imaps")
MESSAGE = b"From: Bob <bob@example.org>\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nline one\r\nline two\r\n"


@defer.inlineCallbacks
def drain(server):
    """Let closed sessions end and the store write its index before the files go."""
    for _ in range(200):
        if not server.sessions():
            break
        yield deferLater(reactor, 0.01, lambda: None)
    store = server.service.backends.store
    if hasattr(store, "close"):
        yield store.close()


class IMAPTestCase(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=LISTENERS).start(users={ALICE: "pw"})
        self.addCleanup(drain, self.server)

    def imaps(self):
        """A logged-in imapclient over implicit TLS."""
        c = imapclient.IMAPClient("127.0.0.1", self.server.port("imaps"), ssl=True, ssl_context=client_tls(), timeout=10)
        self.clients.append(c)
        c.login(ALICE, "pw")
        return c

    def imaplib(self):
        c = imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=10)
        self.clients.append(c)
        c.login(ALICE, "pw")
        return c

    def send(self, body=MESSAGE):
        def run():
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
                s.sendmail("bob@example.org", [ALICE], body)

        return run()

    def check(self, f):
        """Run a blocking client scenario in a thread; its assertions fail the test."""
        self.clients = []
        return in_thread_closing(f, self.clients)


class Login(IMAPTestCase):
    def test_starttls_then_login_on_the_plain_port(self):
        def run():
            c = imaplib.IMAP4("127.0.0.1", self.server.port("imap"), timeout=10)
            self.assertIn("LOGINDISABLED", c.capabilities)
            c.starttls(client_tls())
            self.assertNotIn("LOGINDISABLED", c.capabilities)
            self.assertEqual(c.login(ALICE, "pw")[0], "OK")
            c.logout()

        return self.check(run)

    def test_login_is_refused_before_starttls(self):
        def run():
            c = imaplib.IMAP4("127.0.0.1", self.server.port("imap"), timeout=10)
            with self.assertRaises(imaplib.IMAP4.error):
                c.login(ALICE, "pw")
            c.logout()

        return self.check(run)

    def test_command_injected_before_the_tls_handshake_is_ignored(self):
        def run():
            c = RawClient(self.server.port("imap"))
            try:
                c.send(b"a1 STARTTLS\r\na2 LOGIN alice@example.test pw\r\n")
                answer = c.line()
                c.starttls()
                after = c.command(b"a3 CAPABILITY")
            finally:
                c.close()
            self.assertTrue(answer.startswith(b"a1 OK"))
            self.assertEqual([l.split(b" ")[0] for l in after], [b"*", b"a3"])
            self.assertIn(b"AUTH=PLAIN", after[0])

        return self.check(run)

    def test_wrong_password_is_refused(self):
        def run():
            c = imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=10)
            with self.assertRaises(imaplib.IMAP4.error):
                c.login(ALICE, "wrong")

        return self.check(run)

    def test_capabilities_after_login(self):
        def run():
            c = self.imaps()
            caps = set(c.capabilities())
            for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"ID", b"ENABLE", b"SPECIAL-USE", b"LITERAL+", b"NAMESPACE", b"LIST-STATUS"):
                self.assertIn(cap, caps)

        return self.check(run)


class Folders(IMAPTestCase):
    def test_new_user_has_special_use_folders(self):
        def run():
            folders = {name: set(flags) for flags, _, name in self.imaps().list_folders()}
            self.assertIn("INBOX", folders)
            for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
                self.assertIn(("\\" + name).encode(), folders[name])

        return self.check(run)

    def test_create_rename_delete(self):
        def run():
            c = self.imaps()
            c.create_folder("Projects.2025")
            c.rename_folder("Projects.2025", "Projects.Done")
            names = [n for _, _, n in c.list_folders()]
            self.assertIn("Projects.Done", names)
            self.assertNotIn("Projects.2025", names)
            c.delete_folder("Projects.Done")
            self.assertNotIn("Projects.Done", [n for _, _, n in c.list_folders()])

        return self.check(run)

    def test_create_existing_folder_is_no(self):
        def run():
            with self.assertRaises(imapclient.exceptions.IMAPClientError):
                self.imaps().create_folder("Sent")

        return self.check(run)

    def test_subscribe_and_lsub(self):
        def run():
            c = self.imaps()
            c.create_folder("Lists")
            c.subscribe_folder("Lists")
            self.assertIn("Lists", [n for _, _, n in c.list_sub_folders()])
            c.unsubscribe_folder("Lists")
            self.assertNotIn("Lists", [n for _, _, n in c.list_sub_folders()])

        return self.check(run)

    def test_status(self):
        def run():
            c = self.imaps()
            c.append("Archive", MESSAGE)
            status = c.folder_status("Archive", [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"])
            self.assertEqual(status[b"MESSAGES"], 1)
            self.assertEqual(status[b"UNSEEN"], 1)
            self.assertEqual(status[b"UIDNEXT"], 2)

        return self.check(run)

    def test_list_returns_status_of_each_folder(self):
        # RFC 5819: what a client shows beside each folder, in one command.
        def run():
            c = self.imaplib()
            c.append("Archive", None, None, MESSAGE)
            typ, _ = c._simple_command("LIST", '""', "*", "RETURN", "(STATUS (MESSAGES UNSEEN))")
            self.assertEqual(typ, "OK")
            typ, statuses = c._untagged_response(typ, None, "STATUS")
            self.assertIn(b'Archive (MESSAGES 1 UNSEEN 1)', [s.replace(b'"', b"") for s in statuses])
            self.assertEqual(len(statuses), 6)

        return self.check(run)

    def test_namespace(self):
        def run():
            ns = self.imaps().namespace()
            self.assertEqual(ns.personal, (("", "."),))

        return self.check(run)

    def test_id_and_enable(self):
        def run():
            c = self.imaps()
            self.assertIn(b"mailplat", c.id_({"name": "test"})[0])
            self.assertEqual(c.enable("CONDSTORE"), [b"CONDSTORE"])  # RFC 7162 3.1

        return self.check(run)


class Select(IMAPTestCase):
    def test_select_reports_uidnext_permanentflags_and_unseen(self):
        def run():
            c = self.imaps()
            c.append("INBOX", MESSAGE, flags=[imapclient.SEEN])
            c.append("INBOX", MESSAGE)
            info = c.select_folder("INBOX")
            self.assertEqual(info[b"EXISTS"], 2)
            self.assertEqual(info[b"UIDNEXT"], 3)
            self.assertIn(b"\\*", info[b"PERMANENTFLAGS"])
            self.assertEqual(info[b"UNSEEN"], [b"2"] if isinstance(info[b"UNSEEN"], list) else 2)
            self.assertTrue(info[b"READ-WRITE"])

        return self.check(run)

    def test_examine_is_read_only(self):
        def run():
            c = self.imaps()
            c.append("INBOX", MESSAGE)
            c.select_folder("INBOX", readonly=True)
            with self.assertRaises(imapclient.exceptions.IMAPClientError):
                c.add_flags([1], [imapclient.FLAGGED])

        return self.check(run)


class Recent(IMAPTestCase):
    """RFC 3501 2.3.2, 6.3.2, 6.3.10: \\Recent counted by STATUS, shown by EXAMINE, claimed by SELECT."""

    def test_status_counts_new_mail_before_anyone_selects(self):
        def run():
            c = self.imaps()
            self.assertEqual(c.folder_status("INBOX", [b"RECENT"])[b"RECENT"], 0)
            self.send()
            self.assertEqual(c.folder_status("INBOX", [b"RECENT"])[b"RECENT"], 1)
            self.assertEqual(self.imaps().folder_status("INBOX", [b"RECENT"])[b"RECENT"], 1)

        return self.check(run)

    def test_examine_shows_recent_and_a_later_select_still_gets_it(self):
        def run():
            self.send()
            a = self.imaps()
            self.assertEqual(a.select_folder("INBOX", readonly=True)[b"RECENT"], 1)
            self.assertIn(b"\\Recent", a.get_flags([1])[1])
            b = self.imaps()
            self.assertEqual(b.select_folder("INBOX")[b"RECENT"], 1)
            self.assertIn(b"\\Recent", b.get_flags([1])[1])

        return self.check(run)

    def test_status_counts_none_once_a_select_claimed_it(self):
        def run():
            self.send()
            self.imaps().select_folder("INBOX")
            self.assertEqual(self.imaps().folder_status("INBOX", [b"RECENT"])[b"RECENT"], 0)

        return self.check(run)


class Fetch(IMAPTestCase):
    def test_append_and_fetch_are_byte_exact(self):
        def run():
            c = self.imaps()
            c.append("INBOX", MESSAGE)
            c.select_folder("INBOX")
            got = c.fetch([1], [b"BODY.PEEK[]", b"RFC822.SIZE"])[1]
            self.assertEqual(got[b"BODY[]"], MESSAGE)
            self.assertEqual(got[b"RFC822.SIZE"], len(MESSAGE))

        return self.check(run)

    def test_partial_fetch_is_truncated(self):
        def run():
            c = self.imaplib()
            c.append("INBOX", None, None, MESSAGE)
            c.select("INBOX")
            typ, data = c.fetch("1", "(BODY.PEEK[]<6.3>)")
            self.assertEqual(data[0][0], b"1 (BODY[]<6> {3}")
            self.assertEqual(data[0][1], MESSAGE[6:9])

        return self.check(run)

    def test_body_fetch_sets_seen_and_peek_does_not(self):
        def run():
            c = self.imaps()
            c.append("INBOX", MESSAGE)
            c.select_folder("INBOX")
            c.fetch([1], [b"BODY.PEEK[TEXT]"])
            self.assertNotIn(imapclient.SEEN, c.get_flags([1])[1])
            c.fetch([1], [b"BODY[TEXT]"])
            self.assertIn(imapclient.SEEN, c.get_flags([1])[1])

        return self.check(run)

    def test_raw_utf8_header_is_served(self):
        message = "Subject: Grüße aus Köln\r\nFrom: x@example.org\r\n\r\nhallo\r\n".encode()

        def run():
            c = self.imaps()
            c.append("INBOX", message)
            c.select_folder("INBOX")
            got = c.fetch([1], [b"ENVELOPE", b"BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])[1]
            self.assertEqual(got[b"ENVELOPE"].subject, "Grüße aus Köln".encode())
            self.assertEqual(got[b"BODY[HEADER.FIELDS (SUBJECT)]"], "Subject: Grüße aus Köln\r\n\r\n".encode())

        return self.check(run)

    def test_bodystructure_of_multipart(self):
        message = (
            b"Subject: parts\r\nContent-Type: multipart/alternative; boundary=zz\r\n\r\n"
            b"--zz\r\nContent-Type: text/plain\r\n\r\nplain\r\n--zz\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--zz--\r\n"
        )

        def run():
            c = self.imaps()
            c.append("INBOX", message)
            c.select_folder("INBOX")
            bs = c.fetch([1], [b"BODYSTRUCTURE"])[1][b"BODYSTRUCTURE"]
            self.assertTrue(bs.is_multipart)
            self.assertEqual(bs[1], b"alternative".upper())
            html = c.fetch([1], [b"BODY.PEEK[2]"])[1][b"BODY[2]"]
            self.assertEqual(html, b"<p>html</p>")

        return self.check(run)

    def test_internaldate_given_to_append_is_kept(self):
        when = datetime.datetime(2024, 3, 1, 12, 30, 0, tzinfo=datetime.timezone.utc)

        def run():
            c = self.imaps()
            c.append("INBOX", MESSAGE, msg_time=when)
            c.select_folder("INBOX")
            got = c.fetch([1], [b"INTERNALDATE"])[1][b"INTERNALDATE"]
            self.assertEqual(got.astimezone(datetime.timezone.utc).replace(tzinfo=None) if got.tzinfo else got, datetime.datetime(2024, 3, 1, 12, 30))

        return self.check(run)


class Append(IMAPTestCase):
    def test_append_without_flags_answers_appenduid(self):
        def run():
            c = self.imaplib()
            typ, data = c.append("INBOX", None, None, MESSAGE)
            self.assertEqual(typ, "OK")
            self.assertTrue(data[0].startswith(b"[APPENDUID "))
            self.assertTrue(data[0].split()[2].startswith(b"1]"))

        return self.check(run)

    def test_append_with_flags_keeps_them(self):
        def run():
            c = self.imaps()
            c.append("INBOX", MESSAGE, flags=[imapclient.FLAGGED, b"$Work"])
            c.select_folder("INBOX")
            flags = set(c.get_flags([1])[1])
            self.assertEqual(flags & {imapclient.FLAGGED, b"$Work"}, {imapclient.FLAGGED, b"$Work"})

        return self.check(run)

    def test_append_to_missing_folder_says_trycreate(self):
        def run():
            c = self.imaplib()
            typ, data = c.append("Nowhere", None, None, MESSAGE)
            self.assertEqual(typ, "NO")
            self.assertIn(b"[TRYCREATE]", data[0])

        return self.check(run)


class Store(IMAPTestCase):
    def test_store_flags_and_keywords_survive_a_new_session(self):
        def run():
            c = self.imaps()
            c.append("INBOX", MESSAGE)
            c.select_folder("INBOX")
            c.add_flags([1], [imapclient.ANSWERED, b"$Label1"])
            c.remove_flags([1], [imapclient.ANSWERED])
            d = self.imaps()
            d.select_folder("INBOX")
            self.assertEqual(set(d.get_flags([1])[1]), {b"$Label1"})

        return self.check(run)

    def test_search_keys(self):
        def run():
            c = self.imaps()
            c.append("INBOX", MESSAGE, flags=[imapclient.SEEN])
            c.append("INBOX", b"Subject: other\r\nFrom: carol@example.org\r\n\r\nneedle here\r\n")
            c.select_folder("INBOX")
            self.assertEqual(c.search(["SUBJECT", "hello"]), [1])
            self.assertEqual(c.search(["FROM", "carol"]), [2])
            self.assertEqual(c.search(["BODY", "needle"]), [2])
            self.assertEqual(c.search(["UNSEEN"]), [2])
            self.assertEqual(c.search(["OR", "SEEN", "LARGER", "10000"]), [1])
            self.assertEqual(c.search(["NOT", "UID", "1"]), [2])
            self.assertEqual(c.search(["SINCE", datetime.date.today() - datetime.timedelta(days=1)]), [1, 2])

        return self.check(run)

    def test_search_utf8_charset(self):
        def run():
            c = self.imaps()
            c.append("INBOX", "Subject: Grüße\r\n\r\nx\r\n".encode())
            c.append("INBOX", MESSAGE)
            c.select_folder("INBOX")
            self.assertEqual(c.search(["SUBJECT", "grüße"], charset="UTF-8"), [1])

        return self.check(run)


class CopyMoveExpunge(IMAPTestCase):
    def fill(self, c, n=3):
        for _ in range(n):
            c.append("INBOX", MESSAGE)
        c.select_folder("INBOX")

    def test_copy_answers_copyuid(self):
        def run():
            c = self.imaplib()
            for _ in range(2):
                c.append("INBOX", None, None, MESSAGE)
            c.select("INBOX")
            typ, data = c.copy("1:2", "Archive")
            self.assertEqual(typ, "OK")
            self.assertRegex(data[0].decode(), r"^\[COPYUID \d+ 1:2 1:2\]")

        return self.check(run)

    def test_move_removes_from_source(self):
        def run():
            c = self.imaps()
            self.fill(c)
            c.move([2], "Trash")
            self.assertEqual(c.search(["ALL"]), [1, 3])
            self.assertEqual(c.folder_status("Trash", [b"MESSAGES"])[b"MESSAGES"], 1)

        return self.check(run)

    def test_uid_expunge_removes_only_given_messages(self):
        def run():
            c = self.imaps()
            self.fill(c)
            c.add_flags([1, 2], [imapclient.DELETED])
            c.uid_expunge([2])
            self.assertEqual(c.search(["ALL"]), [1, 3])

        return self.check(run)

    def test_close_expunges_deleted_messages(self):
        def run():
            c = self.imaps()
            self.fill(c)
            c.add_flags([1], [imapclient.DELETED])
            c.close_folder()
            self.assertEqual(c.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"], 2)

        return self.check(run)

    def test_unselect_keeps_deleted_messages(self):
        def run():
            c = self.imaps()
            self.fill(c)
            c.add_flags([1], [imapclient.DELETED])
            c.unselect_folder()
            self.assertEqual(c.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"], 3)

        return self.check(run)


class ManyDevices(IMAPTestCase):
    def test_idle_sees_smtp_delivery_within_a_second(self):
        def run():
            c = self.imaps()
            c.select_folder("INBOX")
            c.idle()
            start = time.monotonic()
            self.send()
            responses = c.idle_check(timeout=2)
            elapsed = time.monotonic() - start
            c.idle_done()
            self.assertIn((1, b"EXISTS"), responses)
            self.assertLess(elapsed, 1.0)

        return self.check(run)

    def two_sessions(self):
        a = self.imaplib()
        for _ in range(2):
            a.append("INBOX", None, None, MESSAGE)
        a.select("INBOX")
        b = self.imaplib()
        b.select("INBOX")
        return a, b

    def test_other_sessions_flag_change_is_reported(self):
        def run():
            a, b = self.two_sessions()
            b.store("2", "+FLAGS", "(\\Flagged)")
            a.noop()
            self.assertTrue(any(b"\\Flagged" in r for r in a.untagged_responses.get("FETCH", [])))

        return self.check(run)

    def test_other_sessions_expunge_is_reported(self):
        def run():
            a, b = self.two_sessions()
            b.store("1", "+FLAGS", "(\\Deleted)")
            b.expunge()
            a.noop()
            self.assertEqual(a.untagged_responses.get("EXPUNGE"), [b"1"])
            self.assertEqual(a.search(None, "ALL")[1], [b"1"])

        return self.check(run)

    def test_smtp_delivery_is_seen_at_next_noop(self):
        def run():
            c = self.imaplib()
            c.select("INBOX")
            self.send()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                c.noop()
                if c.untagged_responses.get("EXISTS", [b"0"])[-1] == b"1":
                    break
                time.sleep(0.05)
            self.assertEqual(c.untagged_responses["EXISTS"][-1], b"1")
            typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            self.assertEqual(data[0][1], b"Subject: hello\r\n\r\n")

        return self.check(run)


class OnDisk(IMAPTestCase):
    def test_maildir_prepared_by_python_mailbox_is_served(self):
        path = self.server.maildir(ALICE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        box = mailbox.Maildir(path, create=True)
        seen = mailbox.MaildirMessage(MESSAGE.replace(b"\r\n", b"\n"))
        seen.set_subdir("cur")
        seen.set_flags("SF")
        box.add(seen)
        box.add(mailbox.MaildirMessage(b"Subject: second\n\nbody\n"))

        def run():
            c = self.imaps()
            c.select_folder("INBOX")
            flags = c.get_flags([1, 2])
            self.assertEqual(set(flags[1]), {imapclient.SEEN, imapclient.FLAGGED})
            self.assertEqual(flags[2], (b"\\Recent",) if flags[2] else ())
            got = c.fetch([1], [b"BODY.PEEK[]"])[1][b"BODY[]"]
            self.assertEqual(got, MESSAGE)

        return self.check(run)

    def test_message_dropped_into_new_is_noticed(self):
        def run():
            c = self.imaplib()
            c.select("INBOX")
            new = os.path.join(self.server.maildir(ALICE), "new")
            with open(os.path.join(new, "1700000000.M1P1.outside"), "wb") as f:
                f.write(b"Subject: dropped\n\nhi\n")
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                c.noop()
                if c.untagged_responses.get("EXISTS", [b"0"])[-1] == b"1":
                    break
                time.sleep(0.05)
            self.assertEqual(c.untagged_responses["EXISTS"][-1], b"1")

        return self.check(run)


class Restart(unittest.TestCase):
    @defer.inlineCallbacks
    def test_uids_and_uidvalidity_survive_a_restart(self):
        first = yield MailServer(self, listeners=LISTENERS).start(users={ALICE: "pw"})

        def before(port):
            c = imapclient.IMAPClient("127.0.0.1", port, ssl_context=client_tls(), timeout=10)
            c.login(ALICE, "pw")
            for _ in range(3):
                c.append("INBOX", MESSAGE)
            info = c.select_folder("INBOX")
            c.delete_messages([2])
            c.expunge()
            c.logout()
            return info[b"UIDVALIDITY"]

        validity = yield in_thread(before, first.port("imaps"))
        yield drain(first)
        yield first.stop()
        second = MailServer(self, listeners=LISTENERS)
        second.dir, second.state, second.config_path = first.dir, first.state, first.config_path
        yield second.start()
        self.addCleanup(drain, second)

        def after(port):
            c = imapclient.IMAPClient("127.0.0.1", port, ssl_context=client_tls(), timeout=10)
            c.login(ALICE, "pw")
            info = c.select_folder("INBOX")
            uids = c.search(["ALL"])
            c.append("INBOX", MESSAGE)
            c.logout()
            return info, uids

        info, uids = yield in_thread(after, second.port("imaps"))
        self.assertEqual(info[b"UIDVALIDITY"], validity)
        self.assertEqual(uids, [1, 3])
        self.assertEqual(info[b"UIDNEXT"], 4)
