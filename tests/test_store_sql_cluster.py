"""
Two real `twistd mailplat` nodes on one PostgreSQL schema (issue 16):
concurrent APPENDs through both give one ascending run of UIDs in every
session's view, and `kill -9` of one node in the middle of SMTP deliveries
to both loses no message that a client saw acknowledged with 250. And
the delivery path's remembered mailbox ids (mailplat/store/sql/delivery.py)
follow folders deleted, renamed or made again through another node.
Needs PostgreSQL (MAILPLAT_TEST_PG_DSN), else skipped.
"""

import imaplib
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.store.source import BytesSource
from mailplat.testing.store import message

from tests.helpers import free_port
from tests.test_relay_restart import TWISTD, wait_port
from tests.test_store_sql import PostgresSchema

ALICE = "alice@example.test"

CONFIG = """
[server]
hostname = "node{n}.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port={smtp}:interface=127.0.0.1"
imap = "tcp:port={imap}:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "users"

[tls]
allow_plaintext_auth = true

[store]
backend = "sql"
dsn = "{dsn}"

[delivery]
local = "sql"

[limits]
connections_per_ip = 10000
auth_failures = 100000
"""

MESSAGE = "From: bob@example.org\r\nTo: alice@example.test\r\nSubject: {key}\r\n\r\nBody of {key}.\r\n"


class Node:
    """One twistd process of the cluster, in a directory of its own."""

    def __init__(self, test, n, dsn):
        self.dir = tempfile.mkdtemp(prefix=f"mailplat-sql-node{n}-")
        test.addCleanup(shutil.rmtree, self.dir, True)
        self.smtp, self.imap = free_port(), free_port()
        with open(os.path.join(self.dir, "mailplat.toml"), "w") as f:
            f.write(CONFIG.format(n=n, smtp=self.smtp, imap=self.imap, dsn=dsn))
        with open(os.path.join(self.dir, "users"), "w") as f:
            f.write(f"{ALICE}:{{PLAIN}}pw\n")
        out = open(os.path.join(self.dir, "twistd.out"), "ab")
        test.addCleanup(out.close)
        self.proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "mailplat", "--config", "mailplat.toml"],
            cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
        )
        test.addCleanup(self.stop)

    def wait(self):
        wait_port(self.smtp, timeout=30)
        wait_port(self.imap, timeout=30)

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def login(port):
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    c.login(ALICE, "pw")
    return c


def view(c):
    """[uid] of the session's INBOX by sequence number (FETCH 1:* UID), after a NOOP for what is new."""
    c.noop()
    typ, data = c.fetch("1:*", "(UID)")
    if data == [None]:
        return []
    pairs = [re.match(rb"(\d+) \(UID (\d+)\)", line).groups() for line in data]
    seqs = [int(s) for s, _ in pairs]
    if seqs != list(range(1, len(seqs) + 1)):
        raise AssertionError(f"sequence numbers out of order: {seqs[:20]}...")
    return [int(u) for _, u in pairs]


def subjects(c):
    """The Subject of every message in the selected folder."""
    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    found = set()
    for item in data:
        if isinstance(item, tuple):
            m = re.search(rb"Subject: (\S+)", item[1])
            if m:
                found.add(m.group(1).decode())
    return found


class TwoTwistdNodes(PostgresSchema, unittest.TestCase):
    def setUp(self):
        PostgresSchema.setUp(self)
        self.nodes = [Node(self, n, self.dsn) for n in (0, 1)]
        for node in self.nodes:
            node.wait()

    def inbox_count(self):
        return self.query(
            "SELECT count(*), count(DISTINCT m.uid) FROM mailplat_messages m "
            "JOIN mailplat_mailboxes b ON b.id = m.mailbox WHERE b.name = 'INBOX'"
        )[0]

    def test_500_appends_through_each_node_give_1000_ascending_uids_in_every_view(self):
        sessions_per_node, appends_each = 5, 100  # 2 nodes x 5 sessions x 100 = 2 x 500
        count = 2 * sessions_per_node * appends_each
        ports = [node.imap for node in self.nodes for _ in range(sessions_per_node)]
        sessions = [login(port) for port in ports]
        try:
            for c in sessions:
                c.select("INBOX")
            appended = threading.Barrier(len(sessions))

            def append_then_look(i):
                c, uids = sessions[i], []
                for n in range(appends_each):
                    typ, data = c.append("INBOX", None, None, MESSAGE.format(key=f"a{i}-{n}").encode())
                    self.assertEqual(typ, "OK")
                    uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))
                appended.wait(60)
                return uids, view(c)

            with ThreadPoolExecutor(len(sessions)) as pool:
                results = list(pool.map(append_then_look, range(len(sessions))))
        finally:
            for c in sessions:
                try:
                    c.logout()
                except Exception:
                    pass
        everyone = sorted(uid for uids, _ in results for uid in uids)
        self.assertEqual(len(set(everyone)), count)
        for uids, seen in results:
            self.assertEqual(uids, sorted(uids))  # each session's own, in the order it appended
            self.assertEqual(seen, everyone)  # every session, on either node, sees all, ascending
        for node in self.nodes:
            fresh = login(node.imap)
            try:
                fresh.select("INBOX", readonly=True)
                self.assertEqual(view(fresh), everyone)
            finally:
                fresh.logout()
        self.assertEqual(self.inbox_count(), (count, count))

    def test_kill_9_of_one_node_under_smtp_load_loses_no_acknowledged_message(self):
        a, b = self.nodes
        acked = {a.smtp: [], b.smtp: []}
        failed = {a.smtp: 0, b.smtp: 0}
        stop = threading.Event()

        def sender(port, name):
            n = 0
            while not stop.is_set():
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
                        while not stop.is_set():
                            key = f"{name}-{n}"
                            n += 1
                            s.sendmail("bob@example.org", [ALICE], MESSAGE.format(key=key))
                            acked[port].append(key)  # the 250 after end of data
                except (OSError, smtplib.SMTPException):
                    failed[port] += 1
                    if port == b.smtp and b.proc.poll() is not None:
                        return  # B is gone: nothing listens there any more
                    time.sleep(0.05)

        with ThreadPoolExecutor(8) as pool:
            for i in range(4):
                pool.submit(sender, a.smtp, f"A{i}")
                pool.submit(sender, b.smtp, f"B{i}")
            deadline = time.monotonic() + 20
            while len(acked[b.smtp]) < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            b.kill()  # mid-transaction on some of B's connections
            before = len(acked[a.smtp])
            while len(acked[a.smtp]) < before + 40 and time.monotonic() < deadline + 10:
                time.sleep(0.01)
            stop.set()

        self.assertGreaterEqual(len(acked[b.smtp]), 40)
        self.assertGreaterEqual(failed[b.smtp], 4)  # every client of B lost its connection
        self.assertGreaterEqual(len(acked[a.smtp]), before + 40)  # A went on serving
        everything = set(acked[a.smtp]) | set(acked[b.smtp])
        c = login(a.imap)
        try:
            c.select("INBOX", readonly=True)
            stored = subjects(c)
            uids = view(c)
        finally:
            c.logout()
        self.assertEqual(everything - stored, set())  # every 250 is in the database
        total, distinct = self.inbox_count()
        self.assertEqual(total, distinct)
        self.assertEqual(len(uids), total)  # node A's view is the database's
        # At most one message per client of B was stored without its 250 (killed before the answer).
        self.assertLessEqual(total - len(everything), 4)


