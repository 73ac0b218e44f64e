"""
`mailplat migrate` (mailplat/store/migration): a user's mail moved from
the maildir store to the sql store and back, run as the real command, and
checked over IMAP (imaplib over TLS sockets) on the server of each store:
the same UIDVALIDITY, UIDNEXT, UIDs, FLAGS, INTERNALDATE, sizes, bodies
and subscriptions. Needs PostgreSQL (MAILPLAT_TEST_PG_DSN), else skipped.
"""

import imaplib
import os
import re
import subprocess
import sys

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, in_thread
from tests.test_store_sql import PostgresSchema

ALICE = "alice@example.test"
BOB = "bob@example.test"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEN = 1700000000  # an internal date far from now: kept, or the test sees it change
SPECIAL_USE = {"\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash"}


def message(n, folder="INBOX"):
    return (
        f"From: bob@example.org\r\nTo: {ALICE}\r\nSubject: {folder} {n}\r\n"
        f"Message-ID: <{folder}.{n}@example.org>\r\n\r\nBody {n} of {folder}.\r\n"
    ).encode()


def login(port, user=ALICE):
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=10)
    c.login(user, "pw")
    return c


def populate(port, separator="."):
    """
    On the maildir (or mbox) server: INBOX with UIDs 1..8 and gaps (2, 4,
    7 expunged), system flags and keywords; a subfolder Archive.2025; Junk
    unsubscribed, Archive.2025 subscribed.
    """
    sub = f"Archive{separator}2025"
    c = login(port)
    try:
        for n in range(1, 9):
            flags = {1: "(\\Seen)", 3: "(\\Flagged $Label1 Work)", 5: "(\\Answered \\Seen $Junk)", 6: "(\\Draft)"}.get(n)
            assert c.append("INBOX", flags, WHEN + n * 3600 if n % 2 else None, message(n))[0] == "OK"
        assert c.create(sub)[0] == "OK"
        for n in range(1, 4):
            assert c.append(sub, "(Project-X)" if n == 2 else None, WHEN, message(n, "Archive"))[0] == "OK"
        c.subscribe(sub)
        c.unsubscribe("Junk")
        c.select("INBOX")
        c.uid("STORE", "2,4,7", "+FLAGS", "(\\Deleted)")
        assert c.expunge()[0] == "OK"
    finally:
        c.logout()


