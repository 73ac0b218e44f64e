"""
The mbox store on real files: the format other programs read (Python's
mailbox.mbox, as mutt and Dovecot would), flags in Status / X-Status /
X-Keywords, UIDs that survive restarts and other programs' rewrites,
locking against other processes, and rewrites a crash can't half-do.
"""

import mailbox
import os
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import textwrap
import time

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailplat import config as configuration
from mailplat.interfaces import IFolderStore, IMailAccount, IMailFolder, IMessageInfo, TemporaryFailure
from mailplat.store.mbox import MboxStore, folder as mbox_folder, locking, mboxrd
from mailplat.store.source import BytesSource
from tests.helpers import MailServer, in_thread

USER = "alice@example.test"
ROOT_OF_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What mbox quoting must give back exactly: From lines, quoted ones, a dot.
TRICKY = (
    b"From: carol@remote.test\n"
    b"Subject: tricky\n"
    b"\n"
    b"From here, a line mbox must quote\n"
    b">From here, a line already quoted once\n"
    b">>From here, twice\n"
    b"From\n"
    b".\n"
    b"last line\n"
)


def unquote_mboxrd(data):
    """mboxrd reading, written independently of the store: one '>' less before '>*From '."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def message(n, subject=None):
    return BytesSource(f"From: bob@example.org\nSubject: {subject or f'message {n}'}\n\nbody {n}\n".encode())


class StoreCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-mbox-")
        self.addCleanup(_rmtree, self.dir)
        self.template = os.path.join(self.dir, "%d", "%n")
        self.store = self.new_store()

    def new_store(self, **kwargs):
        """Another store on the same files: what a restart (or a second process) sees."""
        store = MboxStore(self.template, **kwargs)
        self.addCleanup(store.close)
        return store

    @property
    def root(self):
        return self.store.user_root(USER)

    @property
    def inbox_path(self):
        return os.path.join(self.root, "INBOX")

    @defer.inlineCallbacks
    def open(self, name="INBOX", store=None):
        account = yield (store or self.store).account(USER)
        folder = yield account.folder(name)
        return folder

    @defer.inlineCallbacks
    def deliver(self, count, store=None):
        keys = []
        for n in range(count):
            key = yield (store or self.store).deliver(USER, message(n + 1))
            keys.append(key)
        return keys

    def python_mbox(self, name="INBOX"):
        path = self.inbox_path if name == "INBOX" else os.path.join(self.root, name)
        box = mailbox.mbox(path)
        self.addCleanup(box.close)
        return box


def _rmtree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class Interfaces(StoreCase):
    @defer.inlineCallbacks
    def test_store_account_folder_and_messages_provide_the_interfaces(self):
        yield self.deliver(1)
        account = yield self.store.account(USER)
        folder = yield account.folder("INBOX")
        self.assertTrue(verifyObject(IFolderStore, self.store))
        self.assertTrue(verifyObject(IMailAccount, account))
        self.assertTrue(verifyObject(IMailFolder, folder))
        self.assertTrue(verifyObject(IMessageInfo, folder.messages()[0]))

    @defer.inlineCallbacks
    def test_one_folder_object_per_file(self):
        a = yield self.open("Sent")
        b = yield self.open("Sent")
        c = yield self.open("inbox")
        d = yield self.open("INBOX")
        self.assertIs(a, b)
        self.assertIs(c, d)

    @defer.inlineCallbacks
    def test_new_account_has_special_use_folders_as_mbox_files(self):
        account = yield self.store.account(USER)
        folders = dict((yield account.folders()))
        self.assertEqual(sorted(folders), ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"])
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            self.assertIn("\\" + name, folders[name])
            self.assertTrue(os.path.isfile(os.path.join(self.root, name)))
        self.assertTrue(os.path.isfile(self.inbox_path))
        yield account.delete("Junk")
        again = yield self.new_store().account(USER)
        self.assertNotIn("Junk", dict((yield again.folders())))


class Format(StoreCase):
    @defer.inlineCallbacks
    def test_delivery_is_read_back_by_python_mailbox_byte_exact(self):
        source = BytesSource(b"Return-Path: <carol@remote.test>\n" + TRICKY)
        yield self.store.deliver(USER, source)
        yield self.store.deliver(USER, message(2))
        box = self.python_mbox()
        first, second = list(box)
        self.assertEqual(unquote_mboxrd(first.as_bytes(unixfrom=False)), source.data)
        self.assertTrue(first.get_from().startswith("carol@remote.test "))
        self.assertEqual(second["Subject"], "message 2")
        with open(self.inbox_path, "rb") as f:
            raw = f.read()
        self.assertIn(b"\n>From here, a line mbox must quote\n>>From here, a line already", raw)
        self.assertTrue(re.match(rb"From carol@remote.test \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n", raw))

    @defer.inlineCallbacks
    def test_imap_view_is_the_delivered_message(self):
        data = b"Return-Path: <>\n" + TRICKY
        yield self.store.deliver(USER, BytesSource(data))
        folder = yield self.open()
        info = folder.messages()[0]
        f = yield folder.open(info.uid)
        self.assertEqual(f.read(), data)
        self.assertEqual(info.size, len(data) + data.count(b"\n"))
        self.assertTrue(open(self.inbox_path, "rb").read().startswith(b"From MAILER-DAEMON "))

    @defer.inlineCallbacks
    def test_flag_headers_of_incoming_mail_are_dropped(self):
        # Dovecot strips them too: a sender must not mark mail read for the reader.
        data = b"Subject: sneaky\nStatus: RO\nX-Status: F\nX-Keywords: NonJunk\nX-UID: 7\n\nbody\n"
        yield self.store.deliver(USER, BytesSource(data))
        folder = yield self.open()
        self.assertEqual(folder.messages()[0].flags, frozenset())
        f = yield folder.open(folder.messages()[0].uid)
        self.assertEqual(f.read(), b"Subject: sneaky\n\nbody\n")

    def test_from_line_date_round_trip(self):
        when = 1_700_000_000
        line = mboxrd.from_line("a@b", when)
        self.assertEqual(mboxrd.parse_date(line), when)
        self.assertEqual(mboxrd.parse_date(b"From x Thu Nov 29 22:33:52 2001 +0200\n"), 1007066032)


class Flags(StoreCase):
    @defer.inlineCallbacks
    def test_flags_are_written_as_mutt_and_dovecot_read_them(self):
        yield self.deliver(3)
        folder = yield self.open()
        yield folder.store_flags([1], ["\\Seen", "\\Answered"], "+")
        yield folder.store_flags([2], ["\\Flagged", "\\Draft", "$Work"], "+")
        yield folder.write_back()
        with open(self.inbox_path, "rb") as f:
            raw = f.read()
        self.assertIn(b"Status: RO\nX-Status: A\n", raw)
        self.assertIn(b"X-Status: FT\nX-Keywords: $Work\n", raw)
        box = self.python_mbox()
        self.assertEqual([set(m.get_flags()) for m in box], [set("ROA"), set("FT"), set()])
        # The IMAP view does not change with the flags (RFC 3501 2.3: immutable).
        f = yield folder.open(1)
        self.assertEqual(f.read(), message(1).data)

    @defer.inlineCallbacks
    def test_flags_survive_sessions_and_a_restart(self):
        yield self.deliver(2)
        folder = yield self.open()
        unsubscribe = folder.subscribe(lambda e: None)
        yield folder.store_flags([2], ["\\Seen", "$Later"], "+")
        unsubscribe()  # the last session leaves: the flags go into the file
        yield self.store.close()
        again = yield self.open(store=self.new_store())
        self.assertIsNot(again, folder)
        self.assertEqual(again.messages()[1].flags, frozenset({"\\Seen", "$Later"}))
        self.assertEqual([m.uid for m in again.messages()], [1, 2])
        self.assertEqual(again.uidvalidity, folder.uidvalidity)
        # And from the file alone, the index gone:
        _rmtree(os.path.join(self.root, ".imap"))
        third = yield self.open(store=self.new_store())
        self.assertEqual(third.messages()[1].flags, frozenset({"\\Seen", "$Later"}))

    @defer.inlineCallbacks
    def test_flag_change_is_published_with_its_origin(self):
        yield self.deliver(1)
        folder = yield self.open()
        events = []
        self.addCleanup(folder.subscribe(events.append))
        session = object()
        yield folder.store_flags([1], ["\\Seen"], "+", origin=session)
        yield folder.store_flags([1], ["\\Seen"], "+", origin=session)
        self.assertEqual([(e.kind, e.uids, e.origin) for e in events], [("flags", (1,), session)])


class UIDs(StoreCase):
    @defer.inlineCallbacks
    def test_uids_uidvalidity_and_uidnext_survive_a_restart(self):
        yield self.deliver(3)
        folder = yield self.open()
        yield folder.store_flags([3], ["\\Deleted"], "+")
        yield folder.expunge()
        yield self.store.close()
        again = yield self.open(store=self.new_store())
        self.assertEqual([m.uid for m in again.messages()], [1, 2])
        self.assertEqual(again.uidvalidity, folder.uidvalidity)
        self.assertEqual(again.uidnext, 4)

    @defer.inlineCallbacks
    def test_deleted_and_recreated_folder_gets_a_greater_uidvalidity(self):
        account = yield self.store.account(USER)
        yield account.create("Again")
        first = yield account.folder("Again")
        yield first.append(message(1))
        old = first.uidvalidity
        yield account.delete("Again")
        yield account.create("Again")
        second = yield account.folder("Again")
        yield second.append(message(1))
        self.assertGreater(second.uidvalidity, old)

    @defer.inlineCallbacks
    def test_uids_dovecot_wrote_are_kept(self):
        os.makedirs(self.root)
        with open(self.inbox_path, "wb") as f:
            f.write(
                b"From a@b Thu Nov 29 22:33:52 2001\nX-IMAPbase: 1234567 40 $Junk\nX-UID: 17\nSubject: a\n\na\n\n"
                b"From a@b Thu Nov 29 22:33:53 2001\nX-UID: 33\nStatus: RO\nSubject: b\n\nb\n\n"
            )
        folder = yield self.open()
        self.assertEqual(folder.uidvalidity, 1234567)
        self.assertEqual([m.uid for m in folder.messages()], [17, 33])
        self.assertEqual(folder.messages()[1].flags, frozenset({"\\Seen"}))
        self.assertEqual(folder.uidnext, 40)

    @defer.inlineCallbacks
    def test_pop3_key_is_dovecots_uidl(self):
        keys = yield self.deliver(2)
        folder = yield self.open()
        self.assertEqual(keys, [m.key for m in folder.messages()])
        self.assertEqual(keys[1], "%08X%08X" % (2, folder.uidvalidity))


class OtherPrograms(StoreCase):
    @defer.inlineCallbacks
    def test_append_under_the_lock_by_python_mailbox_is_noticed(self):
        yield self.deliver(2)
        folder = yield self.open()
        events = []
        self.addCleanup(folder.subscribe(events.append))
        box = self.python_mbox()
        box.lock()  # dotlock + fcntl, as mutt and procmail take them
        try:
            box.add(mailbox.mboxMessage(b"Subject: outside\n\nFrom the outside\n"))
            box.flush()
        finally:
            box.unlock()
        self.assertFalse(os.path.exists(self.inbox_path + ".lock"))
        messages = yield folder.sync()
        self.assertEqual([m.uid for m in messages], [1, 2, 3])
        self.assertEqual([(e.kind, e.uids) for e in events], [("exists", (3,))])
        f = yield folder.open(3)
        # Python's mailbox quotes 'From ' (mboxo); reading mboxrd gives it back.
        self.assertEqual(f.read(), b"Subject: outside\n\nFrom the outside\n")

    @defer.inlineCallbacks
    def test_watcher_notices_an_outside_append_without_a_sync_call(self):
        clock = task.Clock()
        store = self.new_store(clock=clock)
        yield self.deliver(1, store=store)
        folder = yield self.open(store=store)
        got = defer.Deferred()
        self.addCleanup(folder.subscribe(lambda e: got.called or got.callback(e)))
        box = self.python_mbox()
        box.add(b"Subject: outside\n\nhi\n")
        box.flush()
        clock.advance(1.0)
        event = yield got
        self.assertEqual((event.kind, event.uids), ("exists", (2,)))

    @defer.inlineCallbacks
    def test_rewrite_by_another_program_keeps_the_uids_of_unchanged_messages(self):
        yield self.deliver(4)
        folder = yield self.open()
        events = []
        self.addCleanup(folder.subscribe(events.append))
        # As mutt does: delete one, mark another read, write the file again.
        box = self.python_mbox()
        box.lock()
        keys = box.keys()
        box.remove(keys[1])
        msg = box[keys[2]]
        msg.set_flags("RO")
        box[keys[2]] = msg
        box.flush()
        box.unlock()
        messages = yield folder.sync()
        self.assertEqual([m.uid for m in messages], [1, 3, 4])
        self.assertEqual(messages[1].flags, frozenset({"\\Seen"}))
        self.assertEqual(sorted((e.kind, e.uids) for e in events), [("expunge", (2,)), ("flags", (3,))])
        f = yield folder.open(4)
        self.assertEqual(f.read(), message(4).data)

    @defer.inlineCallbacks
    def test_outside_flag_change_wins_over_ours_not_yet_written(self):
        yield self.deliver(1)
        folder = yield self.open()
        self.addCleanup(folder.subscribe(lambda e: None))  # keeps our flags lazy
        yield folder.store_flags([1], ["\\Flagged"], "+")
        box = self.python_mbox()
        msg = box[box.keys()[0]]
        msg.set_flags("RO")
        box[box.keys()[0]] = msg
        box.flush()
        messages = yield folder.sync()
        self.assertEqual(messages[0].flags, frozenset({"\\Seen"}))

    @defer.inlineCallbacks
    def test_unchanged_mbox_is_taken_from_the_index_without_reading_it(self):
        yield self.deliver(3)
        folder = yield self.open()
        yield folder.store_flags([2], ["\\Seen"], "+")
        yield self.store.close()

        def refuse(*args):
            raise AssertionError("read the mbox")

        self.patch(mboxrd, "parse", refuse)
        again = yield self.open(store=self.new_store())
        self.assertEqual([m.uid for m in again.messages()], [1, 2, 3])
        self.assertEqual(again.messages()[1].flags, frozenset({"\\Seen"}))

    @defer.inlineCallbacks
    def test_mail_appended_while_down_is_parsed_from_the_old_end(self):
        yield self.deliver(3)
        yield self.open()
        yield self.store.close()
        box = self.python_mbox()
        box.add(b"Subject: while down\n\nx\n")
        box.flush()
        seen = []
        original = mboxrd.parse
        self.patch(mboxrd, "parse", lambda region, offset: seen.append(offset) or original(region, offset))
        again = yield self.open(store=self.new_store())
        self.assertEqual([m.uid for m in again.messages()], [1, 2, 3, 4])
        self.assertEqual(len(seen), 1)


HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    path, seconds = sys.argv[1], float(sys.argv[2])
    fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"%d:elsewhere\\n" % os.getpid())
    mbox = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(mbox, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(seconds)
    os.unlink(path + ".lock")
    """
)


