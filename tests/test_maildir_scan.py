"""
The maildir scan's cheap paths (issue 11): a folder copied in by another
program is read from its file names and one stat a file, its new keys are
ordered without the natural comparison where their seconds differ, and a
folder its last session left stays in memory for the next one.
"""

import gc
import os
import random
import shutil
import tempfile
import weakref

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.store import folderview
from mailplat.store.maildir import MaildirStore, index, names

USER = "alice@example.test"


class SortedKeys(unittest.TestCase):
    def test_same_order_as_sort_key(self):
        rng = random.Random(3)
        odd = ["abc", "x.y", "0.a", "00.b", "+1.c", " 2.d", "1_0.e", "", "12", "\u0663.x"]
        for _ in range(500):
            keys = set()
            for _ in range(rng.randint(0, 40)):
                r = rng.random()
                if r < 0.6:  # a few seconds shared by several keys, as a burst of deliveries
                    keys.add(f"{rng.randint(1, 5)}.M{rng.randint(0, 200000)}P{rng.randint(1, 99)}Q{rng.randint(1, 20)}.host")
                elif r < 0.8:
                    keys.add(rng.choice(odd) + str(rng.randint(0, 3)))
                else:
                    keys.add(f"{rng.randint(1, 3)}" + rng.choice(["", ".", ".a", ".1"]))
            self.assertEqual(names.sorted_keys(keys), sorted(keys, key=names.sort_key), keys)

    def test_keys_of_one_second_compare_their_numbers(self):
        keys = ["7.M100000P1Q1.h", "7.M95000P1Q1.h", "7.M95000P1Q10.h", "7.M95000P1Q9.h", "6.M999999P1Q1.h"]
        self.assertEqual(
            names.sorted_keys(keys), ["6.M999999P1Q1.h", "7.M95000P1Q1.h", "7.M95000P1Q9.h", "7.M95000P1Q10.h", "7.M100000P1Q1.h"]
        )


class StoreCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-maildir-scan-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = MaildirStore(os.path.join(self.dir, "%d", "%n"))
        self.addCleanup(self.store.close)
        self.root = self.store.user_root(USER)

    @defer.inlineCallbacks
    def open(self, name="INBOX"):
        account = yield self.store.account(USER)
        folder = yield account.folder(name)
        return folder


class CopiedIn(StoreCase):
    """Files put straight into cur/ and new/ by another program, then a first scan."""

    @defer.inlineCallbacks
    def test_uids_sizes_dates_and_flags_from_names_and_stats(self):
        rng = random.Random(5)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        expected = {}
        for i in range(300):
            body = b"Subject: %d\n\n" % i + b"line\n" * rng.randint(0, 40)
            crlf = len(body) + body.count(b"\n")
            seconds = 1_600_000_000 + rng.randint(0, 50)  # many share a second
            base = f"{seconds}.M{rng.randint(0, 999999)}P{i}Q1.other"
            key = f"{base},S={len(body)},W={crlf}" if i % 5 else base  # some without W=
            letters = rng.choice(["", "S", "FS", "RST"])
            subdir = "new" if i % 7 == 0 else "cur"
            filename = key if subdir == "new" else f"{key}:2,{letters}"
            path = os.path.join(self.root, subdir, filename)
            with open(path, "wb") as f:
                f.write(body)
            when = 1_500_000_000 + i * 60
            os.utime(path, (when, when))
            expected[key] = (crlf, when, names.flags_from_info(letters if subdir == "cur" else ""))
        folder = yield self.open()
        infos = folder.messages()
        self.assertEqual([i.key for i in infos], names.sorted_keys(expected))
        self.assertEqual([i.uid for i in infos], list(range(1, 301)))
        for info in infos:
            size, when, flags = expected[info.key]
            self.assertEqual((info.size, info.internaldate, info.flags), (size, when, flags), info)
            self.assertEqual(info.subdir, "cur")  # what was in new/ moved over, as Dovecot does
            self.assertTrue(os.path.exists(os.path.join(self.root, "cur", info.filename)))


