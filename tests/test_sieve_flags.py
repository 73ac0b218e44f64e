"""
imap4flags (RFC 5232) and spamtest/virustest (RFC 5235) at delivery, end
to end: a message sent over SMTP, filed by the user's Sieve script, then
read back over IMAP (FETCH FLAGS) on both stores; the checks' scores
(a real rspamd) reaching the script's spamtest.
"""

import imaplib
import os
import re
import smtplib

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, in_thread

ALICE, BOB = "alice@example.test", "bob@example.test"


class Delivered(unittest.TestCase):
    """A server with SMTP and IMAP; the user's script; FETCH FLAGS of what arrived."""

    store = "maildir"
    extra = ""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp", "imap"), extra=self.extra)
        yield self.server.start(users={ALICE: "pw", BOB: "pw"})

    def script(self, user, text):
        local, domain = user.split("@")
        home = os.path.join(self.server.state, "home", domain, local)
        os.makedirs(os.path.join(home, "sieve"), exist_ok=True)
        with open(os.path.join(home, "sieve", "main.sieve"), "w") as f:
            f.write(text)
        os.symlink(os.path.join("sieve", "main.sieve"), os.path.join(home, ".dovecot.sieve"))

    def imap(self):
        c = imaplib.IMAP4("127.0.0.1", self.server.port("imap"), timeout=10)
        c.starttls(client_tls())
        c.login(ALICE, "pw")
        return c

    def create(self, *folders):
        def run():
            c = self.imap()
            try:
                for folder in folders:
                    c.create(folder)
            finally:
                c.logout()

        return in_thread(run)

    def send(self, subject="hello", extra=""):
        def run():
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=30) as s:
                body = f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n{extra}\r\nhi\r\n"
                s.sendmail(BOB, [ALICE], body.encode())

        return in_thread(run)

    def flags(self, folder="INBOX"):
        """{subject: set of flags} of the folder's messages, over IMAP."""

        def run():
            c = self.imap()
            try:
                typ, _ = c.select(folder)
                if typ != "OK":
                    return None
                typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                out = {}
                for item in data:
                    if not isinstance(item, tuple):
                        continue
                    flags = set(re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split())
                    subject = item[1].decode().split(":", 1)[1].strip()
                    out[subject] = flags - {"\\Recent"}
                return out
            finally:
                c.logout()

        return in_thread(run)


class FlagsOnDelivery(Delivered):
    @defer.inlineCallbacks
    def test_setflag_and_addflag_go_with_the_implicit_keep(self):
        self.script(ALICE, 'require "imap4flags";\nsetflag "\\\\Seen";\naddflag ["$Work", "\\\\flagged"];\n')
        yield self.send("flagged")
        got = yield self.flags()
        self.assertEqual(got, {"flagged": {"\\Seen", "\\Flagged", "$Work"}})

    @defer.inlineCallbacks
    def test_fileinto_and_keep_take_their_own_flags(self):
        yield self.create("Work")
        self.script(ALICE, 'require ["imap4flags", "fileinto", "copy"];\n'
                           'fileinto :copy :flags ["\\\\Flagged", "Project"] "Work";\n'
                           'keep :flags "\\\\Answered";\n')
        yield self.send("both")
        work = yield self.flags("Work")
        inbox = yield self.flags()
        self.assertEqual(work, {"both": {"\\Flagged", "Project"}})
        self.assertEqual(inbox, {"both": {"\\Answered"}})

    @defer.inlineCallbacks
    def test_without_flags_a_message_arrives_unflagged(self):
        self.script(ALICE, 'require "imap4flags";\nif false { setflag "\\\\Seen"; }\n')
        yield self.send("plain")
        got = yield self.flags()
        self.assertEqual(got, {"plain": set()})

    @defer.inlineCallbacks
    def test_a_flag_set_by_one_message_is_not_set_on_the_next(self):
        self.script(ALICE, 'require "imap4flags";\nif header :is "subject" "first" { addflag "$First"; }\n')
        yield self.send("first")
        yield self.send("second")
        got = yield self.flags()
        self.assertEqual(got, {"first": {"$First"}, "second": set()})


