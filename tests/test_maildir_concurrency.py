"""
Two processes serving one maildir (two mailplat servers, or mailplat and
Dovecot): UIDs are handed out under the `dovecot-uidlist.lock` dotlock and
never twice.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from mailplat.interfaces import TemporaryFailure
from mailplat.store.maildir import names
from mailplat.store.maildir.uidlist import FILENAME, UidList, dotlock

# The child: its own reactor and MaildirStore, appending, delivering and
# syncing as fast as it can; it prints the UIDs it was given and whether any
# 'exists' event ever went backwards.
CHILD = r"""
import json, sys
from twisted.internet import defer, task
from mailplat.store.maildir import MaildirStore
from mailplat.store.source import BytesSource

template, count, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]

@defer.inlineCallbacks
def main(reactor):
    store = MaildirStore(template)
    account = yield store.account("alice@example.test")
    folder = yield account.folder("INBOX")
    seen = {"top": 0, "backwards": 0}
    def on_event(event):
        if event.kind == "exists":
            if min(event.uids) <= seen["top"]:
                seen["backwards"] += 1
            seen["top"] = max(seen["top"], max(event.uids))
    for m in folder.messages():
        seen["top"] = max(seen["top"], m.uid)
    unsubscribe = folder.subscribe(on_event)
    mine = []
    for i in range(count):
        body = f"Subject: {tag} {i}\n\n{tag}\n".encode()
        if i % 2:
            uid = yield folder.append(BytesSource(body))
            mine.append(uid)
        else:
            yield store.deliver("alice@example.test", BytesSource(body))
            yield folder.sync()
    yield folder.sync()
    unsubscribe()
    yield store.close()
    print(json.dumps({"appended": mine, "backwards": seen["backwards"],
                      "uids": [m.uid for m in folder.messages()]}))

