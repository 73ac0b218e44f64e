"""
What the IMAP server asks of both stores beyond opening one message:
counting \\Recent without claiming it (IMailFolder.recent_count, for STATUS
and EXAMINE), opening a batch of messages at once (IBatchOpen.open_many,
for FETCH and SEARCH), and a cache flush that outlives its folder.
"""

import os
import shutil

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mailplat.interfaces import IBatchOpen
from mailplat.store.maildir import index as maildir_index
from mailplat.store.mbox import index as mbox_index
from tests import test_maildir_imap as maildir_tests
from tests import test_mbox_store as mbox_tests

USER = maildir_tests.USER


class BothStores:
    """Tests for each store; the subclasses say how to deliver and open."""

    @defer.inlineCallbacks
    def test_recent_count_counts_unclaimed_messages_without_claiming_them(self):
        yield self.deliver(2)
        folder = yield self.open()
        self.assertEqual(folder.recent_count(), 2)
        self.assertEqual(folder.recent_count(), 2)
        self.assertEqual(set(folder.claim_recent([m.uid for m in folder.messages()])), {1, 2})
        self.assertEqual(folder.recent_count(), 0)

    @defer.inlineCallbacks
    def test_recent_count_includes_mail_that_arrived_after_a_claim(self):
        yield self.deliver(1)
        folder = yield self.open()
        folder.claim_recent([1])
        yield self.deliver(1)
        yield folder.sync()
        self.assertEqual(folder.recent_count(), 1)
        self.assertEqual(set(folder.claim_recent([1, 2])), {2})

    @defer.inlineCallbacks
    def test_values_cached_while_a_flush_waits_queue_no_second_flush(self):
        # A cold FETCH caches faster than a flush is written; thousands of
        # flushes queued on the folder lock would exhaust the stack.
        yield self.deliver(1)
        folder = yield self.open()
        yield folder._lock.acquire()
        try:
            for n in range(5000):
                folder.cache(1, f"field{n}", n)
            self.assertEqual(len(folder._lock.waiting), 1)
        finally:
            folder._lock.release()
        yield folder.flush()
        self.assertEqual(folder.cached(1, "field4999"), 4999)

    @defer.inlineCallbacks
    def test_folder_provides_batch_open(self):
        yield self.deliver(1)
        folder = yield self.open()
        self.assertTrue(verifyObject(IBatchOpen, folder))

    @defer.inlineCallbacks
    def test_open_many_gives_files_in_the_order_asked_and_none_for_unknown_uids(self):
        yield self.deliver(3)
        folder = yield self.open()
        files = yield folder.open_many([3, 99, 1])
        self.assertIsNone(files[1])
        got = []
        for f in (files[0], files[2]):
            with f:
                got.append(f.read())
        expected = []
        for uid in (3, 1):
            f = yield folder.open(uid)
            with f:
                expected.append(f.read())
        self.assertEqual(got, expected)
        self.assertIn(b"Subject: message", got[0])

    @defer.inlineCallbacks
    def test_open_many_of_nothing_is_an_empty_list(self):
        folder = yield self.open()
        files = yield folder.open_many([])
        self.assertEqual(files, [])


class Maildir(BothStores, maildir_tests.StoreCase):
    @defer.inlineCallbacks
    def test_open_many_follows_files_another_program_renamed_or_removed(self):
        yield self.deliver(3)
        folder = yield self.open()
        cur = os.path.join(self.root, "cur")
        first, second = (folder.info(uid) for uid in (1, 2))
        # mutt marks message 1 read and deletes message 2, behind our back.
        os.rename(os.path.join(cur, first.filename), os.path.join(cur, first.key + ":2,S"))
        os.unlink(os.path.join(cur, second.filename))
        files = yield folder.open_many([1, 2, 3])
        self.assertIsNone(files[1])
        for f in (files[0], files[2]):
            with f:
                self.assertIn(b"Subject: message", f.read())

    @defer.inlineCallbacks
    def test_cache_flush_for_a_folder_deleted_meanwhile_is_quiet(self):
        account = yield self.store.account(USER)
        yield account.create("Projects")
        folder = yield account.folder("Projects")
        yield folder.append(maildir_tests.message(1))
        folder.cache(1, "envelope", "one")
        yield folder.flush()  # the cache file exists: the next flush appends
        folder.cache(1, "bodystructure", "two")
        # Deleted by another process serving the same maildir.
        shutil.rmtree(folder.path)
        yield folder.flush()  # a failure would be logged, and fail the test
        self.assertFalse(os.path.exists(folder.path))

    def test_append_cache_to_a_vanished_folder_does_nothing(self):
        path = os.path.join(self.dir, "gone")
        maildir_index.append_cache(path, 1, [[1, "envelope", "x"]])
        self.assertFalse(os.path.exists(path))


class Mbox(BothStores, mbox_tests.StoreCase):
    @defer.inlineCallbacks
    def test_cache_flush_for_a_folder_deleted_meanwhile_leaves_nothing_behind(self):
        account = yield self.store.account(USER)
        yield account.create("Projects")
        folder = yield account.folder("Projects")
        yield folder.append(mbox_tests.message(1))
        folder.cache(1, "envelope", "one")
        yield folder.flush()
        folder.cache(1, "bodystructure", "two")
        # Deleted by another process: the file and its index, as DELETE does.
        os.unlink(folder.path)
        shutil.rmtree(folder.index_dir)
        yield folder.flush()
        self.assertFalse(os.path.exists(folder.index_dir))

    def test_append_cache_to_a_vanished_index_does_nothing(self):
        path = os.path.join(self.dir, ".imap", "gone")
        mbox_index.append_cache(path, 1, [[1, "envelope", "x"]])
        self.assertFalse(os.path.exists(path))