class Locking(StoreCase):
    def hold(self, seconds):
        """A process (like mutt) holding the INBOX dotlock and fcntl lock."""
        os.makedirs(self.root, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, self.inbox_path, str(seconds)], stdout=subprocess.PIPE)
        self.addCleanup(proc.wait)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.assertEqual(proc.stdout.readline(), b"locked\n")
        proc.stdout.close()
        return proc

    @defer.inlineCallbacks
    def test_delivery_waits_for_another_programs_lock(self):
        yield self.open()
        self.hold(0.6)
        started = time.monotonic()
        yield self.store.deliver(USER, message(1))
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        box = self.python_mbox()
        self.assertEqual(len(box), 1)

    @defer.inlineCallbacks
    def test_lock_held_too_long_is_a_temporary_failure(self):
        store = self.new_store(lock_timeout=0.3)
        yield self.open(store=store)
        self.hold(3)
        failure = yield self.assertFailure(store.deliver(USER, message(1)), TemporaryFailure)
        self.assertIn("INBOX.lock", failure.text)

    def test_stale_dotlock_is_taken_over(self):
        os.makedirs(self.root)
        lock = self.inbox_path + ".lock"
        with open(lock, "w") as f:
            f.write("0\n")
        old = time.time() - locking.STALE_SECONDS - 10
        os.utime(lock, (old, old))
        self.assertEqual(locking.acquire_dotlock(self.inbox_path, timeout=1), lock)
        locking.release_dotlock(lock)
        self.assertFalse(os.path.exists(lock))
        self.flushLoggedErrors()

    def test_dotlock_of_a_dead_process_on_this_host_is_taken_over(self):
        os.makedirs(self.root)
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        with open(self.inbox_path + ".lock", "w") as f:
            f.write(f"{proc.pid}:{locking.HOST}\n")
        self.assertIsNotNone(locking.acquire_dotlock(self.inbox_path, timeout=1))