class KeptFolders(StoreCase):
    """A folder its last session left is kept for the next one (KEPT, KEPT_SECONDS)."""

    @defer.inlineCallbacks
    def test_the_next_session_finds_the_same_folder(self):
        yield self.store.deliver(USER, _message())
        folder = yield self.open()
        unsubscribe = folder.subscribe(lambda event: None)
        unsubscribe()
        first = weakref.ref(folder)
        del folder
        gc.collect()
        self.assertIsNotNone(first())  # not freed with its last session
        again = yield self.open()
        self.assertIs(again, first())
        self.assertEqual(len(again.messages()), 1)

    @defer.inlineCallbacks
    def test_kept_only_for_a_while_and_only_so_many(self):
        self.patch(folderview, "KEPT", 2)
        folders = []
        for name in ("INBOX", "Sent", "Drafts"):
            folder = yield self.open(name)
            folder.subscribe(lambda event: None)()
            folders.append(folder)
        self.assertEqual(list(self.store._kept), folders[1:])  # the oldest let go
        self.patch(folderview, "KEPT_SECONDS", -1.0)
        self.store._flush_held()
        self.assertEqual(list(self.store._kept), [])

    @defer.inlineCallbacks
    def test_a_deleted_folder_is_not_kept(self):
        account = yield self.store.account(USER)
        yield account.create("Projects")
        folder = yield account.folder("Projects")
        folder.subscribe(lambda event: None)()
        self.assertIn(folder, self.store._kept)
        yield account.delete("Projects")
        self.assertNotIn(folder, self.store._kept)


class Subscribers(StoreCase):
    @defer.inlineCallbacks
    def test_each_unsubscribes_only_itself_and_once(self):
        folder = yield self.open()
        heard = {"a": [], "b": [], "c": []}
        unsubscribe = {k: folder.subscribe(heard[k].append) for k in heard}
        unsubscribe["b"]()
        unsubscribe["b"]()  # a second call changes nothing
        yield self.store.deliver(USER, _message())
        yield folder.sync()
        self.assertEqual([len(heard[k]) for k in "abc"], [1, 0, 1])
        self.assertTrue(folder.watched)
        unsubscribe["a"]()
        unsubscribe["c"]()
        self.assertFalse(folder.watched)


def _message():
    from mailplat.store.source import BytesSource

    return BytesSource(b"From: bob@example.org\nSubject: hi\n\nbody\n")


class CacheFile(unittest.TestCase):
    """mailplat-cache.jsonl is read in one parse, and line by line when a line is torn or bad."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-maildir-cache-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_whole_file_and_later_values_win(self):
        index.rewrite_cache(self.dir, 7, {1: {"envelope": "(a)"}, 2: {"envelope": "(b)", "body": "x"}})
        index.append_cache(self.dir, 7, [(1, "envelope", "(c)"), (3, "sortkeys", [1, "s", None])])
        self.assertEqual(
            index.load_cache(self.dir, 7),
            ({1: {"envelope": "(c)"}, 2: {"envelope": "(b)", "body": "x"}, 3: {"sortkeys": [1, "s", None]}}, 5),
        )
        self.assertEqual(index.load_cache(self.dir, 8), ({}, 0))  # another UIDVALIDITY's

    def test_torn_and_bad_lines_are_skipped(self):
        index.rewrite_cache(self.dir, 7, {1: {"envelope": "(a)"}, 2: {"envelope": "(b)"}})
        with open(os.path.join(self.dir, index.CACHE), "ab") as f:
            f.write(b'5\n[3,"envelope","(c)"]\n\n[4,"envel')
        self.assertEqual(index.load_cache(self.dir, 7), ({1: {"envelope": "(a)"}, 2: {"envelope": "(b)"}, 3: {"envelope": "(c)"}}, 3))
