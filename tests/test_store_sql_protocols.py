"""
IMAP, POP3 and SMTP on the sql store over real sockets: the maildir
store's IMAP and POP3 suites run unchanged with `store = "sql"` (as
tests/test_mbox_protocols.py does for mbox), a client session with
imaplib and poplib end to end, and push across two nodes on one database.
Needs PostgreSQL (MAILPLAT_TEST_PG_DSN), else skipped.
"""

import imaplib
import poplib
import smtplib
import time

from twisted.internet import defer
from twisted.trial import unittest

from tests import test_imap_maildir as imap
from tests import test_pop3 as pop3
from tests.helpers import MailServer, client_tls, in_thread
from tests.test_store_sql import PostgresSchema

ALICE = imap.ALICE


class OnSQL(PostgresSchema):
    store = "sql"

    @property
    def store_config(self):
        return f'dsn = "{self.dsn}"\n'

    def setUp(self):
        PostgresSchema.setUp(self)
        return super(PostgresSchema, self).setUp()

    def inbox_count(self, address):
        rows = self.query(
            "SELECT count(*) FROM mailplat_messages m JOIN mailplat_mailboxes b ON b.id = m.mailbox "
            "JOIN mailplat_accounts a ON a.id = b.account WHERE a.address = %s AND b.name = 'INBOX'",
            address,
        )
        return rows[0][0]


# --- the shared IMAP suites ------------------------------------------------------------


class IMAPLogin(OnSQL, imap.Login):
    pass


class IMAPFolders(OnSQL, imap.Folders):
    def test_namespace(self):
        def run():
            self.assertEqual(self.imaps().namespace().personal, (("", "/"),))

        return self.check(run)


class IMAPSelect(OnSQL, imap.Select):
    pass


class IMAPRecent(OnSQL, imap.Recent):
    pass


class IMAPFetch(OnSQL, imap.Fetch):
    pass


class IMAPAppend(OnSQL, imap.Append):
    pass


class IMAPStore(OnSQL, imap.Store):
    pass


class IMAPCopyMoveExpunge(OnSQL, imap.CopyMoveExpunge):
    pass


class IMAPManyDevices(OnSQL, imap.ManyDevices):
    pass


class IMAPRestart(OnSQL, imap.Restart):
    pass


# --- the shared POP3 suites --------------------------------------------------------------


class RowsNotFiles(OnSQL):
    def files(self, address="alice@example.test"):
        """One entry per message in the user's INBOX (rows, not files)."""
        return list(range(self.inbox_count(address)))


class POP3EndToEnd(RowsNotFiles, pop3.EndToEnd):
    pass


class POP3Capabilities(RowsNotFiles, pop3.Capabilities):
    pass


class POP3Authentication(RowsNotFiles, pop3.Authentication):
    @defer.inlineCallbacks
    def test_unreadable_maildrop_is_a_temporary_failure_at_login(self):
        # The database can't answer (here: its messages table is away).
        yield self.deliver(b"Subject: the tables exist\n\nHello.\n")
        self.query("ALTER TABLE mailplat_messages RENAME TO mailplat_messages_away")
        try:
            e = yield self.assertFailure(in_thread(pop3.pop3s, self.server), poplib.error_proto)
        finally:
            self.query("ALTER TABLE mailplat_messages_away RENAME TO mailplat_messages")
        self.flushLoggedErrors()
        # RFC 3206: SYS/TEMP, so the client tries again instead of asking for a new password.
        self.assertTrue(e.args[0].startswith(b"-ERR [SYS/TEMP]"), e.args)


class POP3Transaction(RowsNotFiles, pop3.Transaction):
    pass


class POP3BadInput(RowsNotFiles, pop3.BadInput):
    pass


# --- one session end to end ----------------------------------------------------------------

MESSAGE = b"From: bob@example.org\r\nTo: alice@example.test\r\nSubject: %d\r\n\r\nBody %d.\r\n"


def smtp_send(port, n, to=ALICE):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("bob@example.org", [to], MESSAGE % (n, n))


def login(port):
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=10)
    c.login(ALICE, "pw")
    return c


