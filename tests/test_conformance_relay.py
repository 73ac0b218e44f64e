"""
The conformance kit's relay suite against the built-in RelayQueue. The
queue's service is never started, so it makes no delivery attempt (it
would route every domain to a closed local port and retry hours later).
"""

import os

from twisted.trial import unittest

from mailplat.delivery.relay import RelayQueue, RetryPolicy, Route, Router
from mailplat.delivery.relay.client import ConnectionPool
from mailplat.testing import RelayConformance
from tests.helpers import free_port


class RelayQueueConforms(RelayConformance, unittest.TestCase):
    def make_queue(self):
        self.state_dir = os.path.abspath(self.mktemp())
        queue = self._queue(self.state_dir)
        # startService does this; the kit's queue is never started.
        queue.spool.ensure()
        return queue

    def _queue(self, state_dir):
        closed = Route("127.0.0.1", free_port())
        router = Router(routes={"example.org": closed, "example.net": closed})
        pool = ConnectionPool("mx.example.test", timeout=5, connect_timeout=5)
        retry = RetryPolicy(first=3600, initial=3600)
        return RelayQueue(state_dir, "mx.example.test", ["example.test"], router, pool, retry)

    def reopen_queue(self, queue):
        again = self._queue(self.state_dir)
        again.spool.ensure()
        return again

    def queued(self, queue):
        # What the queue picks up when it starts (Spool.load, as after a restart).
        records, problems = queue.spool.load()
        self.assertEqual(problems, [], "unreadable queue records")
        held = {}
        for record in records:
            with open(queue.spool.eml(record["id"]), "rb") as f:
                data = f.read()
            waiting = [r["address"] for r in record["recipients"] if r["state"] in ("queued", "deferred")]
            held[record["id"]] = (record["sender"], waiting, data)
        return held

    def make_unwritable_queue(self):
        # The spool's message directory is gone (a dangling symlink): every write fails, even as root.
        state_dir = os.path.abspath(self.mktemp())
        queue = self._queue(state_dir)
        queue.spool.ensure()
        os.rmdir(queue.spool.messages)
        os.symlink(os.path.join(state_dir, "gone"), queue.spool.messages)
        return queue


class HalfWrittenCleanup(unittest.TestCase):
    """A failed enqueue's clean-up that fails too is logged, not left unhandled."""

    def test_failing_cleanup_is_logged(self):
        import gc

        from twisted.internet import defer, reactor, task

        from mailplat.interfaces import Envelope, TemporaryFailure
        from mailplat.store.source import BytesSource
        from tests.helpers import collect_log

        texts = collect_log(self)
        state_dir = os.path.abspath(self.mktemp())
        queue = RelayQueueConforms._queue(None, state_dir)
        queue.spool.ensure()
        # A regular file where the messages folder goes: writing and removing
        # both fail with NotADirectoryError (even as root).
        os.rmdir(queue.spool.messages)
        with open(queue.spool.messages, "w") as f:
            f.write("not a directory")

        @defer.inlineCallbacks
        def run():
            yield self.assertFailure(
                queue.enqueue(Envelope("a@example.test"), ["b@example.org"], BytesSource(b"Subject: x\n\nx\n")),
                TemporaryFailure,
            )
            yield task.deferLater(reactor, 0.2, lambda: None)  # the clean-up thread
            gc.collect()
            self.flushLoggedErrors(NotADirectoryError)
            joined = "\n".join(texts)
            self.assertIn("cannot remove a half-written message", joined)
            self.assertNotIn("Unhandled error in Deferred", joined)

        return run()
