"""
The envelope processes (mailplat.imap.envelope_pool): a big folder's
first FETCH ENVELOPE is parsed on other cores, gives the same answer as
the in-process parser, and a file they cannot read, or a worker that
died, costs nothing but the speed (threads read those messages).
"""

import imaplib
import os
import signal
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mailplat.imap import envelope_pool, mailboxes, mime
from mailplat.imap.envelope_pool import EnvelopePool, EnvelopeUnavailable
from mailplat.imap.envelope_worker import read_header
from tests.helpers import MailServer, client_tls, in_thread
from tests.test_imap_maildir import drain

ALICE = "alice@example.test"
COUNT = 12


def message(n):
    return (
        f'From: "Sender {n}" <sender{n}@example.org>\r\n'
        f"To: alice@example.test, undisclosed-recipients:;\r\n"
        f"Subject: =?utf-8?q?caf=C3=A9?= number {n}\r\n"
        f"Date: Mon, 1 Jan 2024 00:00:{n:02d} +0000\r\n"
        f"Message-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n"
    ).encode()


def fill(maildir, count):
    """Files straight into cur/ (as a folder copied in): nothing known of them yet."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    names = []
    for n in range(count):
        data = message(n)
        name = f"{1_700_000_000 + n}.M{n}P1Q1.test,S={len(data)}:2,S"
        with open(os.path.join(maildir, "cur", name), "wb") as f:
            f.write(data)
        names.append(name)
    return names


class Pool(unittest.TestCase):
    @defer.inlineCallbacks
    def pool(self, workers=2):
        pool = EnvelopePool(workers=workers)
        pool.startService()
        self.addCleanup(pool.stopService)
        pool.wake()
        yield deferLater(reactor, 0, lambda: None)
        return pool

    @defer.inlineCallbacks
    def test_envelopes_match_the_in_process_parser_and_missing_files_are_none(self):
        folder = tempfile.mkdtemp(prefix="mailplat-env-")
        self.addCleanup(__import__("shutil").rmtree, folder, True)
        names = fill(folder, COUNT)
        paths = [os.path.join(folder, "cur", n) for n in names]
        paths.insert(3, os.path.join(folder, "cur", "gone"))
        pool = yield self.pool()
        got = yield pool.envelopes(paths)
        self.assertEqual(len(got), COUNT + 1)
        self.assertIsNone(got[3])
        for path, env in zip(paths[:3] + paths[4:], got[:3] + got[4:]):
            with open(path, "rb") as f:
                self.assertEqual(env, mime.message_envelope(read_header(f)))
        self.assertIn(b'(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)', got[0])
        self.assertEqual(pool.answered, COUNT + 1)

    @defer.inlineCallbacks
    def test_sort_keys_match_the_in_process_ones(self):
        import json

        from mailplat.imap import sortkeys

        folder = tempfile.mkdtemp(prefix="mailplat-env-")
        self.addCleanup(__import__("shutil").rmtree, folder, True)
        paths = [os.path.join(folder, "cur", n) for n in fill(folder, COUNT)]
        pool = yield self.pool()
        got = yield pool.sort_keys(paths + [os.path.join(folder, "gone")])
        self.assertIsNone(got[-1])
        for path, keys in zip(paths, got):
            with open(path, "rb") as f:
                self.assertEqual(json.loads(keys), sortkeys.keys_of_header(sortkeys._read_header(f)))

    @defer.inlineCallbacks
    def test_a_killed_worker_fails_its_requests_and_is_started_again(self):
        pool = yield self.pool(workers=1)
        worker = pool.workers[0]
        pending = worker.send(99, ["/nonexistent"])
        os.kill(worker.transport.pid, signal.SIGKILL)
        with self.assertRaises(EnvelopeUnavailable):
            yield pending
        yield worker.ended
        self.assertFalse(pool.available)
        pool.restart_delay = 0
        got = yield pool.envelopes(["/nonexistent"])  # this one started a new worker
        self.assertEqual(got, [None])
        self.assertNotEqual(pool.workers[0].transport.pid, worker.transport.pid)

    @defer.inlineCallbacks
    def test_stopping_ends_the_workers(self):
        pool = yield self.pool()
        ended = [w.ended for w in pool.workers]
        self.assertEqual(len(ended), 2)
        yield pool.stopService()
        yield defer.gatherResults(ended)
        self.assertFalse(pool.available)

    def test_a_pool_of_none_never_starts(self):
        pool = EnvelopePool(workers=0)
        pool.startService()
        pool.wake()
        self.assertEqual(pool.workers, [])
        self.assertFalse(pool.available)


class Fetch(unittest.TestCase):
    """FETCH ENVELOPE of a big folder over imaps, on the real server and maildir store."""

    @defer.inlineCallbacks
    def setUp(self):
        self.patch(mailboxes, "BIG_FOLDER", 5)  # "big" for a test: a dozen messages
        self.server = MailServer(self, listeners=("imaps",))
        self.names = fill(self.server.maildir(ALICE), COUNT)
        yield self.server.start(users={ALICE: "pw"})
        self.addCleanup(drain, self.server)
        self.pool = self.server.service.envelopes
        self.assertIsInstance(self.pool, EnvelopePool)
        self.pool.size = 2  # whatever the machine has

    def session(self, between=None):
        """SELECT INBOX, call `between` (in this thread), then FETCH 1:* (ENVELOPE): the FETCH lines."""
        c = imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=20)
        try:
            c.login(ALICE, "pw")
            c.select("INBOX")
            if between is not None:
                between()
            typ, data = c.fetch("1:*", "(ENVELOPE)")
            self.assertEqual(typ, "OK")
            # (an unsolicited FETCH of flags, a rename noticed meanwhile, is no answer of ours)
            return [d for d in data if isinstance(d, bytes) and b"ENVELOPE" in d]
        finally:
            c.logout()

    def expected(self):
        return [b"%d (ENVELOPE %s)" % (n + 1, mime.message_envelope(message(n))) for n in range(COUNT)]

    @defer.inlineCallbacks
    def wait_for_workers(self):
        for _ in range(500):
            if self.pool.available and len(self.pool.workers) == 2:
                return
            yield deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def test_first_fetch_envelope_of_a_big_folder_is_computed_by_the_workers(self):
        self.assertEqual(self.pool.workers, [])  # none before a big folder is selected
        got = yield in_thread(self.session)
        self.assertEqual(got, self.expected())
        self.assertEqual(self.pool.answered, COUNT)
        # A second session is answered from the folder's cache: nothing asked again.
        again = yield in_thread(self.session)
        self.assertEqual(again, self.expected())
        self.assertEqual(self.pool.answered, COUNT)

    @defer.inlineCallbacks
    def test_sort_of_a_big_folder_reads_its_keys_in_the_workers(self):
        from mailplat.imap import sortkeys

        self.patch(sortkeys, "BATCH", 2)  # the pool is asked from 2 * BATCH missing keys on
        yield self.wait_for_workers_after_select()

        def sort():
            c = imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=20)
            try:
                c.login(ALICE, "pw")
                c.select("INBOX")
                return c.sort("(REVERSE DATE)", "UTF-8", "ALL")
            finally:
                c.logout()

        typ, data = yield in_thread(sort)
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0].split(), [b"%d" % n for n in range(COUNT, 0, -1)])
        self.assertEqual(self.pool.answered, COUNT)

    @defer.inlineCallbacks
    def wait_for_workers_after_select(self):
        def select():
            c = imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=20)
            try:
                c.login(ALICE, "pw")
                c.select("INBOX")
            finally:
                c.logout()

        yield in_thread(select)
        yield self.wait_for_workers()

    @defer.inlineCallbacks
    def test_a_file_renamed_since_the_scan_is_read_in_process(self):
        cur = os.path.join(self.server.maildir(ALICE), "cur")

        def rename():
            os.rename(os.path.join(cur, self.names[2]), os.path.join(cur, self.names[2][:-1] + "FS"))

        got = yield in_thread(self.session, rename)
        self.assertEqual(got, self.expected())
        self.assertEqual(self.pool.answered, COUNT)  # the worker's None for it included

    @defer.inlineCallbacks
    def test_with_every_worker_dead_the_fetch_is_answered_in_process(self):
        def kill_workers():
            # Wait (in this thread) for the workers SELECT started, then kill them.
            import time

            for _ in range(500):
                if len(self.pool.workers) == 2:
                    break
                time.sleep(0.01)
            self.pool.restart_delay = 3600  # and none started again
            for w in list(self.pool.workers):
                os.kill(w.transport.pid, signal.SIGKILL)
            for _ in range(500):
                if not self.pool.workers:
                    break
                time.sleep(0.01)

        got = yield in_thread(self.session, kill_workers)
        self.assertEqual(got, self.expected())
        self.assertEqual(self.pool.answered, 0)


envelope_pool  # the module under test, imported for its name
