"""
A user's account as a migration copies it, read through the store
interfaces (IMailAccount, IMailFolder, IBatchOpen, IModSeqFolder), so any
store can be a source: the folders with their UIDVALIDITY, UIDNEXT and
HIGHESTMODSEQ, each message's UID, flags, keywords and internal date,
the subscriptions and the special-use attributes. Bodies are not held:
L{AccountSnapshot.bodies} reads a batch at a time while the target writes.

Folder names are kept as their levels (('Archive', '2025')), since the
stores separate levels differently ('.' in Maildir++, '/' in sql and mbox).
"""

from twisted.internet import defer

from mailplat.interfaces import IBatchOpen, IModSeqFolder
from mailplat.store.specialuse import SPECIAL_USE_ATTRIBUTES

# Messages read per trip to the source (one IBatchOpen call).
BATCH = 200


class MigrationError(ValueError):
    """
    A user that can't be migrated; the text says why, for the operator. A
    ValueError, so that the sql store's pool passes it through unchanged.
    """


class NoSuchAccount(MigrationError):
    """The source store has no mail of this user."""


class AlreadyMigrated(MigrationError):
    """The target already holds mail of this user: refused, never merged."""


class MessageState:
    """One message as the target must recreate it."""

    __slots__ = ("uid", "flags", "internaldate", "modseq")

    def __init__(self, uid, flags, internaldate, modseq):
        self.uid = uid
        self.flags = flags  # frozenset: system flags and keywords, never \Recent
        self.internaldate = internaldate
        self.modseq = modseq


class FolderSnapshot:
    """One folder: its UID state and its messages, by UID."""

    def __init__(self, levels, special_use, uidvalidity, uidnext, highestmodseq, messages):
        self.levels = levels
        self.special_use = special_use  # '\\Sent', or None
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.highestmodseq = highestmodseq
        self.messages = messages  # [MessageState], ascending UID

    def __repr__(self):
        return f"<FolderSnapshot {'/'.join(self.levels)} {len(self.messages)} messages>"

    @property
    def keywords(self):
        return sorted({f for m in self.messages for f in m.flags if not f.startswith("\\")})


class AccountSnapshot:
    """A user's folders and subscriptions; L{bodies} reads message text from the source."""

    def __init__(self, address, folders, subscriptions, opened):
        self.address = address
        self.folders = folders  # [FolderSnapshot], INBOX first
        self.subscriptions = subscriptions  # [levels]
        self._opened = opened  # levels -> the source's IMailFolder

    @property
    def message_count(self):
        return sum(len(f.messages) for f in self.folders)

    def bodies(self, levels, uids):
        """Deferred {uid: bytes} of `uids` in the folder (messages gone meanwhile left out)."""
        folder = self._opened[levels]
        if IBatchOpen.providedBy(folder):
            d = folder.open_many(list(uids))
            return d.addCallback(lambda files: {uid: _read(f) for uid, f in zip(uids, files) if f is not None})
        return _one_by_one(folder, uids)


def _read(f):
    try:
        return f.read()
    finally:
        f.close()


@defer.inlineCallbacks
def _one_by_one(folder, uids):
    out = {}
    for uid in uids:
        try:
            f = yield folder.open(uid)
        except KeyError:
            continue
        out[uid] = _read(f)
    return out


def batches(uids, size=BATCH):
    uids = list(uids)
    for start in range(0, len(uids), size):
        yield uids[start : start + size]


def levels_of(name, separator):
    return tuple(name.split(separator)) if separator else (name,)


@defer.inlineCallbacks
def read_account(account):
    """
    Deferred L{AccountSnapshot} of an L{IMailAccount}: every selectable
    folder synced once, as the source's own server would see it.
    """
    separator = account.separator
    listing = yield account.folders()
    subscribed = yield account.subscriptions()
    folders, opened = [], {}
    for name, attributes in listing:
        lowered = {a.lower() for a in attributes}
        if "\\noselect" in lowered or "\\nonexistent" in lowered:
            continue
        folder = yield account.folder(name)
        infos = yield folder.sync()
        levels = levels_of(name, separator)
        special = next((SPECIAL_USE_ATTRIBUTES[a] for a in sorted(lowered) if a in SPECIAL_USE_ATTRIBUTES), None)
        highest = folder.highestmodseq if IModSeqFolder.providedBy(folder) else 1
        messages = [
            MessageState(i.uid, frozenset(i.flags), i.internaldate, getattr(i, "modseq", None) or 1)
            for i in sorted(infos, key=lambda i: i.uid)
        ]
        folders.append(FolderSnapshot(levels, special, folder.uidvalidity, folder.uidnext, highest, messages))
        opened[levels] = folder
    subscriptions = [levels_of(n, separator) for n in subscribed]
    return AccountSnapshot(account.address, folders, subscriptions, opened)
