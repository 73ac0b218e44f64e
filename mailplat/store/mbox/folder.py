"""
One mbox file as IMAP sees it (L{IMailFolder}); POP3's view of INBOX is
maildrop.py over the same object, the blocking file work fileio.py.

Concurrency, as in the maildir store: every operation holds the folder's
DeferredLock and does its blocking part in the reactor's thread pool on a
copy of the state (L{_Work}), which the reactor thread installs and
publishes. Other programs are kept out by the mbox locks (locking.py).

What changed on disk is told by the file's identity (device, inode, size,
mtime, ctime): unchanged, nothing is read; grown with the old end intact,
only the new tail is parsed (mail appended by procmail, Postfix, mutt);
anything else, the file is parsed again and each message is matched to
the one it was by its fingerprint (From_ line, headers other than the
flag and length ones, the body's length and ends), so messages keep their
UIDs when mutt deletes some and rewrites the file.

Flag changes go to the index at once and into the file lazily (Dovecot's
mbox_lazy_writes): at EXPUNGE, when the last session leaves the folder,
at shutdown, or WRITEBACK_DELAY after the change. When the file changed
meanwhile, a flag another program changed wins over ours.
"""

import io
import mmap
import os
import time

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import (
    FolderEvent,
    IBatchOpen,
    IMailFolder,
    IMessageInfo,
    IModSeqFolder,
    IStoredMessage,
    TemporaryFailure,
)
from mailplat.store import modseq
from mailplat.store.flags import normalise
from mailplat.store.folderview import FolderViewMixin, uid_of
from mailplat.store.mbox import fileio, index, locking, mboxrd

log = Logger()

INDEX_DELAY = 1.0
WRITEBACK_DELAY = 30.0
EDGE = 64  # bytes of the file's start and end remembered to tell an append from a rewrite

RETURN_PATH = object()  # a delivery's sender: the Return-Path on top of the message

# Tests set this to a callable run after each message a rewrite writes.
_rewrite_hook = None



def key_for(uid, uidvalidity):
    # Dovecot's default pop3_uidl_format for mbox, %08Xu%08Xv.
    return "%08X%08X" % (uid, uidvalidity)


class FolderGone(KeyError):
    """The mbox file of a folder other than INBOX was removed while open."""


@implementer(IMessageInfo, IStoredMessage)
class MessageInfo:
    """One message as the folder knows it; replaced, never changed."""

    __slots__ = (
        "uid", "key", "size", "flags", "internaldate", "offset", "end", "file_flags", "old", "fingerprint", "modseq"
    )

    def __init__(self, uid, key, size, flags, internaldate, offset, end, file_flags, old, fingerprint, modseq=0):
        self.uid = uid
        self.key = key
        self.size = size
        self.flags = flags
        self.internaldate = internaldate
        self.offset = offset
        self.end = end
        self.file_flags = file_flags  # as the Status / X-Status / X-Keywords headers say
        self.old = old
        self.fingerprint = fingerprint
        # RFC 7162: set when installed (0: not yet; mailplat.store.modseq.settle).
        self.modseq = modseq

    def replace(self, **changes):
        values = {name: getattr(self, name) for name in self.__slots__}
        if "flags" in changes and changes["flags"] != self.flags:
            values["modseq"] = 0  # a change: the next modseq
        values.update(changes)
        return MessageInfo(**values)

    def row(self):
        same = self.file_flags == self.flags
        return [
            self.uid, self.offset, self.end, self.size, self.internaldate, sorted(self.flags),
            None if same else sorted(self.file_flags), int(self.old), self.fingerprint,
        ]

    @classmethod
    def from_row(cls, row, uidvalidity, modseq=0):
        uid, offset, end, size, date, flags, file_flags, old, fp = row
        flags = frozenset(flags)
        return cls(uid, key_for(uid, uidvalidity), size, flags, date, offset, end,
                   flags if file_flags is None else frozenset(file_flags), bool(old), fp, modseq)

    def __repr__(self):
        return f"<MessageInfo {self.uid} @{self.offset}-{self.end}>"


