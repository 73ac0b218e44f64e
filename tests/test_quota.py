"""
Quotas (mailplat.quota, RFC 9208): Dovecot's rules, the usage file, and
enforcement over the wire: SMTP (452 4.2.2 at RCPT while full, 552 5.2.2 for
a message that can never fit, 452 for one that does not fit now), IMAP
APPEND / COPY (NO [OVERQUOTA]), GETQUOTAROOT, and the 90% warning, on both
stores and with overrides from the passwd-file and the sql realm.
"""

import os
import re
import smtplib
import sqlite3
import tempfile
import shutil

from twisted.internet import defer
from twisted.trial import unittest

from mailplat import config as configuration
from mailplat import quota
from mailplat.interfaces import OverQuota, OverQuotaForGood
from mailplat.realm import passwdfile, passwords
from mailplat.realm.sql import Database, SQLRealm
from mailplat.store.maildir.store import MaildirStore
from mailplat.store.mbox.store import MboxStore
from mailplat.store.source import BytesSource
from tests.helpers import MailServer, in_thread
from tests.imap_support import RawClient

ALICE, BOB = "alice@example.test", "bob@example.test"


def message(size, subject="test"):
    """A message of about `size` octets (LF line ends)."""
    head = f"From: carol@example.org\nTo: {ALICE}\nSubject: {subject}\n\n".encode()
    line = b"x" * 75 + b"\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def literal(data):
    return b"{%d+}\r\n" % len(data) + data


# --- rules ------------------------------------------------------------------------------


class Rules(unittest.TestCase):
    def test_storage_with_a_suffix(self):
        self.assertEqual(quota.parse_rule("*:storage=1G"), [("storage", "=", 1024**3)])

    def test_storage_without_a_suffix_is_in_kilobytes_as_in_dovecot(self):
        self.assertEqual(quota.parse_rule("*:storage=1024"), [("storage", "=", 1024 * 1024)])

    def test_bytes_and_messages(self):
        self.assertEqual(quota.parse_rule("*:bytes=500"), [("storage", "=", 500)])
        self.assertEqual(quota.parse_rule("*:messages=10000"), [("messages", "=", 10000)])

    def test_several_limits_in_one_rule(self):
        rule = quota.parse_rule("*:storage=1M:messages=10")
        self.assertEqual(rule, [("storage", "=", 1024**2), ("messages", "=", 10)])

    def test_relative_and_percent_rules_apply_to_the_default(self):
        defaults = quota.Limits(100 * 1024**2, 1000)
        limits = quota.apply_rules([quota.parse_rule("*:storage=+100M"), quota.parse_rule("*:messages=50%")], defaults)
        self.assertEqual((limits.storage, limits.messages), (200 * 1024**2, 500))

    def test_ignore_means_no_limit(self):
        limits = quota.apply_rules([quota.parse_rule("*:ignore")], quota.Limits(1000, 10))
        self.assertFalse(limits.limited)

    def test_a_per_mailbox_rule_is_refused_clearly(self):
        e = self.assertRaises(quota.QuotaRuleError, quota.parse_rule, "Trash:storage=+100M")
        self.assertIn("per-mailbox", str(e))

    def test_a_bad_size_is_refused_naming_it(self):
        e = self.assertRaises(quota.QuotaRuleError, quota.parse_rule, "*:storage=lots")
        self.assertIn("lots", str(e))

    def test_an_unknown_limit_is_refused(self):
        e = self.assertRaises(quota.QuotaRuleError, quota.parse_rule, "*:octets=5")
        self.assertIn("octets", str(e))