class RememberedTargets(PostgresSchema, unittest.TestCase):
    """Node A delivers (and remembers where to), node B changes the folders meanwhile."""

    @defer.inlineCallbacks
    def setUp(self):
        PostgresSchema.setUp(self)
        self.a, self.b = self.new_store(), self.new_store()
        # "Work" does not exist yet: INBOX, and nothing remembered for "Work".
        yield self.a.deliver(ALICE, BytesSource(message(0)), "Work")
        self.account = yield self.b.account(ALICE)

    @defer.inlineCallbacks
    def folder_subjects(self, name):
        folder = yield (yield self.b.account(ALICE)).folder(name)
        found = []
        for info in folder.messages():
            data = (yield folder.open(info.uid)).read()
            found.append(int(re.search(rb"Subject: message (\d+)", data).group(1)))
        return found

    @defer.inlineCallbacks
    def test_later_deliveries_keep_the_flags_a_sieve_script_set(self):
        yield self.a.deliver(ALICE, BytesSource(message(1)), None, flags=("\\Seen",))
        yield self.a.deliver(ALICE, BytesSource(message(2)), None, flags=("\\flagged", "$Work", "it's"))
        folder = yield (yield self.b.account(ALICE)).folder("INBOX")
        self.assertEqual(
            [info.flags for info in folder.messages()],
            [frozenset(), frozenset({"\\Seen"}), frozenset({"\\Flagged", "$Work", "it's"})],
        )

    @defer.inlineCallbacks
    def test_a_folder_deleted_on_another_node_gets_no_more_mail(self):
        yield self.account.create("Work")
        yield self.a.deliver(ALICE, BytesSource(message(1)), "Work")
        yield self.account.delete("Work")
        yield self.a.deliver(ALICE, BytesSource(message(2)), "Work")  # falls back to INBOX
        self.assertEqual((yield self.folder_subjects("INBOX")), [0, 2])

    @defer.inlineCallbacks
    def test_a_folder_renamed_on_another_node_and_made_again_gets_the_mail(self):
        yield self.account.create("Work")
        yield self.a.deliver(ALICE, BytesSource(message(1)), "Work")
        yield self.account.rename("Work", "Old")
        yield self.account.create("Work")
        yield self.a.deliver(ALICE, BytesSource(message(2)), "Work")
        self.assertEqual((yield self.folder_subjects("Old")), [1])
        self.assertEqual((yield self.folder_subjects("Work")), [2])

    @defer.inlineCallbacks
    def test_inbox_renamed_on_another_node_still_gets_the_mail(self):
        # RFC 3501 6.3.5: RENAME INBOX moves its messages; INBOX stays, empty.
        yield self.account.rename("INBOX", "Saved")
        yield self.a.deliver(ALICE, BytesSource(message(1)))
        self.assertEqual((yield self.folder_subjects("Saved")), [0])
        self.assertEqual((yield self.folder_subjects("INBOX")), [1])

    @defer.inlineCallbacks
    def test_another_node_hears_of_every_delivery_first_and_later_ones(self):
        from twisted.internet import reactor, task

        folder = yield (yield self.b.account(ALICE)).folder("INBOX")
        heard = []
        unsubscribe = folder.subscribe(lambda event: heard.extend(event.uids) if event.kind == "exists" else None)
        self.addCleanup(unsubscribe)
        yield task.deferLater(reactor, 0.5, lambda: None)  # B's listener is up
        for n in (1, 2, 3):  # the first looks the target up, the others are the one-query path
            yield self.a.deliver(ALICE, BytesSource(message(n)))
        for _ in range(50):
            if len(heard) == 3:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(sorted(heard), [2, 3, 4])  # UID 1: the message of setUp
