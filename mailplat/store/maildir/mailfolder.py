"""
One maildir folder with IMAP semantics (L{IMailFolder}): UIDs from
`dovecot-uidlist`, flags in the file names, an index beside the mail, and
change notification. How the folder keeps its view of the disk is in
view.py; this module is what sessions call.

Concurrency: every operation that touches the disk holds the folder's
DeferredLock and runs its blocking part in the reactor's thread pool; the
in-memory view (`_msgs`, `_by_uid`, `_by_key`) is only changed in the
reactor thread while the lock is held, so `messages()` never sees half a
change, and events are published after the view changed.
"""

import errno
import os
import shutil

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import FolderEvent, IBatchOpen, IMailFolder, IModSeqFolder, TemporaryFailure
from mailplat.store import modseq
from mailplat.store.flags import normalise
from mailplat.store.folderview import FolderViewMixin
from mailplat.store.maildir import names
from mailplat.store.maildir.deliver import fsync_dir, write_message
from mailplat.store.maildir.keywords import Keywords
from mailplat.store.maildir.uidlist import UidList
from mailplat.store.maildir.view import INDEX_DELAY, NO_FLAGS, FolderGone, FolderView, _crlf_size, _with

log = Logger()

# Unwritten cache values that make a flush worth it before INDEX_DELAY.