class PasswdFileRules(unittest.TestCase):
    LINE = "alice@example.test:{PLAIN}pw::::::userdb_quota_rule=*:storage=1M userdb_quota_rule2=*:messages=5\n"

    def test_quota_rules_are_read_from_the_extra_fields_in_order(self):
        quotas = {}
        users, problems = passwdfile.parse(self.LINE, "users", quotas)
        self.assertEqual(problems, [])
        self.assertIn(ALICE, users)
        self.assertEqual(quotas[ALICE], ["*:storage=1M", "*:messages=5"])

    def test_a_bad_rule_is_reported_with_the_line_and_the_user_and_ignored(self):
        quotas = {}
        text = "bob@example.test:{PLAIN}x\n" + self.LINE.replace("storage=1M", "storage=huge")
        users, problems = passwdfile.parse(text, "users", quotas)
        self.assertIn(ALICE, users)  # the user still logs in
        self.assertEqual(len(problems), 1)
        self.assertIn("users:2: alice@example.test", problems[0])
        self.assertIn("huge", problems[0])
        self.assertEqual(quotas[ALICE], ["*:messages=5"])

    def test_a_rule_in_the_wrong_field_is_reported(self):
        _, problems = passwdfile.parse("alice@example.test:{PLAIN}pw:userdb_quota_rule=*:storage=1M\n", "users", {})
        self.assertEqual(len(problems), 1)
        self.assertIn("8th field", problems[0])


class QuotaConfig(unittest.TestCase):
    def load(self, text):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "m.toml")
        with open(path, "w") as f:
            f.write(text)
        return configuration.load(path, cwd=d)

    def test_defaults_are_unlimited(self):
        self.assertEqual(self.load("").quota, {"storage": 0, "messages": 0, "warning_percent": 90})

    def test_storage_and_messages(self):
        q = self.load('[quota]\nstorage = "1G"\nmessages = 10000\nwarning_percent = 80\n').quota
        self.assertEqual(q, {"storage": 1024**3, "messages": 10000, "warning_percent": 80})

    def test_a_bad_size_names_the_key(self):
        e = self.assertRaises(configuration.ConfigError, self.load, '[quota]\nstorage = "a lot"\n')
        self.assertIn("quota.storage", str(e))

    def test_an_unknown_key_is_refused(self):
        e = self.assertRaises(configuration.ConfigError, self.load, '[quota]\nbytes = "1G"\n')
        self.assertIn("quota.bytes", str(e))


# --- the usage file (a store without a server) ------------------------------------------