def folder_state(c, name):
    """(UIDVALIDITY, UIDNEXT, {uid: (flags, internaldate, size, body)}) of one folder."""
    typ, data = c.status(_quoted(name), "(UIDVALIDITY UIDNEXT MESSAGES)")
    assert typ == "OK", data
    status = data[0].decode()
    validity = int(re.search(r"UIDVALIDITY (\d+)", status).group(1))
    uidnext = int(re.search(r"UIDNEXT (\d+)", status).group(1))
    c.select(_quoted(name), readonly=True)
    typ, data = c.uid("FETCH", "1:*", "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK", data
    messages = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        head = item[0].decode()
        uid = int(re.search(r"UID (\d+)", head).group(1))
        flags = frozenset(re.search(r"FLAGS \(([^)]*)\)", head).group(1).split()) - {"\\Recent"}
        date = re.search(r'INTERNALDATE "([^"]+)"', head).group(1)
        size = int(re.search(r"RFC822.SIZE (\d+)", head).group(1))
        messages[uid] = (flags, date, size, item[1])
    return validity, uidnext, messages


def highestmodseq(port, name="INBOX"):
    c = login(port)
    try:
        typ, data = c.status(name, "(HIGHESTMODSEQ)")
        assert typ == "OK", data
        return int(re.search(rb"HIGHESTMODSEQ (\d+)", data[0]).group(1))
    finally:
        c.logout()


def _quoted(name):
    return '"' + name + '"'


def account_state(port, separator):
    """{folder name with '/' between levels: folder_state}, and the subscribed names."""
    c = login(port)
    try:
        typ, data = c.list()
        assert typ == "OK", data
        names, special = [], {}
        for line in data:
            name = re.search(rb'"([^"]+)"$', line).group(1).decode()
            names.append(name)
            attributes = re.match(rb"\(([^)]*)\)", line).group(1).decode().split()
            special[name.replace(separator, "/")] = sorted(a for a in attributes if a in SPECIAL_USE)
        state = {n.replace(separator, "/"): folder_state(c, n) for n in names}
        typ, data = c.lsub()
        subscribed = sorted(re.search(rb'"([^"]+)"$', line).group(1).decode().replace(separator, "/") for line in data)
        return state, subscribed, special
    finally:
        c.logout()


def migrate(config_path, *args):
    """The real command: (exit status, output)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailplat.cli", "--config", config_path, "migrate", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


class Servers(PostgresSchema):
    """Mix-in: mail servers of the test's own on a store each, the sql ones on the test's schema."""

    store_config = ""

    def setUp(self):
        PostgresSchema.setUp(self)

    @defer.inlineCallbacks
    def server(self, store):
        # MailServer reads the test's store_config when it writes its configuration.
        self.store_config = f'dsn = "{self.dsn}"\n' if store == "sql" else ""
        server = yield MailServer(self, listeners=("imaps",), store=store).start(users={ALICE: "pw", BOB: "pw"})
        return server


class MaildirToSQLAndBack(Servers, unittest.TestCase):

    @defer.inlineCallbacks
    def migrated_to_sql(self):
        """The maildir server populated, its state read, and alice migrated to a running sql server."""
        maildir = yield self.server("maildir")
        yield in_thread(populate, maildir.port("imaps"))
        before = yield in_thread(account_state, maildir.port("imaps"), ".")
        self.modseq = yield in_thread(highestmodseq, maildir.port("imaps"))
        yield maildir.stop()
        sql = yield self.server("sql")
        # A first login makes an empty account (INBOX, special-use folders): the migration replaces it.
        yield in_thread(lambda: login(sql.port("imaps")).logout())
        template = os.path.join(maildir.state, "mail", "%d", "%n")
        status, output = yield in_thread(migrate, sql.config_path, "--from", "maildir", "--to", "sql", ALICE, "--path", template)
        self.assertEqual(status, 0, output)
        return maildir, sql, template, before

    @defer.inlineCallbacks
    def test_imap_on_the_sql_store_shows_the_same_uidvalidity_uids_flags_and_subscriptions(self):
        _, sql, _, before = yield self.migrated_to_sql()
        after = yield in_thread(account_state, sql.port("imaps"), "/")
        state, subscribed, _ = before
        self.assertEqual(sorted(state["INBOX"][2]), [1, 3, 5, 6, 8])  # the gaps are there to be kept
        self.assertIn("$Label1", state["INBOX"][2][3][0])
        self.assertEqual(after[0].keys(), state.keys())
        for name in state:
            self.assertEqual(after[0][name], state[name], name)
        self.assertEqual(after[1], subscribed)
        self.assertIn("Archive/2025", subscribed)
        self.assertNotIn("Junk", subscribed)
        self.assertEqual(after[2], before[2])
        self.assertEqual(after[2]["Sent"], ["\\Sent"])

    @defer.inlineCallbacks
    def test_highestmodseq_never_goes_down(self):
        # RFC 7162 3.1.2.1: a CONDSTORE client's cached HIGHESTMODSEQ stays valid.
        _, sql, _, _ = yield self.migrated_to_sql()
        on_sql = yield in_thread(highestmodseq, sql.port("imaps"))
        self.assertGreaterEqual(on_sql, self.modseq)
        self.assertGreater(self.modseq, 1)
        back = yield self.server("maildir")
        status, output = yield in_thread(
            migrate, back.config_path, "--from", "sql", "--to", "maildir", ALICE, "--dsn", self.dsn
        )
        self.assertEqual(status, 0, output)
        on_maildir = yield in_thread(highestmodseq, back.port("imaps"))
        self.assertGreaterEqual(on_maildir, on_sql)

    @defer.inlineCallbacks
    def test_back_to_maildir_gives_the_same_state_again(self):
        _, sql, _, before = yield self.migrated_to_sql()
        back = yield self.server("maildir")
        status, output = yield in_thread(
            migrate, back.config_path, "--from", "sql", "--to", "maildir", ALICE, "--dsn", self.dsn
        )
        self.assertEqual(status, 0, output)
        self.assertIn("folders copied from sql to maildir", output)
        root = back.maildir(ALICE)
        with open(os.path.join(root, "dovecot-uidlist")) as f:
            header = f.readline().split()
        self.assertEqual(header[1], f"V{before[0]['INBOX'][0]}")  # Dovecot's header: UIDVALIDITY, UIDNEXT
        self.assertEqual(header[2], f"N{before[0]['INBOX'][1]}")
        with open(os.path.join(root, "dovecot-keywords")) as f:
            self.assertEqual(sorted(line.split()[1] for line in f), ["$Junk", "$Label1", "Work"])
        after = yield in_thread(account_state, back.port("imaps"), ".")
        self.assertEqual(after, before)

    @defer.inlineCallbacks
    def test_a_second_migration_is_refused_and_changes_nothing(self):
        _, sql, template, before = yield self.migrated_to_sql()
        status, output = yield in_thread(migrate, sql.config_path, "--from", "maildir", "--to", "sql", ALICE, "--path", template)
        self.assertEqual(status, 1, output)
        self.assertIn("already holds 8 messages of this user; nothing changed", output)
        status, output = yield in_thread(migrate, sql.config_path, "--from", "maildir", "--to", "sql", "--all", "--path", template)
        self.assertEqual(status, 0, output)  # --all: done users skipped, bob has no mail
        self.assertIn(f"{ALICE}: the sql store already holds 8 messages", output)
        self.assertIn(f"{BOB}: nothing to migrate", output)
        after = yield in_thread(account_state, sql.port("imaps"), "/")
        self.assertEqual(after[0]["INBOX"], before[0]["INBOX"])

    @defer.inlineCallbacks
    def test_a_folder_a_maildir_cannot_hold_stops_that_user_with_the_reason(self):
        _, sql, _, _ = yield self.migrated_to_sql()

        def create():
            c = login(sql.port("imaps"))
            try:
                self.assertEqual(c.create(_quoted("Release v1.2"))[0], "OK")  # '.' is no separator on sql
            finally:
                c.logout()

        yield in_thread(create)
        back = yield self.server("maildir")
        status, output = yield in_thread(
            migrate, back.config_path, "--from", "sql", "--to", "maildir", ALICE, "--dsn", self.dsn
        )
        self.assertEqual(status, 1, output)
        self.assertIn("folder 'Release v1.2' has a '.' in a level", output)
        self.assertNotIn("Traceback", output)
        self.assertFalse(os.path.exists(back.maildir(ALICE)))  # refused before anything is written

    @defer.inlineCallbacks
    def test_an_unknown_user_gets_a_clear_message(self):
        sql = yield self.server("sql")
        status, output = yield in_thread(
            migrate, sql.config_path, "--from", "maildir", "--to", "sql", "nobody@example.test", "--path", "/nonexistent/%d/%n"
        )
        self.assertEqual(status, 1, output)
        self.assertIn("no such user: nobody@example.test", output)
        self.assertNotIn("Traceback", output)
        status, output = yield in_thread(
            migrate, sql.config_path, "--from", "maildir", "--to", "sql", BOB, "--path", "/nonexistent/%d/%n"
        )
        self.assertEqual(status, 1, output)
        self.assertIn(f"{BOB}: no mail in the maildir store", output)

    @defer.inlineCallbacks
    def test_the_other_side_must_be_named(self):
        sql = yield self.server("sql")
        status, output = yield in_thread(migrate, sql.config_path, "--from", "maildir", "--to", "sql", ALICE)
        self.assertNotEqual(status, 0, output)
        self.assertIn("name the maildir side with --path", output)


class MboxToSQL(Servers, unittest.TestCase):
    """The mbox store as a source: read through the same store interfaces."""

    @defer.inlineCallbacks
    def test_imap_on_the_sql_store_shows_what_the_mbox_store_showed(self):
        mbox = yield self.server("mbox")
        yield in_thread(populate, mbox.port("imaps"), "/")
        before = yield in_thread(account_state, mbox.port("imaps"), "/")
        yield mbox.stop()
        sql = yield self.server("sql")
        template = os.path.join(mbox.state, "mail", "%d", "%n")
        status, output = yield in_thread(migrate, sql.config_path, "--from", "mbox", "--to", "sql", ALICE, "--path", template)
        self.assertEqual(status, 0, output)
        after = yield in_thread(account_state, sql.port("imaps"), "/")
        self.assertEqual(sorted(before[0]["INBOX"][2]), [1, 3, 5, 6, 8])
        self.assertEqual(after, before)
