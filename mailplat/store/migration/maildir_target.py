"""
Writing an L{AccountSnapshot} as a maildir the way mailplat's maildir
store and Dovecot keep one (mailplat/store/maildir): Maildir++ folders,
each message a file in cur/ with its flags and keyword letters in the
name and its internal date as the mtime; the UIDs in `dovecot-uidlist`
(header `3 V<uidvalidity> N<uidnext>`, a `<uid> :<key>` line a message);
keywords in `dovecot-keywords`; subscriptions and special use in the
root. The mod-sequence ceiling (`mailplat-modseq`) of each folder is set
to the source's HIGHESTMODSEQ, so a CONDSTORE client never sees it go
down (the maildir store then numbers every message above it).

A maildir holding any message is refused (L{AlreadyMigrated}); an empty
one (made at a first login) gives way to the source's folders. What is
written goes straight to files: a failure half-way leaves a partial
maildir, which a second run refuses — remove it and run again.
"""

import os
import shutil

from twisted.internet import reactor, threads

from mailplat.store import boundary
from mailplat.store.maildir import layout
from mailplat.store.maildir.account import make_folder, write_special_use, write_subscriptions
from mailplat.store.maildir.deliver import ensure_maildir, fsync_dir, write_message
from mailplat.store.maildir.keywords import Keywords
from mailplat.store.maildir.uidlist import UidList, next_uidvalidity
from mailplat.store.migration.snapshot import AlreadyMigrated, MigrationError, batches
from mailplat.store.modseq import CEILING
from mailplat.store.source import BytesSource

# What mailplat's maildir store writes beside the mail of a folder, dropped
# from an empty target folder so that nothing older than the migration is read.
STORE_FILES = ("mailplat-index.json", "mailplat-cache.jsonl", "dovecot-uidlist", "dovecot-keywords")


def target_name(levels):
    """The Maildir++ name of a folder; @raise MigrationError: one a maildir can't hold."""
    shown = "/".join(levels)
    if any(layout.SEPARATOR in level for level in levels):
        raise MigrationError(f"folder {shown!r} has a '.' in a level, which is the hierarchy separator of a maildir")
    name = layout.canonical(layout.SEPARATOR.join(levels))
    try:
        layout.check_spelling(name)
    except boundary.RefusedName as e:
        raise MigrationError(f"folder {shown!r} can't be a maildir folder ({e.args[0] if e.args else e})")
    return name


def folder_dirs(root):
    """The directories of the account's folders: the root (INBOX) and every `.Name`."""
    out = [root]
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return []
    for entry in sorted(entries):
        path = os.path.join(root, entry)
        if layout.name_from_entry(entry) and os.path.isdir(path) and not os.path.islink(path):
            out.append(path)
    return out


def message_count(root):
    """Message files in the account's new/ and cur/ directories; None when there is no maildir."""
    if not os.path.isdir(root):
        return None
    count = 0
    for path in folder_dirs(root):
        for sub in ("new", "cur"):
            try:
                count += sum(1 for e in os.listdir(os.path.join(path, sub)) if not e.startswith("."))
            except FileNotFoundError:
                pass
    return count


def write(root, snapshot):
    """Deferred firing with a list of warnings when the maildir is written (in a thread)."""

    def fetch(levels, uids):
        return threads.blockingCallFromThread(reactor, snapshot.bodies, levels, uids)

    return threads.deferToThread(_write, root, snapshot, fetch)


def _write(root, snapshot, fetch):
    address = snapshot.address
    planned = [(target_name(f.levels), f) for f in snapshot.folders]
    count = message_count(root)
    if count:
        raise AlreadyMigrated(f"{address}: the maildir store already holds {count} messages of this user; nothing changed")
    if count == 0:
        _clear(root)
    ensure_maildir(root)
    warnings, special = [], {}
    for name, folder in planned:
        warnings.extend(_write_folder(root, name, folder, fetch))
        if folder.special_use:
            special[name] = folder.special_use
    subscribed = []
    for levels in snapshot.subscriptions:
        try:
            subscribed.append(target_name(levels))
        except MigrationError as e:
            warnings.append(f"subscription not kept: {e}")
    write_subscriptions(root, subscribed)
    # Its presence also says the account is set up: no special-use folders are added.
    write_special_use(root, special)
    # A folder made later must never get an UIDVALIDITY a migrated one has.
    next_uidvalidity(root, floor=max([f.uidvalidity for f in snapshot.folders] + [0]))
    return warnings


def _clear(root):
    """An empty account: its folders and the store's files go, the source's come."""
    for path in folder_dirs(root):
        if path == root:
            for name in STORE_FILES + (CEILING,):
                try:
                    os.unlink(os.path.join(root, name))
                except FileNotFoundError:
                    pass
        else:
            shutil.rmtree(path)
    fsync_dir(root)


def _write_folder(root, name, folder, fetch):
    warnings = []
    path = layout.folder_path(root, name)
    if not layout.is_inbox(name):
        # Parents the source does not have stay missing: LIST shows them \Noselect, as the source did.
        make_folder(root, name)
    ensure_maildir(path)
    uidlist = UidList(path)
    with uidlist.locked():
        keywords = Keywords(path)
        keywords.refresh()
        overflow = keywords.add(keywords.missing(folder.keywords))
        if overflow:
            warnings.append(f"{name}: only 26 keywords fit in maildir file names; not kept: {' '.join(overflow)}")
        states = {m.uid: m for m in folder.messages}
        entries = []
        for batch in batches(sorted(states)):
            found = fetch(folder.levels, batch)
            for uid in batch:
                data = found.get(uid)
                if data is None:
                    warnings.append(f"{name}: UID {uid} vanished from the source during the migration")
                    continue
                m = states[uid]
                letters, _ = keywords.info_for(m.flags)
                key = write_message(path, BytesSource(data), letters, cur=True, mtime=m.internaldate)
                entries.append((uid, key))
        uidlist.create(folder.uidvalidity, entries, nextuid=folder.uidnext)
    _raise_ceiling(path, folder.highestmodseq)
    return warnings


def _raise_ceiling(path, highestmodseq):
    """The source's HIGHESTMODSEQ as the folder's modseq ceiling (mailplat/store/modseq.py)."""
    target = os.path.join(path, CEILING)
    tmp = f"{target}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(b"%d\n" % max(int(highestmodseq), 1))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, target)
    fsync_dir(path)