class FlagsOnDeliveryMbox(FlagsOnDelivery):
    store = "mbox"

    @defer.inlineCallbacks
    def test_the_flags_are_in_the_mbox_file(self):
        self.script(ALICE, 'require "imap4flags";\nsetflag ["\\\\Seen", "\\\\Flagged", "$Work"];\n')
        yield self.send("in the file")
        with open(self.server.mbox(ALICE), "rb") as f:
            data = f.read()
        self.assertIn(b"\nStatus: RO\n", data)  # \\Seen
        self.assertIn(b"X-Keywords: $Work", data)
        self.assertRegex(data, rb"\nX-Status: [A-Z]*F")


class SpamtestFromTheChecks(Delivered):
    """spamtest over a real rspamd's score; untested ("0") without a check."""

    @defer.inlineCallbacks
    def setUp(self):
        from tests.test_check_rspamd import RealRspamd

        rspamd = RealRspamd.get()
        self.extra = f'[checks]\nenabled = ["rspamd"]\n\n[checks.rspamd]\nurl = "{rspamd.url}"\ntimeout = 20\n'
        yield Delivered.setUp(self)

    @defer.inlineCallbacks
    def test_a_clean_message_has_a_low_score(self):
        yield self.create("Untested", "Tested")
        self.script(ALICE, 'require ["spamtestplus", "virustest", "fileinto", "relational", "comparator-i;ascii-numeric"];\n'
                           'if spamtest :value "eq" :comparator "i;ascii-numeric" "0" { fileinto "Untested"; stop; }\n'
                           'if allof (spamtest :value "ge" :comparator "i;ascii-numeric" "1",\n'
                           '          spamtest :value "le" :comparator "i;ascii-numeric" "5",\n'
                           '          spamtest :percent :value "lt" :comparator "i;ascii-numeric" "50",\n'
                           '          virustest :value "eq" :comparator "i;ascii-numeric" "0") { fileinto "Tested"; stop; }\n')
        yield self.send("lunch on Friday", extra="Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <l1@example.test>\r\n")
        tested = yield self.flags("Tested")
        self.assertEqual(list(tested or {}), ["lunch on Friday"])


class SpamtestUntested(Delivered):
    @defer.inlineCallbacks
    def test_without_a_check_spamtest_is_0(self):
        yield self.create("Untested")
        self.script(ALICE, 'require ["spamtest", "virustest", "fileinto"];\n'
                           'if allof (spamtest "0", virustest "0") { fileinto "Untested"; }\n')
        yield self.send("no checks")
        got = yield self.flags("Untested")
        self.assertEqual(list(got or {}), ["no checks"])


class StoreWithoutFlags(unittest.TestCase):
    """A store plugin whose deliver has no `flags` (written before imap4flags) still gets the mail."""

    @defer.inlineCallbacks
    def test_the_copy_is_stored_without_the_flags(self):
        import tempfile

        from mailplat.realm import passwords
        from mailplat.delivery.local import LocalDelivery
        from mailplat.interfaces import Envelope
        from mailplat.realm.passwdfile import PasswdFileRealm
        from mailplat.sieve.filter import SieveFilter
        from mailplat.store.source import BytesSource
        from mailplat.testing.fakes import FakeStore, resolver

        work = tempfile.mkdtemp(prefix="mailplat-sieve-")
        self.addCleanup(__import__("shutil").rmtree, work, True)
        users = os.path.join(work, "users")
        with open(users, "w") as f:
            f.write(f"{ALICE}:{passwords.hash_password('pw', 'PLAIN')}\n")
        store = FakeStore()
        agent = LocalDelivery(resolver(PasswdFileRealm(users)), store)
        agent.sieve = SieveFilter(os.path.join(work, "home", "%d", "%n"))
        home = os.path.join(work, "home", "example.test", "alice")
        os.makedirs(os.path.join(home, "sieve"))
        with open(os.path.join(home, "sieve", "f.sieve"), "w") as f:
            f.write('require "imap4flags";\nsetflag "\\\\Seen";\n')
        os.symlink("sieve/f.sieve", os.path.join(home, ".dovecot.sieve"))
        transaction = agent.start(Envelope(sender=BOB))
        yield transaction.add_recipient(ALICE)
        yield transaction.deliver(BytesSource(b"Subject: old store\n\nhi\n"))
        self.assertEqual(len(store.messages(ALICE)), 1)