class EndToEnd(OnSQL, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        PostgresSchema.setUp(self)
        listeners = ("smtp", "imaps", "pop3")
        self.server = yield MailServer(self, listeners=listeners).start(users={ALICE: "pw"})

    def test_imap_session_append_select_fetch_store_expunge_copy_move(self):
        port, smtp = self.server.port("imaps"), self.server.port("smtp")

        def run():
            smtp_send(smtp, 1)
            c = login(port)
            try:
                typ, data = c.append("INBOX", "(\\Flagged)", None, MESSAGE % (2, 2))
                self.assertEqual(typ, "OK")
                self.assertIn(b"APPENDUID", data[0])  # RFC 4315
                typ, data = c.select("INBOX")
                self.assertEqual(data, [b"2"])
                typ, data = c.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                self.assertEqual(typ, "OK")
                self.assertIn(b"Subject: 1", data[0][1])
                self.assertIn(b"\\Flagged", data[2][0])
                typ, data = c.fetch("1", "(BODY[])")
                self.assertTrue(data[0][1].startswith(b"Return-Path: <bob@example.org>\r\n"), data)
                self.assertTrue(data[0][1].endswith(MESSAGE % (1, 1)), data)
                typ, data = c.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
                self.assertIn(b'"1"', data[0])  # the subject, from the index made at delivery
                typ, data = c.store("1", "+FLAGS", "(\\Seen $Label1)")
                self.assertIn(b"$Label1", data[0])
                typ, data = c.copy("1:2", "Archive")
                self.assertIn(b"COPYUID", data[0])
                typ, data = c.uid("MOVE", "2", "Trash")
                self.assertEqual(typ, "OK")
                c.store("1", "+FLAGS", "(\\Deleted)")
                typ, data = c.expunge()
                self.assertEqual(data[-1], b"1")  # (after MOVE's untagged "2 EXPUNGE", RFC 6851 3.3)
                typ, data = c.status("Archive", "(MESSAGES UNSEEN)")
                self.assertIn(b"MESSAGES 2 UNSEEN 1", data[0])
                typ, data = c.status("Trash", "(MESSAGES)")
                self.assertIn(b"MESSAGES 1", data[0])
                typ, data = c.select("INBOX")
                self.assertEqual(data, [b"0"])
                c.select("Archive")
                typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[TEXT])")
                self.assertIn(b"$Label1", data[0][0])
                self.assertEqual(data[0][1], b"Body 1.\r\n")
            finally:
                c.logout()

        return in_thread(run)

    def test_pop3_retr_and_dele_after_smtp_delivery(self):
        smtp, port = self.server.port("smtp"), self.server.port("pop3")

        def run():
            for n in (1, 2):
                smtp_send(smtp, n)
            p = poplib.POP3("127.0.0.1", port, timeout=10)
            try:
                p.stls(client_tls())
                p.user(ALICE)
                p.pass_("pw")
                self.assertEqual(p.stat()[0], 2)
                _, lines, _ = p.retr(1)
                self.assertIn(b"Subject: 1", lines)
                self.assertIn(b"Body 1.", lines)
                p.dele(2)
            finally:
                p.quit()
            return self.inbox_count(ALICE)

        def seen_over_imap(count):
            self.assertEqual(count, 1)

            def check():
                c = login(self.server.port("imaps"))
                try:
                    c.select("INBOX")
                    typ, data = c.fetch("1", "(FLAGS)")
                    self.assertIn(b"\\Seen", data[0])  # read over POP3
                finally:
                    c.logout()

            return in_thread(check)

        return in_thread(run).addCallback(seen_over_imap)


# --- two nodes, one database ---------------------------------------------------------------


class TwoNodes(OnSQL, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        PostgresSchema.setUp(self)
        self.a = yield MailServer(self, listeners=("smtp", "imaps")).start(users={ALICE: "pw"})
        self.b = yield MailServer(self, listeners=("smtp", "imaps")).start(users={ALICE: "pw"})

    def test_idle_on_one_node_hears_a_delivery_through_the_other_within_a_second(self):
        a_imap, b_smtp = self.a.port("imaps"), self.b.port("smtp")

        def run():
            c = login(a_imap)
            try:
                c.select("INBOX")
                tag = c._new_tag()
                c.send(tag + b" IDLE\r\n")
                self.assertTrue(c.readline().startswith(b"+"))
                started = time.monotonic()
                smtp_send(b_smtp, 1)
                sent = time.monotonic()
                c.sock.settimeout(5)
                line = c.readline()
                heard = time.monotonic()
                c.send(b"DONE\r\n")
                while not c.readline().startswith(tag):
                    pass
                return line, sent - started, heard - sent
            finally:
                c.logout()

        def check(result):
            line, _, waited = result
            self.assertEqual(line, b"* 1 EXISTS\r\n")
            self.assertLess(waited, 1.0)

        return in_thread(run).addCallback(check)

    def test_appends_through_both_nodes_give_distinct_ascending_uids(self):
        ports = (self.a.port("imaps"), self.b.port("imaps"))

        def appender(port, count):
            c = login(port)
            try:
                uids = []
                for n in range(count):
                    typ, data = c.append("INBOX", None, None, MESSAGE % (n, n))
                    uids.append(int(data[0].split()[2].rstrip(b"]")))
                return uids
            finally:
                c.logout()

        def check(results):
            everyone = [uid for _, uids in results for uid in uids]
            self.assertEqual(len(set(everyone)), 60)
            for _, uids in results:
                self.assertEqual(uids, sorted(uids))

            def view(port):
                c = login(port)
                try:
                    c.select("INBOX")
                    typ, data = c.uid("SEARCH", "ALL")
                    return [int(u) for u in data[0].split()]
                finally:
                    c.logout()

            d = defer.gatherResults([in_thread(view, p) for p in ports])
            return d.addCallback(lambda views: [self.assertEqual(v, sorted(everyone)) for v in views])

        d = defer.DeferredList([in_thread(appender, ports[i % 2], 20) for i in range(3)], fireOnOneErrback=True)
        return d.addCallback(check)
