"""
StoreConformance: what a mail store must do for SMTP delivery, POP3 and
IMAP to work on it (IMailStore, IFolderStore, IMailAccount, IMailFolder):
durable delivery, stable keys, folders, UIDs that ascend and persist,
flags, append / copy / move / expunge, \\Recent, change notification,
the metadata cache, and mod-sequences (IModSeqFolder, when the folder has
them). Everything is checked through the interfaces only.
"""

import time

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest
from zope.interface.verify import verifyObject

from mailplat.interfaces import (
    IBatchOpen,
    IFolder,
    IFolderStore,
    IMailAccount,
    IMailFolder,
    IMailStore,
    IMessageInfo,
    IModSeqFolder,
    IStoredMessage,
)
from mailplat.store.source import BytesSource

# Mailbox formats have to quote some of these lines; they must come back as sent.
BODY = (
    b"\n"
    b"Hello.\n"
    b"From the start of a line\n"
    b">From an already quoted line\n"
    b".\n"
    b"Gr\xc3\xbc\xc3\x9fe, 8 bit\n"
)

SPECIAL_USE = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}

# A fixed arrival time for APPEND: 2023-11-14 22:13:20 UTC.
INTERNALDATE = 1700000000

# Mailbox names that point outside an account on a store that builds paths
# from names (issue 17); "/" is also tried as the store's own separator.
HOSTILE_NAMES = (
    "/../bob", "../bob", "Sent/../../bob", "../bob/INBOX", "INBOX/../../bob",
    "/../../example.test/bob", "../../example.test/bob/INBOX", "../../../../outside",
    "/tmp", "/new", "/cur", "/", ".", "..", "", "Sent/..", "/etc/passwd",
    "a\r\nb", "a\x00b",
)

# How long a subscriber may wait for an event the store owes it.
EVENT_TIMEOUT = 5.0


def message(n):
    """The n-th test message (LF line ends), told apart by its subject."""
    return b"From: carol@remote.test\nTo: alice@example.test\nSubject: message %d\n" % n + BODY


def crlf_size(data):
    return len(data) + data.count(b"\n")