def _stamp(st):
    return None if st is None else [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class _Work:
    """The folder's state, copied for a blocking step to change; installed by the reactor."""

    def __init__(self, folder):
        self.msgs = list(folder._msgs)
        self.stamp = folder._stamp
        self.head = folder._head
        self.tail = folder._tail
        self.uidvalidity = folder.uidvalidity
        self.uidnext = folder.uidnext
        self.first_recent = None
        self.reset = False
        self.changed_file = False
        self.incremental = True  # only appends (ours or others'): the index can wait
        self.removed, self.added, self.flagged, self.resized = [], [], [], []
        self.own_added, self.own_removed = [], []
        self.cache = None
        self.value = None


@implementer(IMailFolder, IBatchOpen, IModSeqFolder)
class MboxFolder(FolderViewMixin):
    """An mbox file as IMAP sees it. Made by L{MboxStore} only, one per file per process."""

    gone_error = FolderGone
    index_delay = INDEX_DELAY

    def __init__(self, store, path, name, index_dir):
        self.store = store
        self.path = path
        self.name = name
        self.index_dir = index_dir
        self.uidvalidity = 0
        self.uidnext = 1
        self._lock = defer.DeferredLock()
        self._index_lock = defer.DeferredLock()
        self._msgs = []
        self._by_uid = {}
        self._stamp = None
        self._head = b""
        self._tail = b""
        self._cache = {}
        self._cache_pending = []
        self._cache_lines = 0
        self._subscribers = {}  # token -> callback: ten thousand IDLE sessions leave in O(1) each
        self._loaded = False
        self._gone = False
        self._first_recent = 1
        self._index_dirty = False
        self._index_written = 0.0
        self._flags_since = None
        self._sync_waiters = None
        self._appends = []
        self._reads = []
        self._flush_queued = False
        # RFC 7162: the ceiling file lives in the index directory.
        self._modseq = modseq.ModSeqs(index_dir, create=True)

    def __repr__(self):
        return f"<MboxFolder {self.name!r} {self.path}>"

    # --- reading ------------------------------------------------------------------

    def _recent_claimed(self):
        self._index_soon()

    def open(self, uid):
        """
        The message as served. Opens asked for together (the IMAP layer
        asks for a batch) are read in one trip to the thread pool, under an
        fcntl read lock (mutt's and Dovecot's rewriters take fcntl write
        locks; an appender can't touch a message we know). When the file
        changed, sync first.
        """
        d = defer.Deferred()
        self._reads.append((uid, d))
        if len(self._reads) == 1:
            self._lock.run(self._drain_reads)
        return d

    def open_many(self, uids):
        """L{IBatchOpen}: the batch L{open} makes of opens asked for together, asked for as one."""
        ds = [self.open(uid) for uid in uids]
        d = defer.DeferredList(ds, consumeErrors=True)

        def files(results):
            failed = [r for ok, r in results if not ok and not r.check(KeyError)]
            if failed:
                for ok, f in results:
                    if ok:
                        f.close()
                return failed[0]  # the file can't be read (TemporaryFailure)
            return [f if ok else None for ok, f in results]

        return d.addCallback(files)

    def _drain_reads(self):
        batch, self._reads = self._reads, []
        if self._gone:
            for uid, d in batch:
                d.errback(KeyError(uid))
            return None

        def read():
            return threads.deferToThread(self._read_known, [self._by_uid.get(uid) for uid, _ in batch])

        def answer(found):
            for (uid, d), data in zip(batch, found):
                if data is None:
                    d.errback(KeyError(uid))
                else:
                    d.callback(io.BytesIO(data))

        def maybe_stale(found):
            if found is not None:
                return answer(found)
            # The file changed since we looked: catch up, then read again.
            d = threads.deferToThread(self._prepared, self._sync_work, _Work(self)).addCallback(self._apply)
            return d.addCallback(lambda _: read()).addCallback(lambda f: answer(f or [None] * len(batch)))

        def failed(f):
            for _, d in batch:
                d.errback(f)

        return read().addCallback(maybe_stale).addErrback(failed)

    def _read_known(self, infos):
        """The views of `infos` (None for one gone), or None when the file is not as we last saw it."""
        try:
            with locking.locked(self.path, write=False, timeout=self.store.lock_timeout, dotlock=False) as fd:
                if fd is None or _stamp(os.fstat(fd)) != self._stamp:
                    return None
                return [
                    None if i is None else mboxrd.view(fileio.pread_all(fd, i.end - i.offset, i.offset)) for i in infos
                ]
        except OSError as e:
            raise TemporaryFailure(f"cannot read mailbox {self.path}: {e.strerror}")

    def read_many(self, uids):
        """[(uid, view, sender, internaldate, flags)] for a copy; one lock for all."""

        def work(w):
            wanted = set(uids)
            out = []
            with locking.locked(self.path, write=False, timeout=self.store.lock_timeout) as fd:
                self._catch_up(w, fd)
                for info in sorted((m for m in w.msgs if m.uid in wanted), key=lambda m: m.uid):
                    region = fileio.pread_all(fd, info.end - info.offset, info.offset)
                    sender = region[5 : region.find(b"\n")].split(b" ", 1)[0].decode("ascii", "replace")
                    out.append((info.uid, mboxrd.view(region), sender, info.internaldate, info.flags))
            w.value = out
            return w

        return self._locked(work, self._apply)

    # --- change notification ---------------------------------------------------------

    def subscribe(self, callback):
        token = object()
        self._subscribers[token] = callback
        if len(self._subscribers) == 1:
            self.store._watch(self)

        def unsubscribe():
            if self._subscribers.pop(token, None) is not None:
                if not self._subscribers:
                    self.store._unwatch(self)
                    # The last session left: mutt should see the flags now.
                    self.write_back()
                    self.flush()

        return unsubscribe

    def _publish(self, kind, uids, origin=None):
        if not uids:
            return
        event = FolderEvent(kind, sorted(uids), origin)
        for callback in list(self._subscribers.values()):
            try:
                callback(event)
            except Exception:
                log.failure("folder subscriber failed on {event}", event=event)

    # --- running a step -----------------------------------------------------------------

    def _locked(self, work, apply):
        """Run `work(_Work)` in a thread and `apply` in the reactor, holding the folder lock."""
        if self._gone:
            return defer.fail(FolderGone(self.name))

        def run():
            w = _Work(self)
            return threads.deferToThread(self._prepared, work, w).addCallback(apply)

        return self._lock.run(run)

    def _prepared(self, work, w, *args):
        """
        In the thread of a locked step: `work(w, ...)`, then the modseq
        ceiling raised when what it did will need a modseq (RFC 7162).
        """
        w = work(w, *args)
        ms = self._modseq
        if w.removed or w.own_removed or w.reset or ms.recovering or any(not m.modseq for m in w.msgs):
            ms.prepare()
        return w

    def _rescan(self):
        step = threads.deferToThread(self._prepared, self._sync_work, _Work(self)).addCallback(self._apply)
        return step.addCallbacks(lambda _: self._msgs, self._vanished)

    def _vanished(self, failure):
        """The file went away behind our back (deleted by another program)."""
        if failure.check(FolderGone) and not self._gone:
            log.info("{path}: folder removed on disk", path=self.path)
            self.store._forget_folder(self.path)
        return failure

    def needs_scan(self):
        """Cheap (one stat): has the file changed since we last looked?"""
        if not self._loaded:
            return True
        return self._current_stamp() != self._stamp

    def _current_stamp(self):
        try:
            return _stamp(os.stat(self.path))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

    def _missing(self):
        """A missing file is an empty INBOX (as Dovecot has it); another folder is gone."""
        if self.name != "INBOX":
            raise FolderGone(self.name)

    def _sync_work(self, w):
        if not self._loaded:
            self._load(w)
            if w.value == "adopted":
                return w
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._missing()
            st = None
        except OSError as e:
            raise TemporaryFailure(f"cannot read mailbox {self.path}: {e.strerror}")
        if st is not None and _stamp(st) == w.stamp:
            return w
        if st is None:
            self._catch_up(w, None)  # no file, nothing half-written to wait for
            return w
        try:
            with locking.locked(self.path, write=False, timeout=self.store.lock_timeout) as fd:
                if fd is None:
                    self._missing()
                self._catch_up(w, fd)
        except OSError as e:
            raise TemporaryFailure(f"cannot read mailbox {self.path}: {e.strerror}")
        return w

    def _load(self, w):
        """First look: take the index when it still describes the file."""
        if not os.path.isdir(os.path.dirname(self.path) or "."):
            if self.name != "INBOX":
                raise FolderGone(self.name)
        saved = index.load(self.index_dir)
        self._modseq.load(saved)
        if saved is None:
            w.first_recent = "scan"
            return
        try:
            uidvalidity = saved["uidvalidity"]
            rows = saved["messages"]
            values = self._modseq.index_modseqs(saved, len(rows))
            msgs = [MessageInfo.from_row(r, uidvalidity, m) for r, m in zip(rows, values)]
            w.uidvalidity, w.uidnext = uidvalidity, saved["uidnext"]
            w.first_recent = saved.get("first_recent", 1)
            w.stamp = saved["stamp"]
            w.head = bytes.fromhex(saved["head"])
            w.tail = bytes.fromhex(saved["tail"])
        except (KeyError, TypeError, ValueError):
            w.first_recent = "scan"
            self._modseq.load(None)
            return
        w.msgs = sorted(msgs, key=uid_of)
        w.added = [m.uid for m in w.msgs]
        w.cache = index.load_cache(self.index_dir, uidvalidity)
        if self._current_stamp() == w.stamp:
            w.value = "adopted"

    # --- the scan ---------------------------------------------------------------------

    def _catch_up(self, w, fd):
        """Bring `w` up to date with the locked file `fd` (None: no file)."""
        st = os.fstat(fd) if fd is not None else None
        stamp = _stamp(st)
        if stamp == w.stamp:
            return
        size = st.st_size if st is not None else 0
        if size == 0:
            w.incremental = False
            self._take([], w, full=True)
            w.head = w.tail = b""
        else:
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            try:
                old = w.stamp
                start = self._append_start(w, mm, st)
                if start is not None:
                    parsed = [mboxrd.parse(mm[a:b], a) for a, b in mboxrd.split(mm, start)]
                    self._take(parsed, w, full=False)
                else:
                    w.incremental = False
                    parsed = [mboxrd.parse(mm[a:b], a) for a, b in mboxrd.split(mm, 0)]
                    if old is not None:
                        log.info("{path}: changed by another program; matching its messages", path=self.path)
                    self._take(parsed, w, full=True)
                w.head = mm[:EDGE]
                w.tail = mm[max(0, size - EDGE) : size]
            finally:
                mm.close()
        w.stamp = stamp
        w.changed_file = True

    def _append_start(self, w, mm, st):
        """Where new mail starts when the file only grew at its end, else None."""
        old = w.stamp
        if old is None or not w.msgs or [st.st_dev, st.st_ino] != old[:2] or st.st_size <= old[2]:
            return None
        end = old[2]
        if mm[: len(w.head)] != w.head or mm[end - len(w.tail) : end] != w.tail:
            return None
        start = end
        while start < st.st_size and start < end + 2 and mm[start : start + 1] == b"\n":
            start += 1
        return start if mm[start : start + 5] == mboxrd.SEPARATOR else None

    def _take(self, parsed, w, full):
        """Merge a parse into `w`: matched messages keep their UIDs, others get new ones."""
        if not full:
            fresh = parsed
            kept = w.msgs
        else:
            pool = {}
            for info in sorted(w.msgs, key=lambda m: m.offset):
                pool.setdefault(info.fingerprint, []).append(info)
            kept, fresh = [], []
            for p in parsed:
                candidates = pool.get(p.fingerprint)
                if not candidates:
                    fresh.append(p)
                    continue
                o = candidates.pop(0)
                # A flag changed by another program wins over ours not yet written.
                flags = o.flags if p.flags == o.file_flags else p.flags
                info = o.replace(offset=p.offset, end=p.end, size=p.size, flags=flags, file_flags=p.flags, old=p.old)
                if flags != o.flags:
                    w.flagged.append(o.uid)
                if p.size != o.size:
                    w.resized.append(o.uid)
                kept.append(info)
            alive = {m.uid for m in kept}
            w.removed.extend(m.uid for m in w.msgs if m.uid not in alive)
        if not w.uidvalidity:
            kept = kept + self._first_uids(w, fresh)
        new = []
        for p in fresh:
            uid = w.uidnext
            w.uidnext += 1
            new.append(self._info(uid, w.uidvalidity, p))
        w.added.extend(m.uid for m in new)
        w.msgs = sorted(kept + new, key=uid_of)

    def _info(self, uid, uidvalidity, p):
        date = p.date if p.date is not None else int(time.time())
        return MessageInfo(uid, key_for(uid, uidvalidity), p.size, p.flags, date, p.offset, p.end, p.flags, p.old, p.fingerprint)

    def _first_uids(self, w, fresh):
        """
        A folder with no index: keep the UIDs Dovecot wrote (X-IMAPbase in
        the first message, X-UID in each) when they are consistent, else
        start a new UIDVALIDITY.
        """
        base = fresh[0].imapbase if fresh else None
        try:
            validity, nextuid = int(base[0]), int(base[1])
        except (TypeError, ValueError, IndexError):
            validity = None
        uids = [p.xuid for p in fresh]
        if validity and all(uids) and all(a < b for a, b in zip(uids, uids[1:])) and uids[-1] < nextuid:
            w.uidvalidity, w.uidnext = validity, nextuid
            taken = [self._info(u, validity, p) for u, p in zip(uids, fresh)]
            w.added.extend(uids)
            fresh.clear()
            return taken
        w.uidvalidity = self.store._next_uidvalidity(self)
        w.uidnext = 1
        return []

    # --- installing a step's result -------------------------------------------------------

    def _apply(self, w, origin=None):
        """Install `w` and tell the subscribers (reactor thread)."""
        first = not self._loaded
        old_uids = set(self._by_uid)
        if w.reset or (self.uidvalidity and w.uidvalidity != self.uidvalidity):
            w.reset = True
        self._msgs = w.msgs
        self._by_uid = {m.uid: m for m in w.msgs}
        self.uidvalidity, self.uidnext = w.uidvalidity, w.uidnext
        self._stamp, self._head, self._tail = w.stamp, w.head, w.tail
        if w.cache is not None:
            self._cache, self._cache_lines = w.cache
        if first:
            if w.first_recent == "scan":
                unread = [m.uid for m in w.msgs if not m.old and "\\Seen" not in m.flags]
                self._first_recent = min(unread, default=self.uidnext)
            elif w.first_recent is not None:
                self._first_recent = w.first_recent
        self._loaded = True
        if self._settle(self._msgs, w.removed + w.own_removed, w.reset) is not None:
            self._index_dirty = True
        if w.reset:
            self._cache = {}
            self._publish("expunge", sorted(old_uids))
            self._publish("exists", [m.uid for m in w.msgs])
        else:
            for uid in w.removed + w.own_removed + w.resized:
                self._cache.pop(uid, None)
            if not first:
                self._publish("expunge", w.removed)
                self._publish("expunge", w.own_removed, origin)
                self._publish("exists", [u for u in w.added if u not in old_uids])
                self._publish("flags", [u for u in set(w.flagged) if u in self._by_uid])
            self._publish("exists", w.own_added, origin)
        if w.changed_file or w.own_added or w.own_removed:
            self._index_soon(now=first or not w.incremental)
        if any(m.flags != m.file_flags for m in self._msgs):
            self._writeback_soon()
        return w.value

    # --- the index ------------------------------------------------------------------------

    def _snapshot(self):
        return {
            "uidvalidity": self.uidvalidity,
            "uidnext": self.uidnext,
            "first_recent": self._first_recent,
            "stamp": self._stamp,
            "head": self._head.hex(),
            "tail": self._tail.hex(),
            "messages": [m.row() for m in self._msgs],
            # RFC 7162 (mailplat.store.modseq): beside the rows, so that an
            # index without them (an older mailplat's) still loads.
            "modseqs": [m.modseq for m in self._msgs],
            **self._modseq.snapshot(),
        }

    def _index_soon(self, now=False):
        """
        The index is out of date. It is written at once after a first scan
        or a rewrite (re-deriving those costs a parse of the whole file),
        else by the poller, when the last session leaves, or at shutdown:
        UIDs of mail appended since are given again, the same, from the file.
        """
        self._index_dirty = True
        if now:
            self._write_index()

    def _write_index(self):
        self._index_dirty = False
        self._index_written = time.time()
        if self._gone or not self._loaded:
            return defer.succeed(None)
        snap = self._snapshot()
        d = self._index_lock.run(threads.deferToThread, index.save, self.index_dir, snap)
        return d.addErrback(lambda f: log.failure("writing the index of {path}", f, path=self.path))

    def flush(self):
        """Write the index (when out of date) and the cache values not yet on disk."""
        self._flush_queued = True

        def run():
            self._flush_queued = False
            if self._gone or not self._loaded:
                return None
            writes = [self._write_index()] if self._index_dirty else []
            pending, self._cache_pending = self._cache_pending, []
            if pending:
                live = sum(len(f) for f in self._cache.values())
                self._cache_lines += len(pending)
                if self._cache_lines > 2 * live + 1000:
                    whole = {uid: dict(fields) for uid, fields in self._cache.items()}
                    self._cache_lines = live
                    writes.append(threads.deferToThread(index.rewrite_cache, self.index_dir, self.uidvalidity, whole))
                else:
                    # After any index write under way: that one makes the
                    # index directory, whose absence append_cache reads as
                    # "the folder was deleted".
                    writes.append(
                        self._index_lock.run(
                            threads.deferToThread, index.append_cache, self.index_dir, self.uidvalidity, pending
                        )
                    )
            # Also wait for index writes already under way.
            writes.append(self._index_lock.run(lambda: None))
            return defer.gatherResults(writes)

        d = self._lock.run(run)
        d.addErrback(lambda f: log.failure("flushing the index of {path}", f, path=self.path))
        return d

    def write_back_due(self):
        return self._flags_since is not None and time.time() - self._flags_since >= WRITEBACK_DELAY

    # --- flags ----------------------------------------------------------------------------

    def _store_flags(self, uids, flags, mode, origin, unchangedsince):
        if mode not in ("+", "-", "="):
            return defer.fail(ValueError(f"bad flag mode {mode!r}"))
        flags = normalise(flags)
        lowered = {f.lower() for f in flags}

        def run():
            if self._gone:
                raise FolderGone(self.name)
            if not self._modseq.ready():
                # RFC 7162: the ceiling goes to disk before the change's modseq is given.
                return threads.deferToThread(self._modseq.prepare).addCallback(lambda _: change())
            return change()

        def change():
            if self._gone:
                raise FolderGone(self.name)
            out, changed, modified = {}, [], []
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
                if wanted != info.flags:
                    changed.append(info.replace(flags=wanted))
                out[uid] = wanted
            self._settle(changed)
            for info in changed:
                self._replace(info)
            if changed:
                self._index_soon()
                self._writeback_soon()
                self._publish("flags", [i.uid for i in changed], origin)
            return out, modified

        return self._lock.run(run)

    def store_flags(self, uids, flags, mode, origin=None):
        return self._store_flags(uids, flags, mode, origin, None).addCallback(lambda result: result[0])

    def store_flags_unchanged_since(self, uids, flags, mode, modseq, origin=None):
        """L{IModSeqFolder}: STORE (UNCHANGEDSINCE modseq), the test and the change in one step."""
        return self._store_flags(uids, flags, mode, origin, modseq)

    def _replace(self, info):
        self._by_uid[info.uid] = info
        lo, hi = 0, len(self._msgs)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._msgs[mid].uid < info.uid:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self._msgs) and self._msgs[lo].uid == info.uid:
            self._msgs[lo] = info

    def _writeback_soon(self):
        """
        Flags changed here: into the file WRITEBACK_DELAY later (the poller
        asks) while sessions watch the folder, else at once (POP3, a
        session that just left).
        """
        if not self._subscribers:
            self.write_back()
        elif self._flags_since is None:
            self._flags_since = time.time()

    def write_back(self):
        """Write flags changed here into the file's headers (lazily, as Dovecot does)."""
        self._flags_since = None
        if self._gone or not self._loaded or all(m.flags == m.file_flags for m in self._msgs):
            return defer.succeed(None)
        d = self._rewrite(lambda w: set(), None)
        return d.addErrback(lambda f: log.failure("writing flags into {path}", f, path=self.path))

    # --- new messages -------------------------------------------------------------------

    def append(self, source, flags=(), internaldate=None, origin=None):
        return self._append_items([(source, None, internaldate, normalise(flags))], origin).addCallback(lambda u: u[0])

    def deliver(self, source, flags=()):
        """A delivery (IMailStore.deliver): the sender from Return-Path; @return: its key."""
        d = self._append_items([(source, RETURN_PATH, None, normalise(flags))], None)
        return d.addCallback(lambda uids: key_for(uids[0], self.uidvalidity))

    def _append_items(self, items, origin):
        """
        Queue [(content or IMessageSource, sender, internaldate, flags)] for
        the file (sender RETURN_PATH: from the message's Return-Path); appends
        waiting together are written under one lock with one fsync.
        @return: Deferred firing with their UIDs.
        """
        d = defer.Deferred()
        self._appends.append((items, origin, d))
        if len(self._appends) == 1:
            self._lock.run(self._drain_appends)
        return d

    def _drain_appends(self):
        batch, self._appends = self._appends, []
        if self._gone:
            for _, _, d in batch:
                d.errback(FolderGone(self.name))
            return None
        w = _Work(self)
        items = [item for entries, _, _ in batch for item in entries]

        def fire(w):
            uids = iter(w.value)
            origins = []
            for entries, origin, _ in batch:
                origins.append((origin, [next(uids) for _ in entries]))
            own = w.own_added
            w.own_added = []
            self._apply(w)
            for origin, got in origins:
                self._publish("exists", got, origin)
            for (_, _, d), (_, got) in zip(batch, origins):
                d.callback(got)
            return own

        def failed(f):
            for _, _, d in batch:
                d.errback(f)

        return threads.deferToThread(self._prepared, self._append_work, w, items).addCallbacks(fire, failed)

    def _append_work(self, w, items):
        try:
            with locking.locked(self.path, write=True, timeout=self.store.lock_timeout, create=True) as fd:
                self._catch_up(w, fd)
                end = os.fstat(fd).st_size
                pad = b""
                if end:
                    last = os.pread(fd, 2, end - 2) if end >= 2 else os.pread(fd, 1, end - 1)
                    pad = b"" if last.endswith(b"\n\n") or last == b"\n" else (b"\n" if last.endswith(b"\n") else b"\n\n")
                now = int(time.time())
                chunks, parsed, offset = [pad], [], end + len(pad)
                for content, sender, date, flags in items:
                    if not isinstance(content, bytes):
                        with content.open() as f:
                            content = f.read()
                    if sender is RETURN_PATH:
                        sender = mboxrd.sender_of(content)
                    date = int(date) if date is not None else now
                    region = mboxrd.render(content, sender, date, flags)
                    parsed.append(mboxrd.parse(region, offset))
                    parsed[-1].date = date
                    chunks.append(region)
                    offset += len(region)
                payload = b"".join(chunks)
                try:
                    fileio.pwrite_all(fd, payload, end)
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, end)  # nothing half-written stays
                    raise
                st = os.fstat(fd)
                if pad and w.msgs:
                    last = max(w.msgs, key=lambda m: m.offset)
                    if last.end == end:
                        region = fileio.pread_all(fd, end + len(pad) - last.offset, last.offset)
                        p = mboxrd.parse(region, last.offset)
                        w.msgs = [m.replace(end=p.end, size=p.size) if m is last else m for m in w.msgs]
                if not w.uidvalidity:
                    w.uidvalidity = self.store._next_uidvalidity(self)
                uids = list(range(w.uidnext, w.uidnext + len(parsed)))
                w.uidnext += len(parsed)
                w.msgs = w.msgs + [self._info(u, w.uidvalidity, p) for u, p in zip(uids, parsed)]
                w.own_added = uids
                w.value = uids
                w.head = os.pread(fd, EDGE, 0)
                w.tail = os.pread(fd, EDGE, max(0, st.st_size - EDGE))
                w.stamp = _stamp(st)
                w.changed_file = True
        except OSError as e:
            raise fileio.temporary(e, self.path)
        return w

    # --- copy, move, expunge ---------------------------------------------------------

    def copy_to(self, uids, target, origin=None):
        if self._gone or target._gone:
            return defer.fail(FolderGone(self.name if self._gone else target.name))
        d = self.read_many(uids)

        def append(found):
            if not found:
                return []
            items = [(data, sender, date, flags) for _, data, sender, date, flags in found]
            return target._append_items(items, origin).addCallback(lambda new: list(zip([f[0] for f in found], new)))

        return d.addCallback(append)

    def move_to(self, uids, target, origin=None):
        # RFC 6851: copied, then removed here.
        d = self.copy_to(uids, target, origin)

        def remove(mapping):
            moved = {source for source, _ in mapping}
            if not moved:
                return mapping
            return self._rewrite(lambda w: moved, origin).addCallback(lambda _: mapping)

        return d.addCallback(remove)

    def expunge(self, uids=None, origin=None):
        wanted = None if uids is None else set(uids)

        def doomed(w):
            return {m.uid for m in w.msgs if "\\Deleted" in m.flags and (wanted is None or m.uid in wanted)}

        return self._rewrite(doomed, origin).addCallback(sorted)

    def remove(self, uids, origin=None):
        """Remove messages for good, flagged or not (POP3 DELE at QUIT)."""
        gone = set(uids)
        return self._rewrite(lambda w: gone & {m.uid for m in w.msgs}, origin)

    def _rewrite(self, doomed, origin):
        """Drop the messages `doomed(w)` names and write pending flags: see L{_rewrite_file}."""
        if not doomed(_Work(self)) and all(m.flags == m.file_flags for m in self._msgs):
            return defer.succeed([])

        def work(w):
            try:
                with locking.locked(self.path, write=True, timeout=self.store.lock_timeout) as fd:
                    if fd is None:
                        self._missing()
                        w.msgs, w.stamp = [], None
                        w.value = []
                        return w
                    self._catch_up(w, fd)
                    drop = doomed(w)
                    self._rewrite_file(w, fd, drop)
                    w.value = sorted(drop)
            except OSError as e:
                raise fileio.temporary(e, self.path)
            return w

        return self._locked(work, lambda w: self._apply(w, origin))

    def _rewrite_file(self, w, fd, drop):
        """
        Write the file again without `drop` and with the flags changed here
        in the headers, safely: a new file beside it, fsync'd, renamed over
        it, the directory fsync'd. A crash at any moment leaves the old
        file or the new one. The part before the first change is copied by
        the kernel (copy_file_range: shared extents on btrfs and XFS); only
        the messages after it are read and written.
        """
        in_order = sorted(w.msgs, key=lambda m: m.offset)
        touched = [m for m in in_order if m.uid in drop or m.flags != m.file_flags]
        if not touched:
            return
        first = touched[0].offset
        directory = os.path.dirname(self.path) or "."
        tmp = os.path.join(directory, f".{os.path.basename(self.path)}.mailplat-{os.getpid()}.tmp")
        st = os.fstat(fd)
        fileio.remove_stale_temporaries(directory, os.path.basename(self.path))
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.fchown(out, st.st_uid, st.st_gid)
            except OSError:
                pass
            os.fchmod(out, st.st_mode & 0o7777)
            fileio.copy_range(fd, out, first, 0, 0)
            pos, kept, removed = first, [m for m in in_order if m.offset < first], []
            for m in in_order:
                if m.offset < first:
                    continue
                if m.uid in drop:
                    removed.append(m.uid)
                    continue
                if m.flags != m.file_flags:
                    region = fileio.pread_all(fd, m.end - m.offset, m.offset)
                    old = m.old or m.uid < self._first_recent
                    region = mboxrd.with_flags(region, m.flags, old)
                    fileio.pwrite_all(out, region, pos)
                    kept.append(m.replace(offset=pos, end=pos + len(region), file_flags=m.flags, old=old))
                    pos += len(region)
                else:
                    fileio.copy_range(fd, out, m.end - m.offset, m.offset, pos)
                    kept.append(m.replace(offset=pos, end=pos + m.end - m.offset))
                    pos += m.end - m.offset
                if _rewrite_hook is not None:
                    _rewrite_hook(m)
            os.ftruncate(out, pos)
            os.fsync(out)
            os.rename(tmp, self.path)
            fileio.fsync_dir(directory)
            new = os.fstat(out)
            w.head = os.pread(out, EDGE, 0)
            w.tail = os.pread(out, EDGE, max(0, pos - EDGE))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        finally:
            os.close(out)
        w.msgs = sorted(kept, key=uid_of)
        w.own_removed = removed
        w.incremental = False
        w.stamp = _stamp(new)
        w.changed_file = True

    # --- lifecycle (used by the account) ---------------------------------------------------

    def _relocate(self, path, name, index_dir):
        self.path, self.name, self.index_dir = path, name, index_dir
        self._modseq.directory = index_dir

    def _forget(self):
        """The folder was deleted: every message is gone for its sessions."""
        uids = [m.uid for m in self._msgs]
        self._gone = True
        self._msgs, self._by_uid, self._cache, self._cache_pending = [], {}, {}, []
        self._publish("expunge", uids)
