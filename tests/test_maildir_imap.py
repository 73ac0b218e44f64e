"""
The maildir store's IMAP side (IFolderStore, IMailAccount, IMailFolder):
UIDs, flags, keywords, folders and notifications, on real maildirs in a
temporary directory.
"""

import mailbox
import os
import shutil
import tempfile
import time

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailplat.interfaces import IFolderStore, IMailAccount, IMailFolder, IMessageInfo
from mailplat.store.maildir import MaildirStore
from mailplat.store.maildir.uidlist import FILENAME as UIDLIST
from mailplat.store.source import BytesSource

USER = "alice@example.test"


def message(n, subject=None):
    subject = subject or f"message {n}"
    return BytesSource(f"From: bob@example.org\nSubject: {subject}\n\nbody {n}\n".encode())


class StoreCase(unittest.TestCase):
    """A fresh MaildirStore over a temporary directory for each test."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-maildir-")
        self.template = os.path.join(self.dir, "%d", "%n")
        self.store = self.new_store()

    def new_store(self):
        """Another store on the same files: what a restart (or a second process) sees."""
        store = MaildirStore(self.template)
        self.addCleanup(store.close)
        return store

    @property
    def root(self):
        return self.store.user_root(USER)

    @defer.inlineCallbacks
    def open(self, name="INBOX", store=None):
        account = yield (store or self.store).account(USER)
        folder = yield account.folder(name)
        return folder

    @defer.inlineCallbacks
    def deliver(self, count, store=None):
        keys = []
        for n in range(count):
            key = yield (store or self.store).deliver(USER, message(n))
            keys.append(key)
        return keys

    def python_maildir(self):
        """The user's INBOX as Python's mailbox module opens it (as mutt would)."""
        os.makedirs(os.path.dirname(self.root), exist_ok=True)
        return mailbox.Maildir(self.root, create=True)

    def files(self, name="INBOX", subdir="cur"):
        path = self.root if name == "INBOX" else os.path.join(self.root, "." + name)
        # Arrival order, as the store numbers them (M95000 before M100000: not by the letter).
        from mailplat.store.maildir.names import sort_key

        return sorted(os.listdir(os.path.join(path, subdir)), key=sort_key)


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
    def test_one_folder_object_per_folder_shared_by_every_opener(self):
        a = yield self.open("Sent")
        b = yield self.open("sent".capitalize())
        inbox1 = yield self.open("inbox")
        inbox2 = yield self.open("INBOX")
        self.assertIs(a, b)
        self.assertIs(inbox1, inbox2)
        self.assertEqual(inbox1.name, "INBOX")


class UIDs(StoreCase):
    @defer.inlineCallbacks
    def test_delivered_messages_get_ascending_uids(self):
        yield self.deliver(5)
        folder = yield self.open()
        uids = [m.uid for m in folder.messages()]
        self.assertEqual(uids, [1, 2, 3, 4, 5])
        self.assertEqual(folder.uidnext, 6)

    @defer.inlineCallbacks
    def test_uids_and_uidvalidity_survive_a_restart(self):
        yield self.deliver(3)
        folder = yield self.open()
        before = [(m.uid, m.key) for m in folder.messages()]
        validity = folder.uidvalidity
        yield self.store.close()
        again = yield self.open(store=self.new_store())
        self.assertIsNot(again, folder)
        self.assertEqual([(m.uid, m.key) for m in again.messages()], before)
        self.assertEqual(again.uidvalidity, validity)
        self.assertEqual(again.uidnext, 4)

    @defer.inlineCallbacks
    def test_uidnext_is_kept_after_the_last_message_is_expunged(self):
        yield self.deliver(3)
        folder = yield self.open()
        yield folder.store_flags([3], ["\\Deleted"], "+")
        yield folder.expunge()
        yield self.store.close()
        again = yield self.open(store=self.new_store())
        self.assertEqual(again.uidnext, 4)
        yield self.deliver(1, store=self.store)
        messages = yield again.sync()
        self.assertEqual([m.uid for m in messages], [1, 2, 4])

    @defer.inlineCallbacks
    def test_uidvalidity_changes_only_when_the_uidlist_is_lost(self):
        yield self.deliver(2)
        folder = yield self.open()
        validity = folder.uidvalidity
        yield self.store.close()
        store = self.new_store()
        again = yield self.open(store=store)
        self.assertEqual(again.uidvalidity, validity)
        yield store.close()
        os.unlink(os.path.join(self.root, UIDLIST))
        third = yield self.open(store=self.new_store())
        self.assertNotEqual(third.uidvalidity, validity)
        self.assertGreater(third.uidvalidity, validity)
        self.assertEqual([m.uid for m in third.messages()], [1, 2])

    @defer.inlineCallbacks
    def test_uidlist_is_in_dovecot_format(self):
        keys = yield self.deliver(2)
        folder = yield self.open()
        with open(os.path.join(self.root, UIDLIST)) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0].split()[:2], ["3", f"V{folder.uidvalidity}"])
        self.assertEqual(lines[1:], [f"1 :{keys[0]}", f"2 :{keys[1]}"])

    @defer.inlineCallbacks
    def test_uids_dovecot_gave_are_kept(self):
        box = self.python_maildir()
        key_a = box.add(b"Subject: a\n\na\n")
        key_b = box.add(b"Subject: b\n\nb\n")
        with open(os.path.join(self.root, UIDLIST), "w") as f:
            f.write(f"3 V1234567 N40 G0123456789abcdef\n17 :{key_a}\n33 W120 :{key_b}:2,S\n")
        folder = yield self.open()
        self.assertEqual(folder.uidvalidity, 1234567)
        self.assertEqual([m.uid for m in folder.messages()], [17, 33])
        self.assertEqual(folder.uidnext, 40)
        box.add(b"Subject: c\n\nc\n")
        messages = yield folder.sync()
        self.assertEqual([m.uid for m in messages], [17, 33, 40])


class NewMail(StoreCase):
    @defer.inlineCallbacks
    def test_file_dropped_into_new_gets_the_next_uid_and_is_published(self):
        yield self.deliver(1)
        folder = yield self.open()
        events = []
        unsubscribe = folder.subscribe(events.append)
        self.addCleanup(unsubscribe)
        name = f"{int(time.time())}.dropped.host"
        with open(os.path.join(self.root, "tmp", name), "wb") as f:
            f.write(b"Subject: dropped\n\nhi\n")
        os.rename(os.path.join(self.root, "tmp", name), os.path.join(self.root, "new", name))
        messages = yield folder.sync()
        self.assertEqual([m.uid for m in messages], [1, 2])
        self.assertEqual(messages[1].key, name)
        self.assertEqual([(e.kind, e.uids, e.origin) for e in events], [("exists", (2,), None)])

    @defer.inlineCallbacks
    def test_watcher_notices_a_dropped_file_without_a_sync_call(self):
        clock = task.Clock()
        store = MaildirStore(self.template, clock=clock)
        self.addCleanup(store.close)
        folder = yield self.open(store=store)
        events = []
        unsubscribe = folder.subscribe(events.append)
        self.addCleanup(unsubscribe)
        box = mailbox.Maildir(self.root, create=False)
        box.add(b"Subject: outside\n\nhi\n")
        synced = defer.Deferred()
        folder.subscribe(lambda e: synced.callback(e) if not synced.called else None)
        clock.advance(1.0)
        event = yield synced
        self.assertEqual(event.kind, "exists")
        self.assertEqual([m.uid for m in folder.messages()], [1])

    @defer.inlineCallbacks
    def test_smtp_delivery_publishes_exists_to_an_open_folder_at_once(self):
        folder = yield self.open()
        got = defer.Deferred()
        unsubscribe = folder.subscribe(lambda e: got.callback(e) if not got.called else None)
        self.addCleanup(unsubscribe)
        yield self.store.deliver(USER, message(1))
        event = yield got
        self.assertEqual((event.kind, event.uids), ("exists", (1,)))
        self.assertEqual(folder.messages()[0].size, message(1).size + 4)

    @defer.inlineCallbacks
    def test_delivery_to_an_open_folder_does_not_rescan_it(self):
        from mailplat.store.maildir.mailfolder import MaildirMailFolder

        yield self.deliver(3)
        folder = yield self.open()
        folder._recheck_at = None
        listed = []
        original = MaildirMailFolder._list
        self.patch(MaildirMailFolder, "_list", lambda self: listed.append(1) or original(self))
        got = defer.Deferred()
        self.addCleanup(folder.subscribe(lambda e: got.called or got.callback(e)))
        yield self.store.deliver(USER, message(4))
        event = yield got
        self.assertEqual(event.uids, (4,))
        self.assertEqual(listed, [])
        self.assertEqual(self.files(subdir="new"), [])
        self.assertEqual(folder.messages()[-1].subdir, "cur")

    @defer.inlineCallbacks
    def test_synced_mail_moves_from_new_to_cur(self):
        yield self.deliver(2)
        self.assertEqual(len(self.files(subdir="new")), 2)
        folder = yield self.open()
        self.assertEqual(self.files(subdir="new"), [])
        self.assertEqual(len(self.files(subdir="cur")), 2)
        self.assertTrue(all(m.subdir == "cur" for m in folder.messages()))

    @defer.inlineCallbacks
    def test_recent_is_claimed_once(self):
        yield self.deliver(2)
        folder = yield self.open()
        uids = [m.uid for m in folder.messages()]
        self.assertEqual(folder.claim_recent(uids), {1, 2})
        self.assertEqual(folder.claim_recent(uids), set())
        yield self.deliver(1)
        yield folder.sync()
        self.assertEqual(folder.claim_recent([1, 2, 3]), {3})


class MaildirFromOtherPrograms(StoreCase):
    @defer.inlineCallbacks
    def test_python_mailbox_maildir_with_flags_in_cur_is_read_right(self):
        box = self.python_maildir()
        seen = mailbox.MaildirMessage(b"Subject: seen\n\nseen body\n")
        seen.set_subdir("cur")
        seen.set_flags("SR")
        box.add(seen)
        fresh = mailbox.MaildirMessage(b"Subject: new\n\nnew body\n")
        box.add(fresh)
        folder = yield self.open()
        by_subject = {}
        for info in folder.messages():
            f = yield folder.open(info.uid)
            with f:
                data = f.read()
            by_subject[data.split(b"\n")[0]] = (info, data)
        info, data = by_subject[b"Subject: seen"]
        self.assertEqual(info.flags, frozenset({"\\Seen", "\\Answered"}))
        self.assertEqual(info.size, len(data) + data.count(b"\n"))
        info, data = by_subject[b"Subject: new"]
        self.assertEqual(info.flags, frozenset())
        self.assertEqual(info.size, len(data) + data.count(b"\n"))

    @defer.inlineCallbacks
    def test_flag_changes_and_deletes_by_another_program_are_noticed(self):
        yield self.deliver(3)
        folder = yield self.open()
        events = []
        unsubscribe = folder.subscribe(events.append)
        self.addCleanup(unsubscribe)
        cur = os.path.join(self.root, "cur")
        first, second, third = [m.filename for m in folder.messages()]
        os.rename(os.path.join(cur, first), os.path.join(cur, first.split(":")[0] + ":2,FS"))
        os.unlink(os.path.join(cur, second))
        messages = yield folder.sync()
        self.assertEqual([m.uid for m in messages], [1, 3])
        self.assertEqual(messages[0].flags, frozenset({"\\Flagged", "\\Seen"}))
        self.assertEqual(sorted((e.kind, e.uids) for e in events), [("expunge", (2,)), ("flags", (1,))])

    @defer.inlineCallbacks
    def test_sync_of_an_unchanged_folder_does_not_list_it(self):
        yield self.deliver(3)
        folder = yield self.open()
        folder._recheck_at = None
        calls = []
        original = folder._list
        folder._list = lambda: calls.append(1) or original()
        yield folder.sync()
        self.assertEqual(calls, [])


class Flags(StoreCase):
    @defer.inlineCallbacks
    def test_system_flags_go_into_the_file_name(self):
        yield self.deliver(1)
        folder = yield self.open()
        result = yield folder.store_flags([1], ["\\seen", "\\Flagged", "\\Recent"], "+")
        self.assertEqual(result, {1: frozenset({"\\Seen", "\\Flagged"})})
        self.assertTrue(self.files()[0].endswith(":2,FS"))
        result = yield folder.store_flags([1], ["\\Flagged"], "-")
        self.assertTrue(self.files()[0].endswith(":2,S"))
        result = yield folder.store_flags([1], ["\\Draft", "\\Answered"], "=")
        self.assertTrue(self.files()[0].endswith(":2,DR"))
        self.assertEqual(folder.messages()[0].flags, frozenset({"\\Draft", "\\Answered"}))

    @defer.inlineCallbacks
    def test_keywords_are_letters_named_in_dovecot_keywords(self):
        yield self.deliver(2)
        folder = yield self.open()
        yield folder.store_flags([1], ["$Junk", "\\Seen"], "+")
        yield folder.store_flags([2], ["NonJunk", "$junk"], "+")
        with open(os.path.join(self.root, "dovecot-keywords")) as f:
            self.assertEqual(f.read(), "0 $Junk\n1 NonJunk\n")
        names = self.files()
        self.assertTrue(names[0].endswith(":2,Sa"), names)
        self.assertTrue(names[1].endswith(":2,ab"), names)
        yield self.store.close()
        again = yield self.open(store=self.new_store())
        self.assertEqual(again.messages()[0].flags, frozenset({"$Junk", "\\Seen"}))
        self.assertEqual(again.messages()[1].flags, frozenset({"$Junk", "NonJunk"}))

    @defer.inlineCallbacks
    def test_letters_of_other_programs_survive_a_flag_change(self):
        box = self.python_maildir()
        msg = mailbox.MaildirMessage(b"Subject: x\n\nx\n")
        msg.set_subdir("cur")
        msg.set_flags("SZc")
        box.add(msg)
        folder = yield self.open()
        yield folder.store_flags([1], ["\\Flagged"], "=")
        self.assertTrue(self.files()[0].endswith(":2,FZc"), self.files())

    @defer.inlineCallbacks
    def test_flag_change_is_published_with_its_origin(self):
        yield self.deliver(1)
        folder = yield self.open()
        events = []
        unsubscribe = folder.subscribe(events.append)
        self.addCleanup(unsubscribe)
        session = object()
        yield folder.store_flags([1], ["\\Seen"], "+", origin=session)
        yield folder.store_flags([1], ["\\Seen"], "+", origin=session)  # no change, no event
        self.assertEqual([(e.kind, e.uids, e.origin) for e in events], [("flags", (1,), session)])


class Append(StoreCase):
    @defer.inlineCallbacks
    def test_append_is_durable_byte_exact_and_keeps_flags_and_date(self):
        folder = yield self.open("Drafts")
        data = b"Subject: draft\r\n\r\nline one\r\nline two\r\n"
        when = 1_600_000_000.0
        uid = yield folder.append(BytesSource(data), ["\\Draft", "\\Seen"], when)
        self.assertEqual(uid, 1)
        info = folder.messages()[0]
        self.assertEqual(info.flags, frozenset({"\\Draft", "\\Seen"}))
        self.assertEqual(info.internaldate, when)
        self.assertEqual(info.size, len(data))
        f = yield folder.open(uid)
        with f:
            self.assertEqual(f.read(), data)
        self.assertTrue(self.files("Drafts")[0].endswith(":2,DS"))

    @defer.inlineCallbacks
    def test_append_without_flags_goes_to_cur(self):
        folder = yield self.open()
        uid = yield folder.append(message(1))
        self.assertEqual(uid, 1)
        self.assertEqual(len(self.files()), 1)
        self.assertEqual(folder.messages()[0].flags, frozenset())


class CopyMoveExpunge(StoreCase):
    @defer.inlineCallbacks
    def test_expunge_removes_only_deleted_messages(self):
        yield self.deliver(4)
        folder = yield self.open()
        events = []
        unsubscribe = folder.subscribe(events.append)
        self.addCleanup(unsubscribe)
        yield folder.store_flags([2, 4], ["\\Deleted"], "+")
        removed = yield folder.expunge(uids=[2, 3])
        self.assertEqual(removed, [2])
        removed = yield folder.expunge()
        self.assertEqual(removed, [4])
        self.assertEqual([m.uid for m in folder.messages()], [1, 3])
        self.assertEqual(len(self.files()), 2)
        self.assertIn(("expunge", (2,)), [(e.kind, e.uids) for e in events])

    @defer.inlineCallbacks
    def test_copy_maps_uids_and_keeps_flags(self):
        yield self.deliver(3)
        inbox = yield self.open()
        archive = yield self.open("Archive")
        yield inbox.store_flags([2], ["\\Seen", "$Important"], "+")
        mapping = yield inbox.copy_to([2, 3], archive)
        self.assertEqual(mapping, [(2, 1), (3, 2)])
        self.assertEqual([m.uid for m in inbox.messages()], [1, 2, 3])
        self.assertEqual(archive.messages()[0].flags, frozenset({"\\Seen", "$Important"}))
        self.assertEqual(archive.messages()[0].size, inbox.messages()[1].size)
        self.assertEqual(archive.messages()[0].internaldate, inbox.messages()[1].internaldate)
        f = yield archive.open(1)
        with f:
            copied = f.read()
        f = yield inbox.open(2)
        with f:
            self.assertEqual(copied, f.read())

    @defer.inlineCallbacks
    def test_move_maps_uids_and_expunges_the_source(self):
        yield self.deliver(3)
        inbox = yield self.open()
        trash = yield self.open("Trash")
        inbox_events, trash_events = [], []
        self.addCleanup(inbox.subscribe(inbox_events.append))
        self.addCleanup(trash.subscribe(trash_events.append))
        session = object()
        mapping = yield inbox.move_to([1, 3], trash, origin=session)
        self.assertEqual(mapping, [(1, 1), (3, 2)])
        self.assertEqual([m.uid for m in inbox.messages()], [2])
        self.assertEqual(len(self.files()), 1)
        self.assertEqual(len(self.files("Trash")), 2)
        self.assertEqual([(e.kind, e.uids, e.origin) for e in inbox_events], [("expunge", (1, 3), session)])
        self.assertEqual([(e.kind, e.uids, e.origin) for e in trash_events], [("exists", (1, 2), session)])
        yield self.store.close()
        again = yield self.open("Trash", store=self.new_store())
        self.assertEqual([m.uid for m in again.messages()], [1, 2])


class Folders(StoreCase):
    @defer.inlineCallbacks
    def test_new_account_has_the_special_use_folders(self):
        account = yield self.store.account(USER)
        folders = dict((yield account.folders()))
        self.assertEqual(sorted(folders), ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"])
        self.assertIn("\\Sent", folders["Sent"])
        self.assertIn("\\Trash", folders["Trash"])
        self.assertIn("\\Junk", folders["Junk"])
        self.assertIn("\\Drafts", folders["Drafts"])
        self.assertIn("\\Archive", folders["Archive"])
        self.assertIn("\\HasNoChildren", folders["INBOX"])
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            self.assertTrue(os.path.isdir(os.path.join(self.root, "." + name, "cur")))
            self.assertTrue(os.path.exists(os.path.join(self.root, "." + name, "maildirfolder")))

    @defer.inlineCallbacks
    def test_existing_tree_keeps_its_own_names_for_special_folders(self):
        for name in (".Sent Messages", ".Spam"):
            os.makedirs(os.path.join(self.root, name, "cur"))
        account = yield self.store.account(USER)
        folders = dict((yield account.folders()))
        self.assertIn("\\Sent", folders["Sent Messages"])
        self.assertIn("\\Junk", folders["Spam"])
        self.assertNotIn("Sent", folders)
        self.assertNotIn("Junk", folders)
        self.assertIn("\\Trash", folders["Trash"])

    @defer.inlineCallbacks
    def test_deleted_special_folder_does_not_come_back(self):
        account = yield self.store.account(USER)
        yield account.delete("Junk")
        again = yield self.new_store().account(USER)
        self.assertNotIn("Junk", dict((yield again.folders())))

    @defer.inlineCallbacks
    def test_create_makes_maildir_plus_plus_directories_and_parents(self):
        account = yield self.store.account(USER)
        yield account.create("Archive.2025")
        yield account.create("Projects.Alpha")
        yield account.create("Entwürfe & Ideen")
        folders = dict((yield account.folders()))
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".Archive.2025", "new")))
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".Projects", "cur")))
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".Entw&APw-rfe &- Ideen", "tmp")))
        self.assertIn("\\HasChildren", folders["Archive"])
        self.assertIn("\\HasNoChildren", folders["Archive.2025"])
        self.assertIn("Entwürfe & Ideen", folders)
        yield self.assertFailure(account.create("Archive.2025"), ValueError)
        yield self.assertFailure(account.create("inbox"), ValueError)
        yield self.assertFailure(account.create("a..b"), ValueError)
        yield self.assertFailure(account.create("a/b"), ValueError)

    @defer.inlineCallbacks
    def test_create_with_special_use(self):
        account = yield self.store.account(USER)
        yield account.create("Everything", special_use="\\all")
        folders = dict((yield account.folders()))
        self.assertIn("\\All", folders["Everything"])

    @defer.inlineCallbacks
    def test_parent_without_directory_is_noselect(self):
        account = yield self.store.account(USER)
        os.makedirs(os.path.join(self.root, ".Lists.twisted", "cur"))
        folders = dict((yield account.folders()))
        self.assertEqual(folders["Lists"], frozenset({"\\Noselect", "\\HasChildren"}))
        yield self.assertFailure(account.folder("Lists"), KeyError)

    @defer.inlineCallbacks
    def test_delete_removes_the_folder_and_tells_its_sessions(self):
        account = yield self.store.account(USER)
        yield account.create("Old")
        folder = yield account.folder("Old")
        yield folder.append(message(1))
        events = []
        self.addCleanup(folder.subscribe(events.append))
        yield account.delete("Old")
        self.assertFalse(os.path.exists(os.path.join(self.root, ".Old")))
        self.assertEqual([(e.kind, e.uids) for e in events], [("expunge", (1,))])
        yield self.assertFailure(account.folder("Old"), KeyError)
        yield self.assertFailure(account.delete("Old"), KeyError)
        yield self.assertFailure(account.delete("INBOX"), ValueError)
        self.assertEqual([n for n in os.listdir(self.root) if n.startswith("..")], [])

    @defer.inlineCallbacks
    def test_rename_moves_the_folder_its_children_uids_and_subscriptions(self):
        account = yield self.store.account(USER)
        yield account.create("Work.2024")
        yield account.subscribe("Work")
        folder = yield account.folder("Work")
        yield folder.append(message(1))
        validity = folder.uidvalidity
        yield account.rename("Work", "Jobs.Old")
        folders = dict((yield account.folders()))
        self.assertNotIn("Work", folders)
        self.assertIn("Jobs.Old", folders)
        self.assertIn("Jobs.Old.2024", folders)
        moved = yield account.folder("Jobs.Old")
        self.assertIs(moved, folder)
        self.assertEqual(moved.uidvalidity, validity)
        self.assertEqual([m.uid for m in moved.messages()], [1])
        yield moved.append(message(2))
        self.assertEqual(len(self.files("Jobs.Old")), 2)
        self.assertIn("Jobs.Old", (yield account.subscriptions()))
        yield self.assertFailure(account.rename("Nope", "Other"), KeyError)
        yield self.assertFailure(account.rename("Jobs.Old", "Sent"), ValueError)

    @defer.inlineCallbacks
    def test_open_child_folder_follows_a_rename_of_its_parent(self):
        account = yield self.store.account(USER)
        yield account.create("A.B")
        child = yield account.folder("A.B")
        yield child.append(message(1))
        yield account.rename("A", "Z")
        self.assertEqual(child.name, "Z.B")
        moved = yield account.folder("Z.B")
        self.assertIs(moved, child)
        yield child.append(message(2))
        self.assertEqual([m.uid for m in (yield child.sync())], [1, 2])
        self.assertEqual(len(self.files("Z.B")), 2)

    @defer.inlineCallbacks
    def test_rename_inbox_moves_its_messages_and_inbox_stays(self):
        yield self.deliver(2)
        account = yield self.store.account(USER)
        yield account.rename("INBOX", "Old Mail")
        inbox = yield account.folder("INBOX")
        old = yield account.folder("Old Mail")
        self.assertEqual(inbox.messages(), [])
        self.assertEqual([m.uid for m in old.messages()], [1, 2])
        self.assertEqual(self.files(), [])
        self.assertIn("INBOX", dict((yield account.folders())))

    @defer.inlineCallbacks
    def test_subscriptions_file_is_dovecots(self):
        account = yield self.store.account(USER)
        yield account.subscribe("Lists.twisted")
        yield account.unsubscribe("Junk")
        subscribed = yield account.subscriptions()
        self.assertIn("Lists.twisted", subscribed)
        self.assertNotIn("Junk", subscribed)
        with open(os.path.join(self.root, "subscriptions")) as f:
            lines = f.read().splitlines()
        self.assertEqual(sorted(lines), sorted(subscribed))
        self.assertIn("Lists.twisted", lines)

    @defer.inlineCallbacks
    def test_dovecot_version_2_subscriptions_are_read(self):
        os.makedirs(self.root)
        with open(os.path.join(self.root, "subscriptions"), "w") as f:
            f.write("V\t2\n\nINBOX\nLists\ttwisted\n")
        account = yield self.store.account(USER)
        subscribed = yield account.subscriptions()
        self.assertIn("Lists.twisted", subscribed)
        self.assertIn("INBOX", subscribed)


class Cache(StoreCase):
    @defer.inlineCallbacks
    def test_cached_values_survive_a_restart(self):
        yield self.deliver(2)
        folder = yield self.open()
        envelope = ["date", "subject", [["bob", None, "bob", "example.org"]]]
        folder.cache(1, "envelope", envelope)
        self.assertEqual(folder.cached(1, "envelope"), envelope)
        self.assertIsNone(folder.cached(2, "envelope"))
        yield self.store.close()
        again = yield self.open(store=self.new_store())
        self.assertEqual(again.cached(1, "envelope"), envelope)

    @defer.inlineCallbacks
    def test_cache_of_an_expunged_message_is_gone(self):
        yield self.deliver(1)
        folder = yield self.open()
        folder.cache(1, "bodystructure", ["text", "plain"])
        yield folder.store_flags([1], ["\\Deleted"], "+")
        yield folder.expunge()
        self.assertIsNone(folder.cached(1, "bodystructure"))


class UidValidity(StoreCase):
    @defer.inlineCallbacks
    def test_folder_deleted_and_created_again_gets_a_greater_uidvalidity(self):
        # RFC 3501 2.3.1.1: even within the same second.
        account = yield self.store.account(USER)
        yield account.create("Again")
        first = yield account.folder("Again")
        old = first.uidvalidity
        yield account.delete("Again")
        yield account.create("Again")
        second = yield account.folder("Again")
        self.assertIsNot(first, second)
        self.assertGreater(second.uidvalidity, old)

    @defer.inlineCallbacks
    def test_lost_uidlist_under_an_open_folder_renumbers_and_tells_the_sessions(self):
        yield self.deliver(2)
        folder = yield self.open()
        old = folder.uidvalidity
        events = []
        self.addCleanup(folder.subscribe(events.append))
        os.unlink(os.path.join(self.root, UIDLIST))
        messages = yield folder.sync()
        self.assertGreater(folder.uidvalidity, old)
        self.assertEqual([m.uid for m in messages], [1, 2])
        self.assertEqual([(e.kind, e.uids) for e in events], [("expunge", (1, 2)), ("exists", (1, 2))])


class Naming(StoreCase):
    @defer.inlineCallbacks
    def test_inbox_children_are_spelled_with_inbox_in_capitals(self):
        account = yield self.store.account(USER)
        yield account.create("inbox.Lists")
        folders = dict((yield account.folders()))
        self.assertIn("INBOX.Lists", folders)
        self.assertIn("\\HasChildren", folders["INBOX"])
        folder = yield account.folder("Inbox.Lists")
        self.assertEqual(folder.name, "INBOX.Lists")
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".INBOX.Lists", "cur")))

    @defer.inlineCallbacks
    def test_folder_removed_by_another_program_is_forgotten(self):
        account = yield self.store.account(USER)
        yield account.create("Temp")
        folder = yield account.folder("Temp")
        yield folder.append(message(1))
        events = []
        self.addCleanup(folder.subscribe(events.append))
        shutil.rmtree(os.path.join(self.root, ".Temp"))
        yield self.assertFailure(folder.sync(), KeyError)
        self.assertEqual([(e.kind, e.uids) for e in events], [("expunge", (1,))])
        yield self.assertFailure(account.folder("Temp"), KeyError)


class Index(StoreCase):
    @defer.inlineCallbacks
    def test_select_with_sizes_in_the_names_reads_no_message(self):
        from mailplat.store.maildir import view

        yield self.deliver(3)

        def refuse(path):
            raise AssertionError(f"read {path}")

        self.patch(view, "_crlf_size", refuse)
        folder = yield self.open()
        self.assertEqual(len(folder.messages()), 3)

    @defer.inlineCallbacks
    def test_unchanged_folder_is_taken_from_the_index_without_listing(self):
        from mailplat.store.maildir.mailfolder import MaildirMailFolder

        yield self.deliver(3)
        folder = yield self.open()
        yield folder.store_flags([2], ["\\Seen", "$Later"], "+")
        folder.claim_recent([1, 2, 3])
        before = [(m.uid, m.key, m.size, m.flags, m.internaldate) for m in folder.messages()]
        yield self.store.close()
        # Let the directory stamps age so the index may be trusted as it is.
        old = time.time() - 10
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.root, sub), (old, old))
        again_store = self.new_store()
        account = yield again_store.account(USER)
        first = yield account.folder("INBOX")  # sees the aged stamps, rewrites the index
        yield again_store.close()

        def refuse(self):
            raise AssertionError("listed the folder")

        self.patch(MaildirMailFolder, "_list", refuse)
        third = yield self.open(store=self.new_store())
        self.assertIsNot(third, first)
        self.assertEqual([(m.uid, m.key, m.size, m.flags, m.internaldate) for m in third.messages()], before)
        self.assertEqual(third.claim_recent([1, 2, 3]), set())

    @defer.inlineCallbacks
    def test_mail_that_arrived_while_down_is_found_despite_the_index(self):
        yield self.deliver(2)
        yield self.open()
        yield self.store.close()
        box = mailbox.Maildir(self.root, create=False)
        box.add(b"Subject: while down\n\nx\n")
        again = yield self.open(store=self.new_store())
        self.assertEqual([m.uid for m in again.messages()], [1, 2, 3])

    @defer.inlineCallbacks
    def test_broken_index_is_rebuilt(self):
        from mailplat.store.maildir import index

        yield self.deliver(2)
        folder = yield self.open()
        yield self.store.close()
        with open(os.path.join(self.root, index.INDEX), "w") as f:
            f.write('{"version": 1, "messa')
        again = yield self.open(store=self.new_store())
        self.assertEqual([m.uid for m in again.messages()], [1, 2])
        self.assertEqual(folder.uidvalidity, again.uidvalidity)


class MoreFlags(StoreCase):
    @defer.inlineCallbacks
    def test_more_than_26_keywords_are_kept_in_the_index(self):
        yield self.deliver(1)
        folder = yield self.open()
        many = [f"kw{n}" for n in range(30)]
        result = yield folder.store_flags([1], many, "+")
        self.assertEqual(result[1], frozenset(many))
        letters = self.files()[0].split(":2,")[1]
        self.assertEqual(len(letters), 26)
        yield self.store.close()
        again = yield self.open(store=self.new_store())
        self.assertEqual(again.messages()[0].flags, frozenset(many))

    @defer.inlineCallbacks
    def test_expunge_spares_a_message_another_program_undeleted(self):
        yield self.deliver(1)
        folder = yield self.open()
        yield folder.store_flags([1], ["\\Deleted"], "+")
        cur = os.path.join(self.root, "cur")
        [name] = os.listdir(cur)
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,S"))
        removed = yield folder.expunge()
        self.assertEqual(removed, [])
        self.assertEqual(len(os.listdir(cur)), 1)

    @defer.inlineCallbacks
    def test_copy_translates_keyword_letters_between_folders(self):
        yield self.deliver(1)
        inbox = yield self.open()
        archive = yield self.open("Archive")
        yield archive.append(message(9), ["Other"])  # 'a' is Other in Archive
        yield inbox.store_flags([1], ["Mine"], "+")  # 'a' is Mine in INBOX
        yield inbox.copy_to([1], archive)
        self.assertEqual(archive.messages()[1].flags, frozenset({"Mine"}))
        self.assertTrue(archive.messages()[1].filename.endswith(":2,b"))

    @defer.inlineCallbacks
    def test_watcher_publishes_flags_changed_by_another_program(self):
        clock = task.Clock()
        store = MaildirStore(self.template, clock=clock)
        self.addCleanup(store.close)
        yield self.deliver(1)
        folder = yield self.open(store=store)
        got = defer.Deferred()
        self.addCleanup(folder.subscribe(lambda e: got.called or got.callback(e)))
        cur = os.path.join(self.root, "cur")
        [name] = os.listdir(cur)
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,F"))
        clock.advance(1.0)
        event = yield got
        self.assertEqual((event.kind, event.uids), ("flags", (1,)))
        self.assertEqual(folder.messages()[0].flags, frozenset({"\\Flagged"}))


class EdgeCases(StoreCase):
    @defer.inlineCallbacks
    def test_copy_and_move_within_one_folder(self):
        yield self.deliver(2)
        folder = yield self.open()
        mapping = yield folder.copy_to([1], folder)
        self.assertEqual(mapping, [(1, 3)])
        mapping = yield folder.move_to([2], folder)
        self.assertEqual(mapping, [(2, 4)])
        self.assertEqual([m.uid for m in folder.messages()], [1, 3, 4])
        self.assertEqual(len(self.files()), 3)

    @defer.inlineCallbacks
    def test_open_follows_a_file_another_program_renamed(self):
        yield self.deliver(1)
        folder = yield self.open()
        cur = os.path.join(self.root, "cur")
        [name] = os.listdir(cur)
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,RS"))
        f = yield folder.open(1)
        with f:
            self.assertIn(b"Subject: message 0", f.read())
        os.unlink(os.path.join(cur, name.split(":")[0] + ":2,RS"))
        yield self.assertFailure(folder.open(1), KeyError)
        yield self.assertFailure(folder.open(99), KeyError)

    @defer.inlineCallbacks
    def test_replacing_with_no_flags_clears_them(self):
        yield self.deliver(1)
        folder = yield self.open()
        yield folder.store_flags([1], ["\\Seen", "$Junk"], "+")
        result = yield folder.store_flags([1], [], "=")
        self.assertEqual(result, {1: frozenset()})
        self.assertTrue(self.files()[0].endswith(":2,"))

    @defer.inlineCallbacks
    def test_flags_of_expunged_messages_are_not_reported(self):
        yield self.deliver(2)
        folder = yield self.open()
        result = yield folder.store_flags([1, 2, 7], ["\\Flagged"], "+")
        self.assertEqual(sorted(result), [1, 2])

    @defer.inlineCallbacks
    def test_unsubscribing_twice_is_harmless_and_stops_the_watcher(self):
        folder = yield self.open()
        unsubscribe = folder.subscribe(lambda e: None)
        self.assertIsNotNone(self.store._poller)
        unsubscribe()
        unsubscribe()
        self.assertIsNone(self.store._poller)