class StoreConformance:
    """
    Mix into a twisted.trial.unittest.TestCase and implement:

      - C{make_store()}: a fresh, empty store (or a Deferred of one), with
        its data in a temporary directory of its own (C{self.mktemp()}).
        Register its clean-up (C{close}) with C{self.addCleanup}.
      - C{reopen_store(store)}: a new store object over the same data, as
        the server has after a restart: stop C{store} the way the server
        does when it stops (close it, so lazily written indexes are
        written), then build a new one. The kit never uses C{store} again.

    Tests of the IMAP side (folders, UIDs, flags...) need a store that
    provides IFolderStore; for one that only provides IMailStore (SMTP
    delivery and POP3) they are skipped. The optional parts of a folder,
    C{recent_count}, L{IBatchOpen} and L{IModSeqFolder}, are tested when the
    folder has them.

    Capabilities (class attributes):

      - C{cache_persists = True}: values given to C{IMailFolder.cache} are
        still C{cached} after C{reopen_store}. Set it to False for a store
        that keeps them in memory only (it is a cache: the IMAP layer
        computes a lost value again).
    """

    user = "alice@example.test"
    cache_persists = True

    def make_store(self):
        raise NotImplementedError("return a fresh, empty store in a temporary directory")

    def reopen_store(self, store):
        raise NotImplementedError("close `store` and return a new store over the same data")

    # --- helpers ---------------------------------------------------------

    def _kit_store(self):
        return defer.maybeDeferred(self.make_store)

    def _kit_reopen(self, store):
        return defer.maybeDeferred(self.reopen_store, store)

    @defer.inlineCallbacks
    def _kit_account(self, store):
        if not IFolderStore.providedBy(store):
            raise SkipTest(f"{type(store).__name__} does not provide IFolderStore")
        account = yield store.account(self.user)
        return account

    @defer.inlineCallbacks
    def _kit_folder(self, store, name="INBOX"):
        account = yield self._kit_account(store)
        folder = yield account.folder(name)
        return folder

    @defer.inlineCallbacks
    def _kit_deliver(self, store, numbers, folder=None):
        """Deliver message(n) for each n, one after another; @return: their keys."""
        keys = []
        for n in numbers:
            key = yield store.deliver(self.user, BytesSource(message(n)), folder)
            keys.append(key)
        return keys

    @defer.inlineCallbacks
    def _kit_read(self, folder, uid):
        f = yield folder.open(uid)
        try:
            return f.read()
        finally:
            f.close()

    @defer.inlineCallbacks
    def _kit_read_key(self, folder, key):
        f = yield folder.open_message(key)
        try:
            return f.read()
        finally:
            f.close()

    @defer.inlineCallbacks
    def _kit_contents(self, folder):
        """The bytes of every message of an IMailFolder, by UID."""
        messages = yield folder.sync()
        out = []
        for info in messages:
            data = yield self._kit_read(folder, info.uid)
            out.append(data)
        return out

    def _kit_flags(self, folder):
        return {m.uid: m.flags for m in folder.messages()}

    def _kit_listen(self, folder):
        """Subscribe to `folder`: @return: (the list the events go to, unsubscribe)."""
        events = []
        unsubscribe = folder.subscribe(events.append)
        self.addCleanup(unsubscribe)
        return events, unsubscribe

    @defer.inlineCallbacks
    def _kit_until(self, condition, what, timeout=EVENT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"waited {timeout} s for {what}")
            yield task.deferLater(reactor, 0.01, lambda: None)

    @staticmethod
    def _kit_heard(events, kind, uids, origin=None):
        """True when the events name every one of `uids` as `kind` (with `origin`)."""
        heard = set()
        for event in events:
            if event.kind == kind and event.origin is origin:
                heard.update(event.uids)
        return set(uids) <= heard

    # --- IMailStore: delivery, and INBOX as POP3 reads it -------------------------

    @defer.inlineCallbacks
    def test_store_and_inbox_provide_the_interfaces(self):
        store = yield self._kit_store()
        self.assertTrue(verifyObject(IMailStore, store))
        yield self._kit_deliver(store, [1])
        inbox = yield store.inbox(self.user)
        self.assertTrue(verifyObject(IFolder, inbox))
        [stored] = yield inbox.messages()
        self.assertTrue(verifyObject(IStoredMessage, stored))

    @defer.inlineCallbacks
    def test_delivered_message_is_in_the_inbox_byte_exact_when_deliver_fires(self):
        store = yield self._kit_store()
        [key] = yield self._kit_deliver(store, [1])
        # No waiting: what deliver promised is already held.
        inbox = yield store.inbox(self.user)
        self.assertEqual([m.key for m in (yield inbox.messages())], [key])
        self.assertEqual((yield self._kit_read_key(inbox, key)), message(1))

    @defer.inlineCallbacks
    def test_delivered_message_is_in_the_imap_inbox_when_deliver_fires(self):
        store = yield self._kit_store()
        [key] = yield self._kit_deliver(store, [1])
        folder = yield self._kit_folder(store)
        [info] = yield folder.sync()
        self.assertEqual(info.key, key)
        self.assertEqual((yield self._kit_read(folder, info.uid)), message(1))

    @defer.inlineCallbacks
    def test_inbox_lists_messages_oldest_first(self):
        store = yield self._kit_store()
        keys = yield self._kit_deliver(store, [1, 2, 3])
        inbox = yield store.inbox(self.user)
        self.assertEqual([m.key for m in (yield inbox.messages())], keys)

    @defer.inlineCallbacks
    def test_stored_message_size_counts_crlf_line_ends(self):
        store = yield self._kit_store()
        yield self._kit_deliver(store, [1])
        inbox = yield store.inbox(self.user)
        [stored] = yield inbox.messages()
        self.assertEqual(stored.size, crlf_size(message(1)))

    @defer.inlineCallbacks
    def test_keys_are_stable_across_scans_and_reopen(self):
        store = yield self._kit_store()
        keys = yield self._kit_deliver(store, [1, 2])
        inbox = yield store.inbox(self.user)
        yield inbox.messages()
        self.assertEqual([m.key for m in (yield inbox.messages())], keys)
        store = yield self._kit_reopen(store)
        inbox = yield store.inbox(self.user)
        self.assertEqual([m.key for m in (yield inbox.messages())], keys)

    @defer.inlineCallbacks
    def test_keys_are_stable_across_flag_changes(self):
        store = yield self._kit_store()
        keys = yield self._kit_deliver(store, [1, 2])
        folder = yield self._kit_folder(store)
        uids = [m.uid for m in (yield folder.sync())]
        yield folder.store_flags(uids, ["\\Seen", "$Label1"], "+")
        inbox = yield store.inbox(self.user)
        self.assertEqual([m.key for m in (yield inbox.messages())], keys)
        self.assertEqual([m.key for m in (yield folder.sync())], keys)

    @defer.inlineCallbacks
    def test_open_message_of_an_unknown_key_fails_with_key_error(self):
        store = yield self._kit_store()
        yield self._kit_deliver(store, [1])
        inbox = yield store.inbox(self.user)
        yield inbox.messages()
        yield self.assertFailure(defer.maybeDeferred(inbox.open_message, "no-such-key"), KeyError)

    @defer.inlineCallbacks
    def test_remove_deletes_messages_for_good(self):
        store = yield self._kit_store()
        keys = yield self._kit_deliver(store, [1, 2])
        inbox = yield store.inbox(self.user)
        yield inbox.messages()
        yield inbox.remove([keys[0]])
        self.assertEqual([m.key for m in (yield inbox.messages())], keys[1:])
        yield self.assertFailure(defer.maybeDeferred(inbox.open_message, keys[0]), KeyError)
        store = yield self._kit_reopen(store)
        inbox = yield store.inbox(self.user)
        self.assertEqual([m.key for m in (yield inbox.messages())], keys[1:])

    @defer.inlineCallbacks
    def test_remove_ignores_keys_already_gone(self):
        store = yield self._kit_store()
        keys = yield self._kit_deliver(store, [1, 2])
        inbox = yield store.inbox(self.user)
        yield inbox.messages()
        yield inbox.remove([keys[0]])
        yield inbox.remove([keys[0], "no-such-key"])
        self.assertEqual([m.key for m in (yield inbox.messages())], keys[1:])

    @defer.inlineCallbacks
    def test_delivery_to_a_folder_files_the_message_there(self):
        store = yield self._kit_store()
        yield self._kit_account(store)
        yield self._kit_deliver(store, [1], folder="Junk")
        junk = yield self._kit_folder(store, "Junk")
        self.assertEqual((yield self._kit_contents(junk)), [message(1)])
        inbox = yield self._kit_folder(store)
        self.assertEqual((yield inbox.sync()), [])

    @defer.inlineCallbacks
    def test_delivery_to_a_missing_folder_files_the_message_in_inbox(self):
        store = yield self._kit_store()
        yield self._kit_deliver(store, [1], folder="No such folder")
        inbox = yield store.inbox(self.user)
        self.assertEqual(len((yield inbox.messages())), 1)

    @defer.inlineCallbacks
    def test_concurrent_deliveries_all_arrive_with_distinct_keys(self):
        store = yield self._kit_store()
        keys = yield defer.gatherResults([store.deliver(self.user, BytesSource(message(n))) for n in range(8)])
        self.assertEqual(len(set(keys)), 8)
        inbox = yield store.inbox(self.user)
        self.assertEqual(sorted(m.key for m in (yield inbox.messages())), sorted(keys))

    @defer.inlineCallbacks
    def test_delivered_message_has_its_arrival_time_as_internaldate(self):
        store = yield self._kit_store()
        before = time.time()
        yield self._kit_deliver(store, [1])
        folder = yield self._kit_folder(store)
        [info] = yield folder.sync()
        # Whole seconds are enough (an mbox From_ line has no more).
        self.assertTrue(int(before) - 1 <= info.internaldate <= time.time() + 1, info.internaldate)

    # --- IFolderStore / IMailAccount: folders --------------------------------------

    @defer.inlineCallbacks
    def test_account_and_folder_provide_the_interfaces(self):
        store = yield self._kit_store()
        yield self._kit_deliver(store, [1])
        account = yield self._kit_account(store)
        self.assertTrue(verifyObject(IFolderStore, store))
        self.assertTrue(verifyObject(IMailAccount, account))
        folder = yield account.folder("INBOX")
        if hasattr(folder, "recent_count"):
            self.assertTrue(verifyObject(IMailFolder, folder))
        else:
            # recent_count came in a later version; the IMAP server copes without it.
            missing = [n for n in IMailFolder.names(all=True) if n != "recent_count" and not hasattr(folder, n)]
            self.assertEqual(missing, [], f"{type(folder).__name__} lacks part of IMailFolder")
        if IBatchOpen.providedBy(folder):
            self.assertTrue(verifyObject(IBatchOpen, folder))
        [info] = yield folder.sync()
        self.assertTrue(verifyObject(IMessageInfo, info))

    @defer.inlineCallbacks
    def test_every_opener_gets_the_one_folder_object(self):
        store = yield self._kit_store()
        first = yield self._kit_folder(store, "INBOX")
        second = yield self._kit_folder(store, "INBOX")
        self.assertIs(first, second)

    @defer.inlineCallbacks
    def test_inbox_name_is_case_insensitive(self):
        # RFC 3501 5.1
        store = yield self._kit_store()
        folder = yield self._kit_folder(store, "inbox")
        self.assertEqual(folder.name, "INBOX")
        self.assertIs(folder, (yield self._kit_folder(store, "INBOX")))

    @defer.inlineCallbacks
    def test_new_account_has_inbox_and_the_special_use_folders(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        folders = dict((yield account.folders()))
        self.assertIn("INBOX", folders)
        for name, attribute in SPECIAL_USE.items():
            self.assertIn(name, folders)
            self.assertIn(attribute, folders[name], f"{name} lacks {attribute}")

    @defer.inlineCallbacks
    def test_special_use_folders_can_be_selected(self):
        store = yield self._kit_store()
        for name in SPECIAL_USE:
            folder = yield self._kit_folder(store, name)
            self.assertEqual(folder.name, name)

    @defer.inlineCallbacks
    def test_folder_of_a_missing_name_fails_with_key_error(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield self.assertFailure(defer.maybeDeferred(account.folder, "No such folder"), KeyError)

    @defer.inlineCallbacks
    def test_create_adds_an_empty_selectable_folder(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Projects")
        self.assertIn("Projects", dict((yield account.folders())))
        folder = yield account.folder("Projects")
        self.assertEqual((yield folder.sync()), [])

    @defer.inlineCallbacks
    def test_create_of_an_existing_folder_fails_with_value_error(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Projects")
        yield self.assertFailure(defer.maybeDeferred(account.create, "Projects"), ValueError)

    @defer.inlineCallbacks
    def test_create_makes_the_missing_parents(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        child = f"Lists{account.separator}twisted"
        yield account.create(child)
        folders = dict((yield account.folders()))
        self.assertIn(child, folders)
        self.assertIn("Lists", folders)
        self.assertIn("\\HasChildren", folders["Lists"])

    @defer.inlineCallbacks
    def test_create_with_special_use_gives_the_attribute(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Old mail", special_use="\\Archive")
        self.assertIn("\\Archive", dict((yield account.folders()))["Old mail"])

    @defer.inlineCallbacks
    def test_delete_removes_the_folder(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Projects")
        yield account.delete("Projects")
        self.assertNotIn("Projects", dict((yield account.folders())))
        yield self.assertFailure(defer.maybeDeferred(account.folder, "Projects"), KeyError)

    @defer.inlineCallbacks
    def test_folder_created_again_after_delete_never_gives_an_old_uid_again(self):
        # RFC 3501 2.3.1.1: name, UIDVALIDITY and UID name one message forever.
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Projects")
        folder = yield account.folder("Projects")
        old = (folder.uidvalidity, (yield folder.append(BytesSource(message(1)))))
        yield account.delete("Projects")
        yield account.create("Projects")
        again = yield account.folder("Projects")
        new = (again.uidvalidity, (yield again.append(BytesSource(message(2)))))
        self.assertNotEqual(new, old)

    @defer.inlineCallbacks
    def test_delete_of_inbox_fails_with_value_error(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield self.assertFailure(defer.maybeDeferred(account.delete, "INBOX"), ValueError)
        self.assertIn("INBOX", dict((yield account.folders())))

    @defer.inlineCallbacks
    def test_delete_of_a_missing_folder_fails_with_key_error(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield self.assertFailure(defer.maybeDeferred(account.delete, "No such folder"), KeyError)

    @defer.inlineCallbacks
    def test_rename_moves_the_folder_with_its_messages(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Projects")
        folder = yield account.folder("Projects")
        yield folder.append(BytesSource(message(1)))
        yield account.rename("Projects", "Done")
        folders = dict((yield account.folders()))
        self.assertNotIn("Projects", folders)
        self.assertIn("Done", folders)
        yield self.assertFailure(defer.maybeDeferred(account.folder, "Projects"), KeyError)
        done = yield account.folder("Done")
        self.assertEqual((yield self._kit_contents(done)), [message(1)])

    @defer.inlineCallbacks
    def test_rename_of_inbox_moves_its_messages_and_inbox_stays(self):
        # RFC 3501 6.3.5
        store = yield self._kit_store()
        yield self._kit_deliver(store, [1, 2])
        account = yield self._kit_account(store)
        yield account.rename("INBOX", "Old inbox")
        self.assertIn("INBOX", dict((yield account.folders())))
        moved = yield account.folder("Old inbox")
        self.assertEqual((yield self._kit_contents(moved)), [message(1), message(2)])
        inbox = yield account.folder("INBOX")
        self.assertEqual((yield inbox.sync()), [])

    @defer.inlineCallbacks
    def test_hostile_mailbox_names_never_reach_another_account(self):
        # Issue 17: a mailbox name is data from the network. A store may
        # refuse one (KeyError: no such mailbox; ValueError: can't make it)
        # or hold it inside the account, but never open, change, move or
        # delete anything of another user with it.
        store = yield self._kit_store()
        victim = "bob@example.test"
        yield store.deliver(victim, BytesSource(message(99)), None)
        account = yield self._kit_account(store)
        sep = account.separator
        names = set()
        for name in HOSTILE_NAMES:
            names.update({name, name.replace("/", sep)})
        allowed = (KeyError, ValueError)
        for name in sorted(names):
            for attempt in ("folder", "create", "folder", "delete", "rename"):
                try:
                    if attempt == "rename":
                        yield account.rename(name, "Stolen")
                    else:
                        result = yield getattr(account, attempt)(name)
                        if attempt == "folder":
                            yield result.append(BytesSource(message(1)))
                            self.assertNotIn(message(99), (yield self._kit_contents(result)), name)
                except allowed:
                    pass
            folders = dict((yield account.folders()))
            if "Stolen" in folders:
                stolen = yield account.folder("Stolen")
                self.assertNotIn(message(99), (yield self._kit_contents(stolen)), name)
                yield account.delete("Stolen")
        theirs = yield store.account(victim)
        inbox = yield theirs.folder("INBOX")
        self.assertEqual((yield self._kit_contents(inbox)), [message(99)])

    @defer.inlineCallbacks
    def test_subscribe_adds_to_the_subscriptions(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Projects")
        yield account.subscribe("Projects")
        self.assertIn("Projects", (yield account.subscriptions()))

    @defer.inlineCallbacks
    def test_unsubscribe_removes_from_the_subscriptions(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Projects")
        yield account.subscribe("Projects")
        yield account.unsubscribe("Projects")
        self.assertNotIn("Projects", (yield account.subscriptions()))

    @defer.inlineCallbacks
    def test_subscriptions_survive_reopen(self):
        store = yield self._kit_store()
        account = yield self._kit_account(store)
        yield account.create("Projects")
        yield account.subscribe("Projects")
        store = yield self._kit_reopen(store)
        account = yield self._kit_account(store)
        self.assertIn("Projects", (yield account.subscriptions()))

    # --- IMailFolder: UIDs -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_uids_ascend_strictly_in_arrival_order(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        yield self._kit_deliver(store, [1, 2])
        yield folder.append(BytesSource(message(3)))
        yield self._kit_deliver(store, [4])
        messages = yield folder.sync()
        uids = [m.uid for m in messages]
        self.assertEqual(uids, sorted(set(uids)))
        self.assertEqual((yield self._kit_contents(folder)), [message(n) for n in (1, 2, 3, 4)])

    @defer.inlineCallbacks
    def test_concurrent_appends_get_distinct_ascending_uids(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store, "Sent")
        uids = yield defer.gatherResults([folder.append(BytesSource(message(n))) for n in range(8)])
        self.assertEqual(len(set(uids)), 8)
        self.assertEqual([m.uid for m in (yield folder.sync())], sorted(uids))

    @defer.inlineCallbacks
    def test_uidnext_is_the_uid_the_next_message_gets(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        yield self._kit_deliver(store, [1])
        yield folder.sync()
        expected = folder.uidnext
        uid = yield folder.append(BytesSource(message(2)))
        self.assertEqual(uid, expected)
        self.assertGreater(folder.uidnext, uid)

    @defer.inlineCallbacks
    def test_uids_uidvalidity_and_uidnext_survive_reopen(self):
        store = yield self._kit_store()
        yield self._kit_deliver(store, [1, 2, 3])
        folder = yield self._kit_folder(store)
        before = [(m.uid, m.key) for m in (yield folder.sync())]
        validity, uidnext = folder.uidvalidity, folder.uidnext
        store = yield self._kit_reopen(store)
        again = yield self._kit_folder(store)
        self.assertEqual([(m.uid, m.key) for m in (yield again.sync())], before)
        self.assertEqual((again.uidvalidity, again.uidnext), (validity, uidnext))

    @defer.inlineCallbacks
    def test_uid_of_an_expunged_last_message_is_not_given_again_after_reopen(self):
        store = yield self._kit_store()
        yield self._kit_deliver(store, [1, 2])
        folder = yield self._kit_folder(store)
        last = (yield folder.sync())[-1].uid
        yield folder.store_flags([last], ["\\Deleted"], "+")
        yield folder.expunge()
        store = yield self._kit_reopen(store)
        yield self._kit_deliver(store, [3])
        again = yield self._kit_folder(store)
        self.assertGreater((yield again.sync())[-1].uid, last)

    # --- flags ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _kit_flagged_inbox(self, count=2):
        store = yield self._kit_store()
        yield self._kit_deliver(store, range(1, count + 1))
        folder = yield self._kit_folder(store)
        uids = [m.uid for m in (yield folder.sync())]
        return store, folder, uids

    @defer.inlineCallbacks
    def test_flags_and_keywords_round_trip(self):
        _, folder, [uid, other] = yield self._kit_flagged_inbox()
        answer = yield folder.store_flags([uid], ["\\Seen", "\\Flagged", "$Label1", "Project-X"], "+")
        wanted = frozenset({"\\Seen", "\\Flagged", "$Label1", "Project-X"})
        self.assertEqual(answer, {uid: wanted})
        self.assertEqual(self._kit_flags(folder), {uid: wanted, other: frozenset()})

    @defer.inlineCallbacks
    def test_flags_and_keywords_survive_reopen(self):
        store, folder, [uid, other] = yield self._kit_flagged_inbox()
        yield folder.store_flags([uid], ["\\Answered", "\\Draft", "$Forwarded"], "+")
        yield folder.store_flags([other], ["\\Deleted"], "+")
        store = yield self._kit_reopen(store)
        again = yield self._kit_folder(store)
        yield again.sync()
        self.assertEqual(
            self._kit_flags(again),
            {uid: frozenset({"\\Answered", "\\Draft", "$Forwarded"}), other: frozenset({"\\Deleted"})},
        )

    @defer.inlineCallbacks
    def test_store_flags_plus_adds_to_the_flags(self):
        _, folder, [uid, _] = yield self._kit_flagged_inbox()
        yield folder.store_flags([uid], ["\\Seen"], "+")
        answer = yield folder.store_flags([uid], ["\\Flagged", "$Label1"], "+")
        self.assertEqual(answer, {uid: frozenset({"\\Seen", "\\Flagged", "$Label1"})})

    @defer.inlineCallbacks
    def test_store_flags_minus_removes_from_the_flags(self):
        _, folder, [uid, _] = yield self._kit_flagged_inbox()
        yield folder.store_flags([uid], ["\\Seen", "\\Flagged", "$Label1"], "+")
        answer = yield folder.store_flags([uid], ["\\Flagged", "$Label1", "\\Draft"], "-")
        self.assertEqual(answer, {uid: frozenset({"\\Seen"})})
        self.assertEqual(self._kit_flags(folder)[uid], frozenset({"\\Seen"}))

    @defer.inlineCallbacks
    def test_store_flags_equals_replaces_the_flags(self):
        _, folder, [uid, _] = yield self._kit_flagged_inbox()
        yield folder.store_flags([uid], ["\\Seen", "$Label1"], "+")
        answer = yield folder.store_flags([uid], ["\\Answered", "$Label2"], "=")
        self.assertEqual(answer, {uid: frozenset({"\\Answered", "$Label2"})})
        yield folder.store_flags([uid], [], "=")
        self.assertEqual(self._kit_flags(folder)[uid], frozenset())

    @defer.inlineCallbacks
    def test_store_flags_answers_only_for_messages_that_exist(self):
        _, folder, [uid, _] = yield self._kit_flagged_inbox()
        answer = yield folder.store_flags([uid, folder.uidnext + 10], ["\\Seen"], "+")
        self.assertEqual(answer, {uid: frozenset({"\\Seen"})})

    @defer.inlineCallbacks
    def test_recent_is_never_a_stored_flag(self):
        _, folder, [uid, _] = yield self._kit_flagged_inbox()
        answer = yield folder.store_flags([uid], ["\\Seen", "\\Recent"], "+")
        self.assertEqual(answer, {uid: frozenset({"\\Seen"})})
        self.assertNotIn("\\Recent", self._kit_flags(folder)[uid])

    # --- append ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_append_keeps_flags_and_internaldate(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store, "Drafts")
        uid = yield folder.append(BytesSource(message(1)), ["\\Draft", "$Label1"], INTERNALDATE)
        [info] = folder.messages()
        self.assertEqual(info.uid, uid)
        self.assertEqual(info.flags, frozenset({"\\Draft", "$Label1"}))
        self.assertEqual(int(info.internaldate), INTERNALDATE)
        self.assertEqual(info.size, crlf_size(message(1)))

    @defer.inlineCallbacks
    def test_appended_message_is_read_back_byte_exact(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store, "Sent")
        uid = yield folder.append(BytesSource(message(1)))
        self.assertEqual((yield self._kit_read(folder, uid)), message(1))

    @defer.inlineCallbacks
    def test_appended_message_survives_reopen_with_flags_and_internaldate(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store, "Sent")
        uid = yield folder.append(BytesSource(message(1)), ["\\Seen"], INTERNALDATE)
        store = yield self._kit_reopen(store)
        again = yield self._kit_folder(store, "Sent")
        [info] = yield again.sync()
        self.assertEqual((info.uid, info.flags, int(info.internaldate)), (uid, frozenset({"\\Seen"}), INTERNALDATE))
        self.assertEqual((yield self._kit_read(again, uid)), message(1))

    @defer.inlineCallbacks
    def test_open_of_an_unknown_uid_fails_with_key_error(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        yield self.assertFailure(defer.maybeDeferred(folder.open, folder.uidnext + 10), KeyError)

    @defer.inlineCallbacks
    def test_open_many_reads_each_message_in_order_and_none_for_a_gone_one(self):
        store, folder, uids = yield self._kit_flagged_inbox(2)
        if not IBatchOpen.providedBy(folder):
            raise SkipTest(f"{type(folder).__name__} does not provide IBatchOpen (optional)")
        files = yield folder.open_many([uids[1], folder.uidnext + 10, uids[0]])
        self.assertEqual(len(files), 3)
        self.assertIsNone(files[1])
        contents = []
        for f in (files[0], files[2]):
            contents.append(f.read())
            f.close()
        self.assertEqual(contents, [message(2), message(1)])

    # --- copy, move, expunge ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_copy_maps_each_uid_to_the_next_uids_of_the_target(self):
        store, inbox, uids = yield self._kit_flagged_inbox(3)
        archive = yield self._kit_folder(store, "Archive")
        yield archive.append(BytesSource(message(9)))
        first = archive.uidnext
        mapping = yield inbox.copy_to(uids[1:], archive)
        self.assertEqual(mapping, [(uids[1], first), (uids[2], first + 1)])
        self.assertGreater(archive.uidnext, first + 1)

    @defer.inlineCallbacks
    def test_copy_keeps_bytes_and_flags_and_leaves_the_source(self):
        store, inbox, uids = yield self._kit_flagged_inbox(2)
        yield inbox.store_flags([uids[0]], ["\\Seen", "$Label1"], "+")
        archive = yield self._kit_folder(store, "Archive")
        mapping = yield inbox.copy_to(uids, archive)
        self.assertEqual((yield self._kit_contents(archive)), [message(1), message(2)])
        flags = self._kit_flags(archive)
        self.assertEqual(flags[mapping[0][1]], frozenset({"\\Seen", "$Label1"}))
        self.assertEqual(flags[mapping[1][1]], frozenset())
        self.assertEqual([m.uid for m in (yield inbox.sync())], uids)

    @defer.inlineCallbacks
    def test_move_maps_each_uid_and_removes_the_sources(self):
        store, inbox, uids = yield self._kit_flagged_inbox(3)
        archive = yield self._kit_folder(store, "Archive")
        first = archive.uidnext
        mapping = yield inbox.move_to(uids[:2], archive)
        self.assertEqual(mapping, [(uids[0], first), (uids[1], first + 1)])
        self.assertEqual([m.uid for m in (yield inbox.sync())], uids[2:])
        self.assertEqual((yield self._kit_contents(archive)), [message(1), message(2)])

    @defer.inlineCallbacks
    def test_copy_within_one_folder_gives_the_copies_the_next_uids(self):
        _, folder, uids = yield self._kit_flagged_inbox(2)
        first = folder.uidnext
        mapping = yield folder.copy_to(uids, folder)
        self.assertEqual(mapping, [(uids[0], first), (uids[1], first + 1)])
        self.assertEqual((yield self._kit_contents(folder)), [message(1), message(2)] * 2)

    @defer.inlineCallbacks
    def test_move_within_one_folder_gives_the_message_a_new_uid(self):
        _, folder, uids = yield self._kit_flagged_inbox(2)
        first = folder.uidnext
        mapping = yield folder.move_to([uids[0]], folder)
        self.assertEqual(mapping, [(uids[0], first)])
        self.assertEqual([m.uid for m in (yield folder.sync())], [uids[1], first])

    @defer.inlineCallbacks
    def test_expunge_removes_only_deleted_messages(self):
        _, folder, uids = yield self._kit_flagged_inbox(3)
        yield folder.store_flags([uids[0], uids[2]], ["\\Deleted"], "+")
        yield folder.store_flags([uids[1]], ["\\Seen"], "+")
        removed = yield folder.expunge()
        self.assertEqual(list(removed), [uids[0], uids[2]])
        self.assertEqual([m.uid for m in (yield folder.sync())], [uids[1]])

    @defer.inlineCallbacks
    def test_uid_expunge_removes_only_the_given_deleted_messages(self):
        _, folder, uids = yield self._kit_flagged_inbox(3)
        yield folder.store_flags(uids[:2], ["\\Deleted"], "+")
        removed = yield folder.expunge([uids[1], uids[2]])
        self.assertEqual(list(removed), [uids[1]])
        self.assertEqual([m.uid for m in (yield folder.sync())], [uids[0], uids[2]])

    @defer.inlineCallbacks
    def test_expunged_messages_stay_gone_after_reopen(self):
        store, folder, uids = yield self._kit_flagged_inbox(2)
        yield folder.store_flags([uids[0]], ["\\Deleted"], "+")
        yield folder.expunge()
        store = yield self._kit_reopen(store)
        again = yield self._kit_folder(store)
        self.assertEqual([m.uid for m in (yield again.sync())], [uids[1]])

    # --- \Recent -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_claim_recent_gives_each_uid_to_exactly_one_claimer(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        yield self._kit_deliver(store, [1, 2, 3])
        uids = [m.uid for m in (yield folder.sync())]
        other = yield self._kit_folder(store)
        first = set(folder.claim_recent(uids[:2]))
        second = set(other.claim_recent(uids))
        self.assertEqual(first, set(uids[:2]))
        self.assertEqual(second, {uids[2]})
        self.assertEqual(set(folder.claim_recent(uids)), set())

    @defer.inlineCallbacks
    def test_claim_recent_gives_later_arrivals_to_the_next_claimer(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        yield self._kit_deliver(store, [1])
        old = [m.uid for m in (yield folder.sync())]
        folder.claim_recent(old)
        yield self._kit_deliver(store, [2])
        uids = [m.uid for m in (yield folder.sync())]
        self.assertEqual(set(folder.claim_recent(uids)), set(uids) - set(old))

    @defer.inlineCallbacks
    def test_claimed_uids_are_not_recent_again_after_reopen(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        yield self._kit_deliver(store, [1, 2])
        uids = [m.uid for m in (yield folder.sync())]
        self.assertEqual(set(folder.claim_recent(uids)), set(uids))
        store = yield self._kit_reopen(store)
        again = yield self._kit_folder(store)
        yield again.sync()
        self.assertEqual(set(again.claim_recent(uids)), set())

    @defer.inlineCallbacks
    def test_recent_count_counts_the_unclaimed_messages_without_claiming_them(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        if not hasattr(folder, "recent_count"):
            raise SkipTest(f"{type(folder).__name__} has no recent_count (optional: STATUS RECENT answers 0)")
        yield self._kit_deliver(store, [1, 2, 3])
        uids = [m.uid for m in (yield folder.sync())]
        self.assertEqual(folder.recent_count(), 3)
        folder.claim_recent(uids[:1])
        self.assertEqual(folder.recent_count(), 2)
        self.assertEqual(set(folder.claim_recent(uids)), set(uids[1:]))
        self.assertEqual(folder.recent_count(), 0)

    # --- change notification -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_subscriber_hears_of_a_delivery(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        events, _ = self._kit_listen(folder)
        expected = folder.uidnext
        yield self._kit_deliver(store, [1])
        yield self._kit_until(lambda: self._kit_heard(events, "exists", [expected]), "an exists event for a delivery")

    @defer.inlineCallbacks
    def test_subscriber_hears_of_an_append_through_another_handle_with_its_origin(self):
        store = yield self._kit_store()
        folder = yield self._kit_folder(store)
        events, _ = self._kit_listen(folder)
        other = yield self._kit_folder(store)
        session = object()
        uid = yield other.append(BytesSource(message(1)), origin=session)
        yield self._kit_until(lambda: self._kit_heard(events, "exists", [uid], session), "an exists event")

    @defer.inlineCallbacks
    def test_subscriber_hears_of_flag_changes_with_their_origin(self):
        store, folder, uids = yield self._kit_flagged_inbox()
        events, _ = self._kit_listen(folder)
        other = yield self._kit_folder(store)
        session = object()
        yield other.store_flags(uids, ["\\Seen"], "+", origin=session)
        yield self._kit_until(lambda: self._kit_heard(events, "flags", uids, session), "a flags event")

    @defer.inlineCallbacks
    def test_subscriber_hears_of_expunges_with_their_origin(self):
        store, folder, uids = yield self._kit_flagged_inbox()
        events, _ = self._kit_listen(folder)
        other = yield self._kit_folder(store)
        session = object()
        yield other.store_flags([uids[0]], ["\\Deleted"], "+", origin=session)
        yield other.expunge(origin=session)
        yield self._kit_until(lambda: self._kit_heard(events, "expunge", [uids[0]], session), "an expunge event")

    @defer.inlineCallbacks
    def test_subscribers_of_both_folders_hear_of_a_move(self):
        store, inbox, uids = yield self._kit_flagged_inbox()
        archive = yield self._kit_folder(store, "Archive")
        left, _ = self._kit_listen(inbox)
        arrived, _ = self._kit_listen(archive)
        session = object()
        mapping = yield (yield self._kit_folder(store)).move_to([uids[0]], archive, origin=session)
        yield self._kit_until(lambda: self._kit_heard(left, "expunge", [uids[0]], session), "an expunge event")
        yield self._kit_until(lambda: self._kit_heard(arrived, "exists", [mapping[0][1]], session), "an exists event")

    @defer.inlineCallbacks
    def test_subscriber_hears_of_a_removal_through_the_pop3_inbox(self):
        store, folder, uids = yield self._kit_flagged_inbox()
        events, _ = self._kit_listen(folder)
        inbox = yield store.inbox(self.user)
        first = (yield inbox.messages())[0]
        yield inbox.remove([first.key])
        yield self._kit_until(lambda: self._kit_heard(events, "expunge", [uids[0]]), "an expunge event")

    @defer.inlineCallbacks
    def test_subscriber_hears_nothing_after_unsubscribing(self):
        store, folder, uids = yield self._kit_flagged_inbox()
        events, unsubscribe = self._kit_listen(folder)
        unsubscribe()
        yield self._kit_deliver(store, [3])
        yield folder.store_flags(uids, ["\\Deleted"], "+")
        yield folder.expunge()
        yield folder.sync()
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(events, [])

    # --- the metadata cache ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_cached_value_round_trips(self):
        _, folder, [uid, other] = yield self._kit_flagged_inbox()
        value = {"subject": "message 1", "parts": [1, [2, "text/plain"]]}
        folder.cache(uid, "envelope", value)
        self.assertEqual(folder.cached(uid, "envelope"), value)
        self.assertIsNone(folder.cached(uid, "bodystructure"))
        self.assertIsNone(folder.cached(other, "envelope"))

    @defer.inlineCallbacks
    def test_cached_value_survives_reopen(self):
        if not self.cache_persists:
            raise SkipTest("cache_persists = False: cached values are kept in memory only")
        store, folder, [uid, _] = yield self._kit_flagged_inbox()
        value = ["an", {"envelope": 1}]
        folder.cache(uid, "envelope", value)
        store = yield self._kit_reopen(store)
        again = yield self._kit_folder(store)
        yield again.sync()
        self.assertEqual(again.cached(uid, "envelope"), value)

    # --- mod-sequences (IModSeqFolder, RFC 7162), when the folder keeps them ----------------

    @defer.inlineCallbacks
    def _kit_modseq_inbox(self, count=3):
        store, folder, uids = yield self._kit_flagged_inbox(count)
        if not IModSeqFolder.providedBy(folder):
            raise SkipTest(f"{type(folder).__name__} does not provide IModSeqFolder")
        self.assertTrue(verifyObject(IModSeqFolder, folder))
        return store, folder, uids

    @staticmethod
    def _kit_modseqs(folder):
        return {m.uid: m.modseq for m in folder.messages()}

    @defer.inlineCallbacks
    def test_every_message_has_a_modseq_up_to_highestmodseq(self):
        _, folder, uids = yield self._kit_modseq_inbox()
        top = folder.highestmodseq
        self.assertGreaterEqual(top, 1)
        for uid, value in self._kit_modseqs(folder).items():
            self.assertTrue(1 <= value <= top, (uid, value, top))

    @defer.inlineCallbacks
    def test_a_flag_change_gives_the_changed_messages_a_new_highest_modseq(self):
        _, folder, [a, b, c] = yield self._kit_modseq_inbox()
        before, top = self._kit_modseqs(folder), folder.highestmodseq
        yield folder.store_flags([a, b], ["\\Seen"], "+")
        after = self._kit_modseqs(folder)
        self.assertGreater(folder.highestmodseq, top)
        self.assertGreater(after[a], top)
        self.assertGreater(after[b], top)
        self.assertEqual(after[c], before[c])
        self.assertLessEqual(max(after.values()), folder.highestmodseq)
        # A store that changes nothing gives no new modseq.
        top = folder.highestmodseq
        yield folder.store_flags([a], ["\\Seen"], "+")
        self.assertEqual(self._kit_modseqs(folder), after)
        self.assertEqual(folder.highestmodseq, top)

    @defer.inlineCallbacks
    def test_new_mail_and_expunges_raise_highestmodseq(self):
        store, folder, [a, b, c] = yield self._kit_modseq_inbox()
        top = folder.highestmodseq
        uid = yield folder.append(BytesSource(message(9)))
        self.assertGreater(folder.highestmodseq, top)
        self.assertGreater(self._kit_modseqs(folder)[uid], top)
        yield self._kit_deliver(store, [10])
        yield folder.sync()
        self.assertGreater(folder.highestmodseq, self._kit_modseqs(folder)[uid])
        before_expunge = folder.highestmodseq
        yield folder.store_flags([b], ["\\Deleted"], "+")
        flagged = folder.highestmodseq
        self.assertEqual(folder.vanished(flagged), [])
        yield folder.expunge()
        self.assertGreater(folder.highestmodseq, flagged)
        # RFC 7162 3.2.5: the expunged UID, with the modseq it went at.
        self.assertEqual(folder.vanished(before_expunge), [b])
        self.assertEqual(folder.vanished(folder.highestmodseq), [])

    @defer.inlineCallbacks
    def test_store_unchanged_since_leaves_messages_changed_since_alone(self):
        _, folder, [a, b, c] = yield self._kit_modseq_inbox()
        seen = folder.highestmodseq
        yield folder.store_flags([b], ["$Label1"], "+")
        changed, modified = yield folder.store_flags_unchanged_since([a, b, c], ["\\Flagged"], "+", seen)
        self.assertEqual(modified, [b])
        self.assertEqual(set(changed), {a, c})
        flags = self._kit_flags(folder)
        self.assertIn("\\Flagged", flags[a])
        self.assertNotIn("\\Flagged", flags[b])
        # Modseq 0 fails for every message (RFC 7162 3.1.3).
        changed, modified = yield folder.store_flags_unchanged_since([a, c], ["\\Draft"], "+", 0)
        self.assertEqual((changed, modified), ({}, [a, c]))

    @defer.inlineCallbacks
    def test_modseqs_and_expunges_survive_reopen_and_never_go_back(self):
        store, folder, [a, b, c] = yield self._kit_modseq_inbox()
        yield folder.store_flags([a], ["\\Answered"], "+")
        start = folder.highestmodseq
        yield folder.store_flags([c], ["\\Deleted"], "+")
        yield folder.expunge()
        mods, top = self._kit_modseqs(folder), folder.highestmodseq
        store = yield self._kit_reopen(store)
        again = yield self._kit_folder(store)
        yield again.sync()
        self.assertEqual(self._kit_modseqs(again), mods)
        self.assertEqual(again.highestmodseq, top)
        self.assertEqual(again.vanished(start), [c])
        yield again.store_flags([b], ["\\Seen"], "+")
        self.assertGreater(self._kit_modseqs(again)[b], top)