class UsageFile(unittest.TestCase):
    """The usage kept in maildirsize: incremental, trusted after a restart, recounted when lost."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-quota-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.now = 1000.0

    def make(self):
        inner = MaildirStore(os.path.join(self.dir, "%d", "%n"))
        return quota.QuotaStore(inner, quota.MaildirLayout(inner), None, storage=10**6, messages=100,
                                clock=lambda: self.now)

    def usage_file(self):
        return os.path.join(self.dir, "example.test", "alice", "maildirsize")

    @defer.inlineCallbacks
    def deliver(self, store, n, size=1000):
        for _ in range(n):
            yield store.deliver(ALICE, BytesSource(message(size)))

    @defer.inlineCallbacks
    def test_each_delivery_adds_a_line_without_a_recount(self):
        store = self.make()
        yield self.deliver(store, 3)
        yield store.close()  # the last update is not waited for by deliver
        with open(self.usage_file()) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "1000000S,100C")  # Courier's and Dovecot's limits line
        # The first check counted (nothing), then one line per message.
        self.assertEqual(lines[1], "0 0")
        self.assertEqual(lines[2:], [lines[2]] * 3)
        self.assertEqual(lines[2].split()[1], "1")
        report = yield store.quota(ALICE)
        self.assertEqual(report.messages, 3)

    @defer.inlineCallbacks
    def test_a_new_process_trusts_the_file(self):
        first = self.make()
        yield self.deliver(first, 2)
        yield first.close()  # as a process stops: its updates are written
        with open(self.usage_file(), "a") as f:
            f.write("5000 7\n")  # as another writer (Dovecot) would add
        report = yield self.make().quota(ALICE)
        self.assertEqual(report.messages, 9)

    @defer.inlineCallbacks
    def test_a_deleted_file_is_recounted_from_the_folders(self):
        store = self.make()
        yield self.deliver(store, 2)
        before = yield store.quota(ALICE)
        os.unlink(self.usage_file())
        after = yield store.quota(ALICE)
        self.assertEqual((after.storage, after.messages), (before.storage, before.messages))
        self.assertTrue(os.path.exists(self.usage_file()))

    @defer.inlineCallbacks
    def test_outside_writers_are_caught_after_the_recount_interval(self):
        store = self.make()
        yield self.deliver(store, 1)
        inbox = os.path.join(self.dir, "example.test", "alice", "new")
        with open(os.path.join(inbox, "1.outside.host"), "wb") as f:
            f.write(message(500))
        report = yield store.quota(ALICE)
        self.assertEqual(report.messages, 1)  # not walked per message
        self.now += quota.RECALC_INTERVAL + 1
        report = yield store.quota(ALICE)
        self.assertEqual(report.messages, 2)

    def test_a_limits_line_without_a_part_means_no_limit_there(self):
        self.assertEqual(quota.Limits(2048, 0).line(), "2048S")
        self.assertTrue(quota.Limits(2048, 0).written_as("2048S"))
        self.assertTrue(quota.Limits(2048, 10).written_as("2048S,10C"))
        self.assertFalse(quota.Limits(2048, 10).written_as("2048S"))

    @defer.inlineCallbacks
    def test_other_limits_recount(self):
        first = self.make()
        yield self.deliver(first, 1)
        yield first.close()
        with open(self.usage_file(), "a") as f:
            f.write("5000 7\n")
        inner = MaildirStore(os.path.join(self.dir, "%d", "%n"))
        other = quota.QuotaStore(inner, quota.MaildirLayout(inner), None, storage=10**6, messages=50)
        report = yield other.quota(ALICE)
        self.assertEqual(report.messages, 1)

    @defer.inlineCallbacks
    def test_the_check_refuses_a_message_bigger_than_the_quota_for_good(self):
        store = self.make()
        yield self.assertFailure(store.check_quota(ALICE, 10**6 + 1), OverQuotaForGood)

    @defer.inlineCallbacks
    def test_mbox_usage_is_counted_the_same_way(self):
        inner = MboxStore(os.path.join(self.dir, "%d", "%n"))
        store = quota.QuotaStore(inner, quota.MboxLayout(inner), None, messages=100)
        self.addCleanup(inner.close)
        for _ in range(2):
            yield store.deliver(ALICE, BytesSource(message(1000)))
        counted = yield store.quota(ALICE)
        os.unlink(os.path.join(self.dir, "example.test", "alice", ".mailplat-quota"))
        walked = yield store.quota(ALICE)
        self.assertEqual(counted.messages, 2)
        self.assertEqual((walked.storage, walked.messages), (counted.storage, counted.messages))


class SQLColumns(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-sql-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "u.sqlite")

    def old_table(self):
        with sqlite3.connect(self.path) as db:
            db.execute("CREATE TABLE mailplat_users (address TEXT PRIMARY KEY, password TEXT NOT NULL)")
            db.execute("INSERT INTO mailplat_users VALUES (?, ?)", (ALICE, "{PLAIN}pw"))

    @defer.inlineCallbacks
    def test_an_old_table_gets_the_quota_columns(self):
        self.old_table()
        realm = SQLRealm(Database(self.path), verify_in_thread=False)
        self.addCleanup(realm.close)
        yield realm.set_quota(ALICE, storage=2048, messages=3)
        rules = yield realm.quota_rules(ALICE)
        self.assertEqual(rules, ["*:bytes=2048", "*:messages=3"])
        ok = yield realm.check_password(ALICE, "pw")
        self.assertEqual(ok, ALICE)

    @defer.inlineCallbacks
    def test_an_old_table_left_alone_means_no_overrides_not_an_error(self):
        self.old_table()
        realm = SQLRealm(Database(self.path, create_tables=False), verify_in_thread=False)
        self.addCleanup(realm.close)
        rules = yield realm.quota_rules(ALICE)
        self.assertEqual(rules, [])

    @defer.inlineCallbacks
    def test_null_columns_mean_the_defaults(self):
        realm = SQLRealm(Database(self.path), verify_in_thread=False)
        self.addCleanup(realm.close)
        yield realm.add_user(ALICE, "{PLAIN}pw")
        rules = yield realm.quota_rules(ALICE)
        self.assertEqual(rules, [])


# --- over the wire -----------------------------------------------------------------------


class Wire:
    """SMTP and IMAP against a server with [quota]; subclasses pick the store."""

    store = "maildir"
    QUOTA = 'storage = "8k"\nmessages = 20\n'
    EXTRA = ""

    @defer.inlineCallbacks
    def setUp(self):
        from tests.test_imap_maildir import drain

        self.server = MailServer(self, listeners=("smtp", "imap"), extra=f"[quota]\n{self.QUOTA}{self.EXTRA}")
        self.prepare(self.server)
        yield self.server.start(users={ALICE: "pw", BOB: "pw"})
        self.addCleanup(drain, self.server)

    def prepare(self, server):
        """Before the server starts (files its config names)."""

    def send(self, recipients, data, size_hint=True):
        """(refused recipients, data answer) over SMTP; blocking."""

        def run():
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
                s.ehlo("client.example.org")
                options = [f"SIZE={len(data)}"] if size_hint else []
                code, text = s.mail("carol@example.org", options)
                assert code == 250, (code, text)
                refused = {}
                for r in recipients:
                    code, text = s.rcpt(r)
                    if code != 250:
                        refused[r] = (code, text.decode())
                if len(refused) == len(recipients):
                    return refused, None
                code, text = s.data(data)
                return refused, (code, text.decode())

        return in_thread(run)

    def imap(self, *commands, user=ALICE):
        def run():
            c = RawClient(self.server.port("imap"))
            self.addCleanup(c.close)
            c.command(b"T1 STARTTLS")
            c.starttls()
            c.command(b"L1 LOGIN " + user.encode() + b" pw")
            out = [b"".join(c.command(command)) for command in commands]
            c.command(b"Z LOGOUT")
            return out

        return in_thread(run)

    @defer.inlineCallbacks
    def count(self, user=ALICE, folder=b"INBOX"):
        (answer,) = yield self.imap(b"S1 STATUS " + folder + b" (MESSAGES)", user=user)
        return int(re.search(rb"MESSAGES (\d+)", answer).group(1))

    @defer.inlineCallbacks
    def fill(self, n, size=1000):
        for _ in range(n):
            refused, answer = yield self.send([ALICE], message(size))
            self.assertEqual((refused, answer[0]), ({}, 250))


class SMTPQuota(Wire):
    QUOTA = 'storage = "8k"\nmessages = 3\nwarning_percent = 0\n'

    @defer.inlineCallbacks
    def test_rcpt_gets_452_while_the_mailbox_is_full_and_the_others_get_the_message(self):
        yield self.fill(3)
        refused, answer = yield self.send([ALICE, BOB], message(500))
        self.assertEqual(list(refused), [ALICE])
        self.assertEqual(refused[ALICE][0], 452)
        self.assertTrue(refused[ALICE][1].startswith("4.2.2"), refused)
        self.assertEqual(answer[0], 250)
        self.assertEqual((yield self.count(BOB)), 1)
        self.assertEqual((yield self.count(ALICE)), 3)

    @defer.inlineCallbacks
    def test_size_bigger_than_the_quota_gets_552_at_rcpt(self):
        refused, _ = yield self.send([ALICE], message(9000))
        self.assertEqual(refused[ALICE][0], 552)
        self.assertTrue(refused[ALICE][1].startswith("5.2.2"), refused)

    @defer.inlineCallbacks
    def test_a_message_bigger_than_the_quota_gets_552_at_end_of_data(self):
        refused, answer = yield self.send([ALICE], message(9000), size_hint=False)
        self.assertEqual(refused, {})
        self.assertEqual(answer[0], 552)
        self.assertTrue(answer[1].startswith("5.2.2"), answer)
        self.assertEqual((yield self.count(ALICE)), 0)

    @defer.inlineCallbacks
    def test_a_message_that_does_not_fit_in_the_space_left_gets_452_at_end_of_data(self):
        yield self.fill(1, 5000)
        refused, answer = yield self.send([ALICE], message(5000), size_hint=False)
        self.assertEqual(refused, {})
        self.assertEqual(answer[0], 452)
        self.assertTrue(answer[1].startswith("4.2.2"), answer)
        self.assertEqual((yield self.count(ALICE)), 1)

    @defer.inlineCallbacks
    def test_without_a_queue_one_full_recipient_defers_the_whole_message(self):
        # One reply covers every recipient and nothing can hold the message for alice.
        yield self.fill(1, 5000)
        refused, answer = yield self.send([ALICE, BOB], message(5000), size_hint=False)
        self.assertEqual(answer[0], 452)
        self.assertEqual((yield self.count(BOB)), 0)

    @defer.inlineCallbacks
    def test_mail_fits_again_after_an_expunge(self):
        yield self.fill(3)
        yield self.imap(b"S SELECT INBOX", b"F STORE 1 +FLAGS (\\Deleted)", b"E EXPUNGE")
        refused, answer = yield self.send([ALICE], message(500))
        self.assertEqual((refused, answer[0]), ({}, 250))


class SMTPQuotaMaildir(SMTPQuota, unittest.TestCase):
    pass


class SMTPQuotaMbox(SMTPQuota, unittest.TestCase):
    store = "mbox"


class QueuedWhenOthersFit(Wire, unittest.TestCase):
    """With a relay queue, a recipient over quota at end of data waits there; the others get their copy."""

    QUOTA = 'storage = "8k"\nmessages = 2\nwarning_percent = 0\n'
    EXTRA = "[relay]\nenabled = true\n"

    def prepare(self, server):
        path = os.path.join(server.dir, "aliases")
        with open(path, "w") as f:
            f.write(f"team@example.test: {ALICE}, {BOB}\n")
        server.extra += f'[aliases]\npath = "{path}"\n'

    def queued(self):
        return [r["address"] for rec in self.server.service.backends.relay.spool.list() for r in rec["recipients"]]

    @defer.inlineCallbacks
    def test_the_full_recipient_is_queued_and_the_other_delivered(self):
        yield self.fill(1, 5000)
        refused, answer = yield self.send([ALICE, BOB], message(5000), size_hint=False)
        self.assertEqual((refused, answer[0]), ({}, 250))
        self.assertEqual((yield self.count(BOB)), 1)
        self.assertEqual((yield self.count(ALICE)), 1)
        self.assertEqual(self.queued(), [ALICE])

    @defer.inlineCallbacks
    def test_the_queued_copy_arrives_once_there_is_room(self):
        from tests.test_relay_delivery import wait_for

        yield self.fill(2, 500)
        yield self.send(["team@example.test"], message(500))
        yield self.imap(b"S SELECT INBOX", b"F STORE 1 +FLAGS (\\Deleted)", b"E EXPUNGE")
        relay = self.server.service.backends.relay
        yield wait_for(lambda: not any(e.busy for e in relay.entries.values()))
        relay.flush()
        yield wait_for(lambda: not relay.entries)
        self.assertEqual((yield self.count(ALICE)), 2)

    @defer.inlineCallbacks
    def test_a_full_member_does_not_refuse_an_alias(self):
        yield self.fill(2, 500)
        refused, answer = yield self.send(["team@example.test"], message(500))
        self.assertEqual((refused, answer[0]), ({}, 250))
        self.assertEqual((yield self.count(BOB)), 1)
        self.assertEqual((yield self.count(ALICE)), 2)
        self.assertEqual(self.queued(), [ALICE])

    @defer.inlineCallbacks
    def test_a_full_mailbox_named_directly_is_still_refused_at_rcpt(self):
        yield self.fill(2, 500)
        refused, _ = yield self.send([ALICE, BOB], message(500))
        self.assertEqual(refused[ALICE][0], 452)
        self.assertEqual(self.queued(), [])


class IMAPQuota(Wire):
    QUOTA = 'storage = "8k"\nmessages = 4\nwarning_percent = 0\n'

    @defer.inlineCallbacks
    def test_quota_is_advertised(self):
        (answer,) = yield self.imap(b"C CAPABILITY")
        for cap in (b" QUOTA", b" QUOTA=RES-STORAGE", b" QUOTA=RES-MESSAGE"):
            self.assertIn(cap, answer)

    @defer.inlineCallbacks
    def test_getquotaroot_counts_deliveries_and_expunges(self):
        yield self.fill(2, 1000)
        answers = yield self.imap(
            b"Q1 GETQUOTAROOT INBOX",
            b"S SELECT INBOX",
            b"F STORE 1 +FLAGS (\\Deleted)",
            b"T STATUS INBOX (DELETED DELETED-STORAGE)",
            b"E EXPUNGE",
            b"Q2 GETQUOTAROOT INBOX",
            b"Q3 GETQUOTA \"\"",
        )
        first, status, after, root = answers[0], answers[3], answers[5], answers[6]
        self.assertIn(b'* QUOTAROOT "INBOX" ""\r\n', first)
        pattern = rb'\* QUOTA "" \(STORAGE (\d+) 8 MESSAGE (\d+) 4\)'
        before = [int(n) for n in re.search(pattern, first).groups()]
        later = [int(n) for n in re.search(pattern, after).groups()]
        # Two messages of a bit over 1000 octets (CRLF, trace headers), in KiB rounded up.
        self.assertEqual(before, [3, 2])
        self.assertEqual(later, [2, 1])
        self.assertIn(b"(DELETED 1 DELETED-STORAGE 1)", status)
        self.assertIn(b'* QUOTA "" (STORAGE 2 8 MESSAGE 1 4)', root)

    @defer.inlineCallbacks
    def test_getquota_of_another_root_is_no(self):
        (answer,) = yield self.imap(b"Q GETQUOTA \"#user/bob\"")
        self.assertIn(b"Q NO [NONEXISTENT]", answer)

    @defer.inlineCallbacks
    def test_setquota_is_refused(self):
        (answer,) = yield self.imap(b"Q SETQUOTA \"\" (STORAGE 100)")
        self.assertIn(b"Q NO [NOPERM]", answer)

    @defer.inlineCallbacks
    def test_append_over_quota_is_no_overquota(self):
        yield self.fill(4, 500)
        (answer,) = yield self.imap(b"A APPEND INBOX " + literal(message(300)))
        self.assertIn(b"A NO [OVERQUOTA]", answer)
        self.assertEqual((yield self.count(ALICE)), 4)

    @defer.inlineCallbacks
    def test_append_of_a_message_that_does_not_fit_is_no_overquota(self):
        yield self.fill(1, 5000)
        (answer,) = yield self.imap(b"A APPEND Drafts " + literal(message(5000)))
        self.assertIn(b"A NO [OVERQUOTA]", answer)
        self.assertEqual((yield self.count(ALICE, b"Drafts")), 0)

    @defer.inlineCallbacks
    def test_append_that_fits_is_counted(self):
        (appended, root) = yield self.imap(b"A APPEND Drafts " + literal(message(1000)), b"Q GETQUOTAROOT Drafts")
        self.assertIn(b"A OK", appended)
        self.assertIn(b"MESSAGE 1 4)", root)

    @defer.inlineCallbacks
    def test_copy_over_quota_is_no_overquota(self):
        yield self.fill(3, 2000)
        answers = yield self.imap(b"S SELECT INBOX", b"C COPY 1:3 Archive")
        self.assertIn(b"C NO [OVERQUOTA]", answers[1])
        self.assertEqual((yield self.count(ALICE, b"Archive")), 0)

    @defer.inlineCallbacks
    def test_copy_is_counted(self):
        yield self.fill(1, 1000)
        answers = yield self.imap(b"S SELECT INBOX", b"C COPY 1 Archive", b"Q GETQUOTAROOT INBOX")
        self.assertIn(b"C OK", answers[1])
        self.assertIn(b"MESSAGE 2 4)", answers[2])

    @defer.inlineCallbacks
    def test_move_while_over_quota_works_and_keeps_the_usage(self):
        # One quota root: a move adds nothing, so a full mailbox can still be tidied up.
        yield self.fill(4, 500)
        answers = yield self.imap(b"S SELECT INBOX", b"M MOVE 1 Trash", b"Q GETQUOTAROOT INBOX")
        self.assertIn(b"M OK", answers[1])
        self.assertIn(b"MESSAGE 4 4)", answers[2])
        self.assertEqual((yield self.count(ALICE, b"Trash")), 1)

    @defer.inlineCallbacks
    def test_getquotaroot_of_a_missing_mailbox_is_no(self):
        (answer,) = yield self.imap(b"Q GETQUOTAROOT Nowhere")
        self.assertIn(b"Q NO [NONEXISTENT]", answer)


class POP3AndCLI(Wire):
    QUOTA = "messages = 5\nwarning_percent = 0\n"

    @defer.inlineCallbacks
    def setUp(self):
        from tests.test_imap_maildir import drain

        self.server = MailServer(self, listeners=("smtp", "imap", "pop3s"), extra=f"[quota]\n{self.QUOTA}")
        yield self.server.start(users={ALICE: "pw", BOB: "pw"})
        self.addCleanup(drain, self.server)

    @defer.inlineCallbacks
    def test_pop3_dele_lowers_the_usage(self):
        import poplib

        from tests.helpers import client_tls

        yield self.fill(2)

        def pop():
            p = poplib.POP3_SSL("127.0.0.1", self.server.port("pop3s"), context=client_tls(), timeout=10)
            p.user(ALICE)
            p.pass_("pw")
            p.dele(1)
            p.quit()

        yield in_thread(pop)
        (answer,) = yield self.imap(b"Q GETQUOTAROOT INBOX")
        self.assertIn(b"(MESSAGE 1 5)", answer)

    @defer.inlineCallbacks
    def test_mailplat_quota_show_and_recalc(self):
        import subprocess
        import sys

        yield self.fill(2)
        os.unlink(self.usage_path())

        def run(action):
            return subprocess.run(
                [sys.executable, "-m", "mailplat.cli", "--config", self.server.config_path, "quota", action, ALICE],
                cwd=self.server.dir, capture_output=True, text=True, timeout=60,
            )

        shown = yield in_thread(run, "recalc")
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("messages  2 of 5 (40%)", shown.stdout)
        self.assertTrue(os.path.exists(self.usage_path()))
        shown = yield in_thread(run, "show")
        self.assertIn("storage   no limit", shown.stdout)

    def usage_path(self):
        name = "maildirsize" if self.store == "maildir" else ".mailplat-quota"
        return os.path.join(self.server.maildir(ALICE), name)


class POP3AndCLIMaildir(POP3AndCLI, unittest.TestCase):
    pass


class POP3AndCLIMbox(POP3AndCLI, unittest.TestCase):
    store = "mbox"


class IMAPQuotaMaildir(IMAPQuota, unittest.TestCase):
    pass


class IMAPQuotaMbox(IMAPQuota, unittest.TestCase):
    store = "mbox"


class Restart(Wire):
    QUOTA = "messages = 10\nwarning_percent = 0\n"

    def usage_path(self):
        name = "maildirsize" if self.store == "maildir" else ".mailplat-quota"
        return os.path.join(self.server.maildir(ALICE), name)

    @defer.inlineCallbacks
    def restart(self):
        from mailplat.service import make_service
        from tests.helpers import _peek

        yield self.server.service.stopService()
        self.server.service = make_service(self.server.config)
        self.server.service.startService()
        for svc in self.server.service:
            listening = yield _peek(svc._waitingForPort)
            self.server.ports[svc.name] = listening.getHost().port

    @defer.inlineCallbacks
    def test_usage_survives_a_restart_from_the_file(self):
        yield self.fill(2)
        yield self.server.service.backends.store.close()
        with open(self.usage_path(), "a") as f:
            f.write("0 3\n")  # another writer's line: read, not recounted away
        yield self.restart()
        (answer,) = yield self.imap(b"Q GETQUOTAROOT INBOX")
        self.assertIn(b"(MESSAGE 5 10)", answer)

    @defer.inlineCallbacks
    def test_a_deleted_file_is_recounted_after_a_restart(self):
        yield self.fill(2)
        yield self.server.service.backends.store.close()
        os.unlink(self.usage_path())
        yield self.restart()
        (answer,) = yield self.imap(b"Q GETQUOTAROOT INBOX")
        self.assertIn(b"(MESSAGE 2 10)", answer)
        self.assertTrue(os.path.exists(self.usage_path()))


class RestartMaildir(Restart, unittest.TestCase):
    pass


class RestartMbox(Restart, unittest.TestCase):
    store = "mbox"


class NoLimits(Wire, unittest.TestCase):
    QUOTA = ""

    @defer.inlineCallbacks
    def test_a_user_without_limits_has_no_quota_root_and_no_usage_file(self):
        yield self.fill(1)
        (answer,) = yield self.imap(b"Q GETQUOTAROOT INBOX")
        self.assertIn(b'* QUOTAROOT "INBOX"\r\n', answer)
        self.assertNotIn(b"* QUOTA ", answer)
        self.assertFalse(os.path.exists(os.path.join(self.server.maildir(ALICE), "maildirsize")))


class Warning(Wire):
    QUOTA = "messages = 20\n"

    def warnings(self, user=ALICE):
        d = self.imap(b"S SELECT INBOX", b"F SEARCH HEADER Subject \"90% full\"", user=user)
        return d.addCallback(lambda answers: len(re.search(rb"\* SEARCH([ \d]*)", answers[1]).group(1).split()))

    @defer.inlineCallbacks
    def test_one_warning_at_90_percent(self):
        yield self.fill(17)
        self.assertEqual((yield self.warnings()), 0)
        yield self.fill(1)  # 18 of 20: 90%
        self.assertEqual((yield self.warnings()), 1)
        yield self.fill(1)  # still above: no second warning
        self.assertEqual((yield self.warnings()), 1)
        (answer,) = yield self.imap(b"Q GETQUOTAROOT INBOX")
        self.assertIn(b"MESSAGE 20 20)", answer)  # the warning counts too

    @defer.inlineCallbacks
    def test_again_only_after_going_below(self):
        yield self.fill(18)  # the warning is message 19
        yield self.imap(b"S SELECT INBOX", b"F STORE 1:10 +FLAGS (\\Deleted)", b"E EXPUNGE")  # 9 left
        yield self.fill(9)  # 18 again
        self.assertEqual((yield self.warnings()), 2)

    @defer.inlineCallbacks
    def test_the_warning_comes_from_postmaster_of_the_users_domain(self):
        yield self.fill(18)
        answers = yield self.imap(b"S SELECT INBOX", b"F FETCH 19 BODY.PEEK[HEADER.FIELDS (FROM AUTO-SUBMITTED)]")
        self.assertIn(b"postmaster@example.test", answers[1])
        self.assertIn(b"Auto-Submitted: auto-generated", answers[1])


class WarningMaildir(Warning, unittest.TestCase):
    pass


class WarningMbox(Warning, unittest.TestCase):
    store = "mbox"


class PasswdFileOverride(Wire, unittest.TestCase):
    QUOTA = ""

    @defer.inlineCallbacks
    def setUp(self):
        from tests.test_imap_maildir import drain

        self.server = MailServer(self, listeners=("smtp", "imap"), extra="[quota]\nwarning_percent = 0\n")
        os.makedirs(self.server.state, exist_ok=True)
        with open(os.path.join(self.server.state, "users"), "w") as f:
            f.write(f"{ALICE}:{passwords.hash_password('pw', 'PLAIN')}::::::userdb_quota_rule=*:messages=1\n")
            f.write(f"{BOB}:{passwords.hash_password('pw', 'PLAIN')}\n")
        yield self.server.start()
        self.addCleanup(drain, self.server)

    @defer.inlineCallbacks
    def test_the_users_rule_applies_and_others_keep_the_default(self):
        yield self.fill(1)
        refused, answer = yield self.send([ALICE, BOB], message(500))
        self.assertEqual(refused[ALICE][0], 452)
        self.assertEqual(answer[0], 250)
        (answer,) = yield self.imap(b"Q GETQUOTAROOT INBOX")
        self.assertIn(b"(MESSAGE 1 1)", answer)


class SQLOverride(Wire, unittest.TestCase):
    QUOTA = 'storage = "1M"\nwarning_percent = 0\n'

    @defer.inlineCallbacks
    def setUp(self):
        from tests.test_imap_maildir import drain
        from tests.test_sql_realm import SQLMailServer

        self.server = SQLMailServer(self, listeners=("smtp", "imap"), extra=f"[quota]\n{self.QUOTA}")
        yield self.server.start(users={ALICE: "pw", BOB: "pw"})
        self.addCleanup(drain, self.server)
        with sqlite3.connect(self.server.database) as db:
            db.execute("UPDATE mailplat_users SET quota_messages = 1 WHERE address = ?", (ALICE,))

    @defer.inlineCallbacks
    def test_the_column_applies_over_the_default(self):
        yield self.fill(1)
        refused, answer = yield self.send([ALICE, BOB], message(500))
        self.assertEqual(refused[ALICE][0], 452)
        self.assertEqual(answer[0], 250)
        (answer,) = yield self.imap(b"Q GETQUOTAROOT INBOX")
        self.assertRegex(answer, rb"\(STORAGE \d 1024 MESSAGE 1 1\)")


class Errors(unittest.TestCase):
    def test_over_quota_answers_452_and_552(self):
        self.assertEqual((OverQuota().code, OverQuota().enhanced), (452, "4.2.2"))
        self.assertEqual((OverQuotaForGood().code, OverQuotaForGood().enhanced), (552, "5.2.2"))