task.react(main)
"""

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_children(template, count, tags):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, template, str(count), tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        for tag in tags
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"child failed: {stderr.decode(errors='replace')}")
        out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    return out


class TwoProcesses(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_two_processes_never_hand_out_the_same_uid(self):
        base = tempfile.mkdtemp(prefix="mailplat-2proc-")
        template = os.path.join(base, "%d", "%n")
        results = yield threads.deferToThread(run_children, template, 60, ["one", "two"])
        appended = results[0]["appended"] + results[1]["appended"]
        self.assertEqual(len(appended), len(set(appended)), "a UID was given twice")
        self.assertEqual([r["backwards"] for r in results], [0, 0], "an 'exists' event went backwards")
        root = os.path.join(base, "example.test", "alice")
        with open(os.path.join(root, FILENAME)) as f:
            lines = f.read().splitlines()
        uids = [int(line.split()[0]) for line in lines[1:]]
        keys = [line.split(":", 1)[1] for line in lines[1:]]
        self.assertEqual(uids, sorted(uids))
        self.assertEqual(len(uids), len(set(uids)))
        self.assertEqual(len(keys), len(set(keys)))
        on_disk = {names.split_info(n)[0] for n in os.listdir(os.path.join(root, "cur"))}
        self.assertEqual(len(on_disk), 120)
        self.assertEqual(on_disk, set(keys))
        # The child that finished last saw every message, in UID order.
        views = sorted((r["uids"] for r in results), key=len)
        self.assertEqual(views[-1], sorted(uids))
        self.assertEqual(views[0], sorted(views[0]))
        self.assertTrue(set(views[0]) <= set(uids))


class DotLock(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-lock-")
        self.path = os.path.join(self.dir, FILENAME)

    def test_lock_file_names_its_owner_and_goes_away(self):
        with dotlock(self.path):
            with open(self.path + ".lock") as f:
                self.assertEqual(f.read(), f"{os.getpid()}:{names.HOST}")
        self.assertFalse(os.path.exists(self.path + ".lock"))

    def test_lock_held_by_a_live_process_is_waited_for(self):
        with dotlock(self.path):
            start = time.monotonic()
            with self.assertRaises(TemporaryFailure):
                with dotlock(self.path, timeout=0.2):
                    pass
            self.assertGreaterEqual(time.monotonic() - start, 0.2)

    def test_lock_left_by_a_dead_process_is_taken_over(self):
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with open(self.path + ".lock", "w") as f:
            f.write(f"{dead.pid}:{names.HOST}")
        with dotlock(self.path, timeout=1):
            with open(self.path + ".lock") as f:
                self.assertEqual(f.read(), f"{os.getpid()}:{names.HOST}")

    def test_old_lock_from_another_host_is_stale_after_two_minutes(self):
        lock = self.path + ".lock"
        with open(lock, "w") as f:
            f.write("1:elsewhere.example")
        old = time.time() - 121
        os.utime(lock, (old, old))
        with dotlock(self.path, timeout=1):
            pass


class UidListFile(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-uidlist-")

    def test_records_appended_by_another_writer_are_read_incrementally(self):
        mine, theirs = UidList(self.dir), UidList(self.dir)
        with mine.locked():
            mine.refresh()
            mine.create(1000)
            mine.assign(["a", "b"])
        self.assertEqual(theirs.refresh(), "changed")
        with theirs.locked():
            theirs.refresh()
            self.assertEqual(theirs.assign(["b", "c"]), {"b": 2, "c": 3})
        self.assertEqual(mine.refresh(), "changed")
        self.assertEqual(mine.uids, {"a": 1, "b": 2, "c": 3})
        self.assertEqual(mine.nextuid, 4)
        self.assertIsNone(mine.refresh())

    def test_half_written_record_is_not_taken(self):
        with open(os.path.join(self.dir, FILENAME), "w") as f:
            f.write("3 V5 N3\n1 :a\n2 :b\n3 :c")
        ul = UidList(self.dir)
        ul.refresh()
        self.assertEqual(ul.uids, {"a": 1, "b": 2})
        with open(os.path.join(self.dir, FILENAME), "a") as f:
            f.write("\n")
        ul.refresh()
        self.assertEqual(ul.uids, {"a": 1, "b": 2, "c": 3})

    def test_compaction_keeps_uidnext(self):
        ul = UidList(self.dir)
        with ul.locked():
            ul.refresh()
            ul.create(7)
            ul.assign(["a", "b", "c"])
            ul.compact({"a"})
        again = UidList(self.dir)
        again.refresh()
        self.assertEqual((again.uidvalidity, again.nextuid, again.uids), (7, 4, {"a": 1}))


class TwoStoresInOneProcess(unittest.TestCase):
    """The same race, driven from one reactor: two stores, many appends at once."""

    @defer.inlineCallbacks
    def test_concurrent_appends_through_two_stores_get_distinct_ascending_uids(self):
        from mailplat.store.maildir import MaildirStore
        from mailplat.store.source import BytesSource

        base = tempfile.mkdtemp(prefix="mailplat-2store-")
        stores = [MaildirStore(os.path.join(base, "%d", "%n")) for _ in range(2)]
        for store in stores:
            self.addCleanup(store.close)
        folders = []
        for store in stores:
            account = yield store.account("alice@example.test")
            folders.append((yield account.folder("INBOX")))
        self.assertIsNot(folders[0], folders[1])
        heard = [[], []]
        for n, folder in enumerate(folders):
            self.addCleanup(folder.subscribe(lambda e, n=n: heard[n].extend(e.uids) if e.kind == "exists" else None))
        calls = []
        for i in range(40):
            folder = folders[i % 2]
            calls.append(folder.append(BytesSource(b"Subject: %d\n\n%d\n" % (i, i))))
            if i % 5 == 0:
                calls.append(stores[(i + 1) % 2].deliver("alice@example.test", BytesSource(b"Subject: d\n\nd\n")))
        results = yield defer.gatherResults(calls)
        appended = [r for r in results if isinstance(r, int)]
        self.assertEqual(len(appended), len(set(appended)))
        for folder in folders:
            messages = yield folder.sync()
            self.assertEqual([m.uid for m in messages], list(range(1, 49)))
        for uids in heard:
            self.assertEqual(uids, sorted(set(uids)), "exists went backwards or twice")