@implementer(IMailFolder, IBatchOpen, IModSeqFolder)
class MaildirMailFolder(FolderViewMixin, FolderView):
    """
    A maildir folder as IMAP sees it. Made by L{MaildirStore} only, one per
    folder directory per process; every session shares it.
    """

    gone_error = FolderGone
    index_delay = INDEX_DELAY

    def __init__(self, store, path, name):
        self.store = store
        self.path = path
        self.name = name
        self.uidvalidity = 0
        self.uidnext = 1
        self._uidlist = UidList(path)
        self._keywords = Keywords(path)
        self._lock = defer.DeferredLock()
        self._msgs = []
        self._by_uid = {}
        self._by_key = {}
        self._cache = {}
        self._cache_pending = []
        self._cache_lines = 0
        self._flush_queued = False
        self._subscribers = {}  # token -> callback: ten thousand IDLE sessions leave in O(1) each
        self._loaded = False
        self._gone = False
        self._stamps = None  # (new/ mtime, cur/ mtime, uidlist stamp)
        self._recheck_at = None  # time after which a rescan is due anyway
        self._seen_upto = 1  # every message with a smaller UID is in the view
        self._kw_stamp = None
        self._first_recent = 1
        self._index_dirty = False
        self._index_written = 0.0
        self._index_stamps = None  # (stamps, trusted) the index on disk holds
        self._sync_waiters = None
        self._pending_stamps = None
        self._index_lock = defer.DeferredLock()
        # RFC 7162: the ceiling file lives beside dovecot-uidlist.
        self._modseq = modseq.ModSeqs(path)

    def __repr__(self):
        return f"<MaildirMailFolder {self.name!r} {self.path}>"

    # --- reading -------------------------------------------------------------

    def _recent_claimed(self):
        self._index_dirty = True

    def open(self, uid):
        info = self._by_uid.get(uid)
        if info is None:
            return defer.fail(KeyError(uid))

        def run():
            try:
                return open(os.path.join(self.path, info.subdir, info.filename), "rb")
            except FileNotFoundError:
                found = self._locate(info.key)
                if found is None:
                    raise KeyError(uid)
                return open(os.path.join(self.path, *found), "rb")

        return threads.deferToThread(run)

    def open_many(self, uids):
        """L{IBatchOpen}: the files of `uids` opened in one trip to the thread pool."""
        infos = [self._by_uid.get(uid) for uid in uids]
        if not any(infos):
            return defer.succeed([None] * len(infos))
        path = self.path

        def run():
            files, moved = [], None
            try:
                for info in infos:
                    if info is None:
                        files.append(None)
                        continue
                    try:
                        # Unbuffered: every reader reads in big pieces, and a
                        # FileIO costs a third less to make than a buffered file.
                        files.append(open(os.path.join(path, info.subdir, info.filename), "rb", buffering=0))
                        continue
                    except FileNotFoundError:
                        pass
                    except OSError:
                        files.append(None)
                        continue
                    # Renamed by another program since our scan: one listing
                    # of new/ and cur/ finds every such file of the batch.
                    if moved is None:
                        moved = self._current_names()
                    found = moved.get(info.key)
                    try:
                        files.append(None if found is None else open(os.path.join(path, *found), "rb", buffering=0))
                    except OSError:
                        files.append(None)
            except BaseException:
                for f in files:
                    if f is not None:
                        f.close()
                raise
            return files

        return threads.deferToThread(run)

    def message_paths(self, uids):
        """
        The file names of `uids` as this folder last saw them (None for a
        UID it does not hold), for a reader in another process
        (mailplat.imap.envelope_pool); a file renamed since is its to report.
        """
        path, by_uid, join = self.path, self._by_uid, os.path.join
        out = []
        for uid in uids:
            info = by_uid.get(uid)
            out.append(None if info is None else join(path, info.subdir, info.filename))
        return out

    def _current_names(self):
        """{key: (subdir, filename)} of the files now in cur/ and new/ (blocking)."""
        out = {}
        for subdir in ("new", "cur"):
            try:
                entries = os.listdir(os.path.join(self.path, subdir))
            except FileNotFoundError:
                continue
            for filename in entries:
                if filename[:1] != ".":
                    out[filename.partition(":")[0]] = (subdir, filename)
        return out

    # --- change notification ----------------------------------------------------

    def subscribe(self, callback):
        token = object()
        self._subscribers[token] = callback
        if len(self._subscribers) == 1:
            self.store._watch(self)

        def unsubscribe():
            if self._subscribers.pop(token, None) is not None:
                if not self._subscribers:
                    self.store._unwatch(self)
                    self.flush()

        return unsubscribe

    @property
    def watched(self):
        return bool(self._subscribers)

    def _publish(self, kind, uids, origin=None):
        if not uids:
            return
        event = FolderEvent(kind, sorted(uids), origin)
        for callback in list(self._subscribers.values()):
            try:
                callback(event)
            except Exception:
                log.failure("folder subscriber failed on {event}", event=event)

    # --- sync ------------------------------------------------------------------

    def _rescan(self):
        step = threads.deferToThread(self._scan_prepared).addCallback(self._apply)
        return step.addErrback(self._vanished)

    def _vanished(self, failure):
        """The directory went away behind our back (deleted by another program)."""
        if failure.check(FolderGone) and not self._gone:
            log.info("{path}: folder removed on disk", path=self.path)
            self.store._forget_folder(self.path)
        return failure

    # --- flags --------------------------------------------------------------------

    def _store_flags(self, uids, flags, mode, origin, unchangedsince):
        if mode not in ("+", "-", "="):
            return defer.fail(ValueError(f"bad flag mode {mode!r}"))
        flags = normalise(flags)
        lowered = _lower(flags)
        modified = []

        def work():
            plan = []
            for uid in sorted(set(uids)):
                info = self._by_uid.get(uid)
                if info is None:
                    continue
                if unchangedsince is not None and info.modseq > unchangedsince:
                    modified.append(uid)  # RFC 7162 3.1.3: left as it is
                    continue
                if mode == "+":
                    wanted = info.flags | flags
                elif mode == "-":
                    wanted = frozenset(f for f in info.flags if f.lower() not in lowered)
                else:
                    wanted = flags
                plan.append((info, wanted))
            self._ensure_keywords(set().union(*(w for _, w in plan)) if plan else ())
            return self._rename_all(plan)

        def apply(done):
            changed = []
            for info in done.values():
                current = self._by_uid.get(info.uid)
                if current is not None:
                    if current.flags != info.flags:
                        changed.append(info.uid)
                        info.modseq = 0
                    else:
                        info.modseq = current.modseq
            self._settle([done[uid] for uid in changed])
            for info in done.values():
                if self._by_uid.get(info.uid) is not None:
                    self._replace(info)
            self._publish("flags", changed, origin)
            return {uid: info.flags for uid, info in done.items()}, modified

        return self._locked(work, apply)

    def store_flags(self, uids, flags, mode, origin=None):
        return self._store_flags(uids, flags, mode, origin, None).addCallback(lambda result: result[0])

    def store_flags_unchanged_since(self, uids, flags, mode, modseq, origin=None):
        """L{IModSeqFolder}: STORE (UNCHANGEDSINCE modseq), the test and the change in one step."""
        return self._store_flags(uids, flags, mode, origin, modseq)

    def _ensure_keywords(self, flags):
        kw = self._keywords
        kw.refresh()
        missing = kw.missing(flags)
        if missing:
            with self._uidlist.locked():
                kw.refresh()
                kw.add(missing)

    def _rename_all(self, plan):
        """Give each message its new info letters; {uid: new MessageInfo}."""
        kw = self._keywords
        cur = os.path.join(self.path, "cur")
        before = self._own_begin()
        done, renamed = {}, False
        for info, wanted in plan:
            letters, extra = kw.info_for(wanted, names.split_info(info.filename)[1])
            target = f"{info.key}:2,{letters}"
            new_flags = _with(kw.flags_from_info(letters), extra)
            if target == info.filename and info.subdir == "cur":
                done[info.uid] = info.with_file("cur", target, new_flags, extra)
                continue
            source = os.path.join(self.path, info.subdir, info.filename)
            try:
                os.rename(source, os.path.join(cur, target))
            except FileNotFoundError:
                found = self._locate(info.key)
                if found is None:
                    continue  # expunged by someone else; the next sync says so
                letters, extra = kw.info_for(wanted, names.split_info(found[1])[1])
                target = f"{info.key}:2,{letters}"
                new_flags = _with(kw.flags_from_info(letters), extra)
                os.rename(os.path.join(self.path, *found), os.path.join(cur, target))
            renamed = True
            done[info.uid] = info.with_file("cur", target, new_flags, extra)
        if renamed:
            fsync_dir(cur)
            self._own_end(before)
        return done

    def _locked(self, work, apply):
        """Run `work` in a thread and `apply` in the reactor, holding the lock."""
        if self._gone:
            return defer.fail(FolderGone(self.name))

        def run():
            self._pending_stamps = None
            d = threads.deferToThread(self._prepared, work)
            d.addCallback(self._take_stamps)
            return d.addCallback(apply)

        return self._lock.run(run)

    def _scan_prepared(self):
        """A scan; the modseq ceiling raised first when what it found will need a modseq."""
        result = self._scan()
        fresh = not self._loaded and any(not i.modseq for i in result.msgs)
        if result.dirty or result.reset or result.index_removed or self._modseq.recovering or fresh:
            self._modseq.prepare()
        return result

    def _prepared(self, work, *args):
        """In the thread of a locked step: `work`, then the modseq ceiling raised if the change needs it."""
        value = work(*args)
        self._modseq.prepare()
        return value

    # --- new messages ---------------------------------------------------------------

    def _apply_added(self, infos, scan, origin):
        """Install messages we added (reactor thread) and publish them."""
        if scan is not None:
            # The scan may have found other new messages too; EXISTS must
            # still go out in UID order, ours tagged with their origin.
            ours = {i.uid for i in infos}
            added = sorted(set(scan.added) | ours)
            scan.added = []
            self._apply(scan)
            run, run_origin = [], None
            for uid in added:
                this = origin if uid in ours else None
                if run and this is not run_origin:
                    self._publish("exists", run, run_origin)
                    run = []
                run_origin = this
                run.append(uid)
            self._publish("exists", run, run_origin)
            return
        else:
            self._settle(infos)
            self._msgs = self._msgs + infos
            for info in infos:
                self._by_uid[info.uid] = info
                self._by_key[info.key] = info
            self.uidnext = self._uidlist.nextuid
            self._index_dirty = True
        self._publish("exists", [i.uid for i in infos], origin)

    def delivered(self, key):
        """
        A delivery of ours just put `key` in new/: give it a UID without
        rescanning the folder (a large INBOX with IDLE sessions gets mail
        all day). Falls back to a full sync when anything else changed.
        """
        if self._gone or not self._loaded:
            return self.sync()

        def work():
            if key in self._by_key:
                return [], None
            before = self._own_begin()
            # Only our delivery may have changed new/ since the last scan.
            mine = before[0] != self._stamps[0] and before[1:] == self._stamps[1:]
            filename = f"{key}:2,"
            try:
                os.rename(os.path.join(self.path, "new", key), os.path.join(self.path, "cur", filename))
                when = os.stat(os.path.join(self.path, "cur", filename)).st_mtime
            except FileNotFoundError:
                return [], self._scan()  # already taken by another process
            size = names.sizes_from_key(key)[1]
            if size is None:
                size = _crlf_size(os.path.join(self.path, "cur", filename))
            infos, scan = self._add_files([(key, filename, size, when, NO_FLAGS)])
            if scan is None and mine:
                self._own_end(self._stamps)
            return infos, scan

        def apply(result):
            infos, scan = result
            if scan is not None and not infos:
                self._apply(scan)
            elif infos or scan is not None:
                self._apply_added(infos, scan, None)
            return self._msgs

        return self._locked(work, apply)

    def append(self, source, flags=(), internaldate=None, origin=None):
        flags = normalise(flags)

        def work():
            before = self._own_begin()
            self._ensure_keywords(flags)
            letters, extra = self._keywords.info_for(flags)
            key = write_message(self.path, source, letters, cur=True, mtime=internaldate)
            filename = f"{key}:2,{letters}"
            when = internaldate if internaldate is not None else os.stat(os.path.join(self.path, "cur", filename)).st_mtime
            size = names.sizes_from_key(key)[1]
            infos, scan = self._add_files([(key, filename, size, when, extra)])
            if scan is None:
                self._own_end(before)
            return infos, scan

        def apply(result):
            infos, scan = result
            self._apply_added(infos, scan, origin)
            if not infos:
                raise TemporaryFailure("appended message vanished before it got a UID")
            return infos[0].uid

        return self._locked(work, apply)

    # --- copy, move, expunge ------------------------------------------------------

    def copy_to(self, uids, target, origin=None):
        return self._transfer(uids, target, origin, move=False)

    def move_to(self, uids, target, origin=None):
        # RFC 6851: the messages leave this folder and arrive in the target
        # at once; a rename does that within one file system.
        return self._transfer(uids, target, origin, move=True)

    def _transfer(self, uids, target, origin, move):
        if self._gone or target._gone:
            return defer.fail(FolderGone(self.name if self._gone else target.name))
        if target is self:
            # Within one folder: copy, then (for a move) expunge the sources.
            return self._locked(
                lambda: self._transfer_work(uids, target, move), lambda r: self._transfer_apply(r, target, origin)
            )
        # Both locks, always in path order, so two transfers in opposite
        # directions can't deadlock.
        first, second = sorted((self, target), key=lambda f: f.path)

        def outer():
            def inner():
                self._pending_stamps = target._pending_stamps = None
                d = threads.deferToThread(target._prepared, self._prepared, self._transfer_work, uids, target, move)
                return d.addCallback(self._transfer_apply, target, origin)

            return second._lock.run(inner)

        return first._lock.run(outer)

    def _transfer_work(self, uids, target, move):
        infos = [self._by_uid[u] for u in sorted(set(uids)) if u in self._by_uid]
        before = self._own_begin(), target._own_begin()
        target._ensure_keywords(set().union(*(i.flags for i in infos)) if infos else ())
        cur = os.path.join(target.path, "cur")
        entries, pairs, moved, touched = [], [], [], set()
        for info in infos:
            letters, extra = target._keywords.info_for(info.flags)
            size_part = info.key.partition(",")[2]
            base = names.unique_name()
            key = f"{base},{size_part}" if size_part else base
            filename = f"{key}:2,{letters}"
            source = os.path.join(self.path, info.subdir, info.filename)
            destination = os.path.join(cur, filename)
            try:
                _transfer_file(source, destination, info, move, target.path)
            except FileNotFoundError:
                found = self._locate(info.key)
                if found is None:
                    continue
                source = os.path.join(self.path, *found)
                _transfer_file(source, destination, info, move, target.path)
            if move:
                touched.add(os.path.dirname(source))
                moved.append(info.uid)
            entries.append((key, filename, info.size, info.internaldate, extra))
            pairs.append(info.uid)
        if not entries:
            return [], None, [], []
        fsync_dir(cur)
        for directory in touched:
            fsync_dir(directory)
        added, scan = target._add_files(entries)
        if move and target is not self:
            self._own_end(before[0])
        if scan is None:
            target._own_end(before[1])
        by_key = {i.key: i.uid for i in added}
        mapping = [(uid, by_key[e[0]]) for uid, e in zip(pairs, entries) if e[0] in by_key]
        return mapping, scan, added, moved

    def _transfer_apply(self, result, target, origin):
        mapping, scan, added, moved = result
        self._take_stamps(None)
        if target is not self:
            target._take_stamps(None)
        if added:
            target._apply_added(added, scan, origin)
        if moved:
            self._drop(moved)
            self._publish("expunge", moved, origin)
        return mapping

    def expunge(self, uids=None, origin=None):
        wanted = None if uids is None else set(uids)

        def work():
            removed, touched = [], set()
            before = self._own_begin()
            for info in self._msgs:
                if "\\Deleted" not in info.flags or (wanted is not None and info.uid not in wanted):
                    continue
                path = os.path.join(self.path, info.subdir, info.filename)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    found = self._locate(info.key)
                    if found is None:
                        removed.append(info.uid)  # already gone
                        continue
                    if "T" not in names.split_info(found[1])[1]:
                        continue  # another program took \Deleted off
                    path = os.path.join(self.path, *found)
                    os.unlink(path)
                removed.append(info.uid)
                touched.add(os.path.dirname(path))
            for directory in touched:
                fsync_dir(directory)
            self._own_end(before)
            return removed

        def apply(removed):
            self._drop(removed)
            self._publish("expunge", removed, origin)
            return sorted(removed)

        return self._locked(work, apply)

    # --- lifecycle (used by the account) --------------------------------------------

    def _relocate(self, path, name):
        self.path = path
        self.name = name
        self._modseq.directory = path
        self._uidlist.relocate(path)
        self._keywords.relocate(path)

    def _forget(self):
        """The folder was deleted: tell the sessions every message is gone."""
        uids = [i.uid for i in self._msgs]
        self._gone = True
        self._install([])
        self._cache = {}
        self._cache_pending = []
        self._publish("expunge", uids)


def _lower(flags):
    return {f.lower() for f in flags}


def _transfer_file(source, destination, info, move, target_root):
    """
    Put `source` at `destination`: a rename for a move, a hard link for a
    copy (Dovecot's maildir_copy_with_hardlinks); a byte copy, fsync'd,
    across file systems.
    """
    try:
        if move:
            os.rename(source, destination)
        else:
            os.link(source, destination)
        return
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    tmp = os.path.join(target_root, "tmp", os.path.basename(destination).split(":")[0])
    with open(source, "rb") as reader, open(tmp, "wb") as writer:
        shutil.copyfileobj(reader, writer, 256 * 1024)
        writer.flush()
        os.utime(writer.fileno(), (info.internaldate, info.internaldate))
        os.fsync(writer.fileno())
    os.rename(tmp, destination)
    if move:
        os.unlink(source)