CRASHER = textwrap.dedent(
    """
    import sys, time
    from twisted.internet import reactor, defer
    from mailplat.store.mbox import MboxStore, folder as mbox_folder

    def slow(info):
        print("writing", flush=True)
        time.sleep(60)

    @defer.inlineCallbacks
    def main():
        store = MboxStore(sys.argv[1])
        account = yield store.account("alice@example.test")
        inbox = yield account.folder("INBOX")
        yield inbox.store_flags([2], ["\\\\Deleted"], "+")
        mbox_folder._rewrite_hook = slow
        yield inbox.expunge()

    reactor.callWhenRunning(main)
    reactor.run()
    """
)


class Crash(StoreCase):
    @defer.inlineCallbacks
    def test_killed_during_expunge_loses_nothing(self):
        yield self.deliver(5)
        yield self.open()
        yield self.store.close()
        with open(self.inbox_path, "rb") as f:
            before = f.read()
        env = dict(os.environ, PYTHONPATH=ROOT_OF_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, self.template], stdout=subprocess.PIPE, env=env)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        line = yield in_thread(proc.stdout.readline)
        self.assertEqual(line, b"writing\n")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        with open(self.inbox_path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertTrue(os.path.exists(self.inbox_path + ".lock"))  # left by the dead process
        # A new process takes the dead one's lock over, and removes its half-written file.
        folder = yield self.open(store=self.new_store())
        self.assertEqual([m.uid for m in folder.messages()], [1, 2, 3, 4, 5])
        yield folder.store_flags([2], ["\\Deleted"], "+")
        removed = yield folder.expunge()
        self.assertEqual(removed, [2])
        self.assertEqual(len(self.python_mbox()), 4)
        self.assertEqual([n for n in os.listdir(self.root) if n.endswith(".tmp")], [])

    @defer.inlineCallbacks
    def test_failure_between_write_and_rename_leaves_the_old_file(self):
        yield self.deliver(3)
        folder = yield self.open()
        with open(self.inbox_path, "rb") as f:
            before = f.read()
        self.addCleanup(folder.subscribe(lambda e: None))
        yield folder.store_flags([1], ["\\Deleted"], "+")

        def broken(source, target):
            raise OSError(5, "Input/output error")

        self.patch(os, "rename", broken)
        yield self.assertFailure(folder.expunge(), TemporaryFailure)
        self.patch(os, "rename", _real_rename)
        with open(self.inbox_path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual([n for n in os.listdir(self.root) if n.endswith(".tmp")], [])
        self.assertEqual([m.uid for m in folder.messages()], [1, 2, 3])
        removed = yield folder.expunge()
        self.assertEqual(removed, [1])


_real_rename = os.rename


class Expunge(StoreCase):
    @defer.inlineCallbacks
    def test_expunge_rewrites_only_after_the_first_change(self):
        yield self.deliver(6)
        folder = yield self.open()
        self.addCleanup(folder.subscribe(lambda e: None))  # a session: flag writes wait
        yield folder.store_flags([5], ["\\Deleted"], "+")
        written = []
        self.patch(mbox_folder, "_rewrite_hook", written.append)
        removed = yield folder.expunge()
        self.assertEqual(removed, [5])
        self.assertEqual([m.uid for m in written], [6])
        self.assertEqual([m["Subject"] for m in self.python_mbox()], [f"message {n}" for n in (1, 2, 3, 4, 6)])
        f = yield folder.open(6)
        self.assertEqual(f.read(), message(6).data)

    @defer.inlineCallbacks
    def test_copy_and_move_keep_flags_dates_and_bytes(self):
        yield self.deliver(3)
        inbox = yield self.open()
        archive = yield self.open("Archive")
        yield inbox.store_flags([2], ["\\Seen", "$Important"], "+")
        mapping = yield inbox.move_to([2, 3], archive)
        self.assertEqual(mapping, [(2, 1), (3, 2)])
        self.assertEqual([m.uid for m in inbox.messages()], [1])
        self.assertEqual(archive.messages()[0].flags, frozenset({"\\Seen", "$Important"}))
        self.assertEqual(archive.messages()[0].internaldate, archive.messages()[0].internaldate)
        f = yield archive.open(2)
        self.assertEqual(f.read(), message(3).data)
        self.assertEqual([m["Subject"] for m in self.python_mbox("Archive")], ["message 2", "message 3"])


class Config(unittest.TestCase):
    def build(self, store, delivery, extra=""):
        d = tempfile.mkdtemp(prefix="mailplat-mbox-config-")
        self.addCleanup(_rmtree, d)
        path = os.path.join(d, "mailplat.toml")
        with open(path, "w") as f:
            f.write(
                f'[server]\nhostname = "mx.example.test"\nstate_dir = "{d}/var"\n'
                f'[realm]\nbackend = "passwd-file"\npath = "{d}/users"\n'
                f'[store]\nbackend = "{store}"\npath = "{d}/mail/%d/%n"\n{extra}\n'
                f'[delivery]\nlocal = "{delivery}"\n'
            )
        open(os.path.join(d, "users"), "w").close()
        from mailplat.service import Backends

        return Backends(configuration.load(path, cwd=d)), d

    def test_mbox_store_and_delivery_with_a_spool_inbox(self):
        backends, d = self.build("mbox", "mbox", 'inbox = "/x/spool/%n"')
        self.assertIsInstance(backends.store, MboxStore)
        self.assertEqual(backends.store.inbox_path("bob@example.test"), "/x/spool/bob")

    def test_mbox_delivery_needs_the_mbox_store(self):
        with self.assertRaises(configuration.ConfigError) as e:
            self.build("maildir", "mbox")
        self.assertIn("mbox", str(e.exception))

    def test_unknown_key_is_named(self):
        with self.assertRaises(configuration.ConfigError) as e:
            self.build("mbox", "mbox", 'inbx = "x"')
        self.assertIn("inbx", str(e.exception))


class SMTPInto(unittest.TestCase):
    store = "mbox"

    @defer.inlineCallbacks
    def test_smtp_delivery_into_mbox_is_read_back_byte_exact(self):
        server = yield MailServer(self, listeners=("smtp",)).start(users={USER: "pw"})
        body = TRICKY.replace(b"\n", b"\r\n")

        def send():
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
                s.sendmail("carol@remote.test", [USER], body)
                s.sendmail("carol@remote.test", [USER], body)

        yield in_thread(send)
        box = mailbox.mbox(server.mbox(USER))
        self.addCleanup(box.close)
        messages = list(box)
        self.assertEqual(len(messages), 2)
        for m in messages:
            data = unquote_mboxrd(m.as_bytes(unixfrom=False))
            # Return-Path, the MX's Authentication-Results, then our Received.
            self.assertTrue(data.startswith(b"Return-Path: <carol@remote.test>\nAuthentication-Results: mail.example.test;"), data[:80])
            self.assertIn(b"\nReceived: from ", data)
            self.assertTrue(data.endswith(TRICKY), data)
            self.assertTrue(m.get_from().startswith("carol@remote.test "))


class Vanished(StoreCase):
    @defer.inlineCallbacks
    def test_folder_removed_by_another_program_is_forgotten(self):
        account = yield self.store.account(USER)
        yield account.create("Temp")
        folder = yield account.folder("Temp")
        yield folder.append(message(1))
        events = []
        self.addCleanup(folder.subscribe(events.append))
        os.unlink(os.path.join(self.root, "Temp"))
        yield self.assertFailure(folder.sync(), KeyError)
        self.assertEqual([(e.kind, e.uids) for e in events], [("expunge", (1,))])
        yield self.assertFailure(account.folder("Temp"), KeyError)

    @defer.inlineCallbacks
    def test_missing_inbox_reads_as_empty(self):
        folder = yield self.open()
        os.unlink(self.inbox_path)
        messages = yield folder.sync()
        self.assertEqual(messages, [])
        yield self.store.deliver(USER, message(1))
        self.assertEqual([m.uid for m in folder.messages()], [1])


class SpoolInbox(StoreCase):
    @defer.inlineCallbacks
    def test_inbox_key_puts_inbox_in_a_spool_and_the_index_in_the_mail_directory(self):
        spool = os.path.join(self.dir, "spool")
        os.makedirs(spool)
        store = self.new_store(inbox_template=os.path.join(spool, "%n"))
        yield store.deliver(USER, message(1))
        self.assertEqual([m["Subject"] for m in mailbox.mbox(os.path.join(spool, "alice"))], ["message 1"])
        account = yield store.account(USER)
        folders = dict((yield account.folders()))
        self.assertIn("INBOX", folders)
        self.assertFalse(os.path.exists(os.path.join(self.root, "INBOX")))
        folder = yield account.folder("INBOX")
        self.assertEqual([m.uid for m in folder.messages()], [1])
        yield store.close()
        self.assertTrue(os.path.exists(os.path.join(self.root, ".imap", "INBOX", "mailplat-index.json")))
        self.assertEqual(sorted(os.listdir(spool)), ["alice"])
