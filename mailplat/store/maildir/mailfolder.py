"""
One maildir folder with IMAP semantics (L{IMailFolder}): UIDs from
`dovecot-uidlist`, flags in the file names, an index beside the mail, and
change notification.

Concurrency: every operation that touches the disk holds the folder's
DeferredLock and runs its blocking part in the reactor's thread pool; the
in-memory view (`_msgs`, `_by_uid`, `_by_key`) is only replaced in the
reactor thread while the lock is held, so `messages()` never sees half a
change. Other processes (a second mailplat, Dovecot, mutt, mbsync) are
coped with as Dovecot does (see maildir-sync.c): UIDs are handed out under
the uidlist dotlock, and a folder is rescanned when new/, cur/ or the
uidlist change, or when their mtime was too recent to be trusted.
"""

import errno
import os
import shutil
import time

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import FolderEvent, IMailFolder, IMessageInfo, TemporaryFailure
from mailplat.store.maildir import index, names
from mailplat.store.maildir.deliver import ensure_maildir, fsync_dir, write_message
from mailplat.store.maildir.keywords import Keywords, normalise
from mailplat.store.maildir.uidlist import UidList

log = Logger()

# Dovecot's MAILDIR_SYNC_SECS: a directory whose mtime is this close to the
# scan may change again within the same timestamp, so it is scanned again.
SYNC_SECS = 1.0
# The index is rewritten at most this often (it is a cache).
INDEX_DELAY = 5.0
# Unwritten cache values that make a flush worth it before INDEX_DELAY.
CACHE_BATCH = 500


@implementer(IMessageInfo)
class MessageInfo:
    """One message as the folder knows it; replaced, never changed."""

    __slots__ = ("uid", "key", "size", "flags", "internaldate", "subdir", "filename", "extra")

    def __init__(self, uid, key, size, flags, internaldate, subdir, filename, extra=frozenset()):
        self.uid = uid
        self.key = key
        self.size = size
        self.flags = flags
        self.internaldate = internaldate
        self.subdir = subdir
        self.filename = filename
        self.extra = extra  # keywords beyond the 26 a file name can hold

    def with_file(self, subdir, filename, flags, extra):
        return MessageInfo(self.uid, self.key, self.size, flags, self.internaldate, subdir, filename, extra)

    def __repr__(self):
        return f"<MessageInfo {self.uid} {self.subdir}/{self.filename}>"


class _Result:
    """What a blocking step found; applied in the reactor thread."""

    def __init__(self):
        self.msgs = None  # new full list (by UID), or None if unchanged
        self.added = []
        self.removed = []
        self.changed = []
        self.reset = False  # UIDVALIDITY changed: every UID is new
        self.cache = None
        self.first_recent = None
        self.value = None


def _dir_mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def _crlf_size(path):
    """RFC822.SIZE of a file without W= (written by mutt, Python's mailbox...)."""
    size = lf = crlf = 0
    last = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(256 * 1024)
            if not chunk:
                break
            size += len(chunk)
            lf += chunk.count(b"\n")
            crlf += chunk.count(b"\r\n") + (last + chunk[:1] == b"\r\n")
            last = chunk[-1:]
    return size + lf - crlf


class FolderGone(KeyError):
    """The folder was deleted while open."""


@implementer(IMailFolder)
class MaildirMailFolder:
    """
    A maildir folder as IMAP sees it. Made by L{MaildirStore} only, one per
    folder directory per process; every session shares it.
    """

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
        self._subscribers = []
        self._loaded = False
        self._gone = False
        self._stamps = None  # (new/ mtime, cur/ mtime, uidlist stamp)
        self._recheck_at = None  # time after which a rescan is due anyway
        self._seen_upto = 1  # every message with a smaller UID is in the view
        self._kw_stamp = None
        self._first_recent = 1
        self._index_dirty = False
        self._index_written = 0.0
        self._sync_waiters = None

    def __repr__(self):
        return f"<MaildirMailFolder {self.name!r} {self.path}>"

    # --- reading -------------------------------------------------------------

    def messages(self):
        return self._msgs

    def info(self, uid):
        """The L{MessageInfo} of `uid`, or None."""
        return self._by_uid.get(uid)

    def cached(self, uid, field):
        fields = self._cache.get(uid)
        return None if fields is None else fields.get(field)

    def cache(self, uid, field, value):
        if uid not in self._by_uid:
            return
        self._cache.setdefault(uid, {})[field] = value
        self._cache_pending.append((uid, field, value))
        if len(self._cache_pending) >= CACHE_BATCH:
            self.flush()

    def claim_recent(self, uids):
        # RFC 3501 2.3.2: \Recent goes to the first session told of a message.
        # As Dovecot's first_recent_uid: UIDs from here on are still unclaimed.
        claimed = {uid for uid in uids if uid >= self._first_recent}
        if claimed:
            self._first_recent = max(claimed) + 1
            self._index_dirty = True
        return claimed

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

    # --- change notification ----------------------------------------------------

    def subscribe(self, callback):
        token = [callback]
        self._subscribers.append(token)
        if len(self._subscribers) == 1:
            self.store._watch(self)

        def unsubscribe():
            if token in self._subscribers:
                self._subscribers.remove(token)
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
        for token in list(self._subscribers):
            try:
                token[0](event)
            except Exception:
                log.failure("folder subscriber failed on {event}", event=event)

    # --- sync ------------------------------------------------------------------

    def sync(self):
        """
        See L{IMailFolder.sync}. Calls made while one waits for the lock
        share its result: a burst of deliveries costs one scan.
        """
        d = defer.Deferred()
        if self._sync_waiters is not None:
            self._sync_waiters.append(d)
            return d
        self._sync_waiters = [d]

        def start():
            waiters, self._sync_waiters = self._sync_waiters, None
            if self._gone:
                step = defer.fail(FolderGone(self.name))
            elif self._loaded and not self.needs_scan():
                step = defer.succeed(self._msgs)
            else:
                step = threads.deferToThread(self._scan).addCallback(self._apply)
            return step.addBoth(_fire, waiters)

        self._lock.run(start)
        return d

    def needs_scan(self):
        """Cheap (three stats): has the disk changed since the last scan?"""
        if not self._loaded:
            return True
        if self._recheck_at is not None and time.time() >= self._recheck_at:
            return True
        return self._current_stamps() != self._stamps

    def _current_stamps(self):
        return (
            _dir_mtime(os.path.join(self.path, "new")),
            _dir_mtime(os.path.join(self.path, "cur")),
            self._uidlist.current_stamp(),
        )

    def _list(self):
        """{key: (subdir, filename)} of new/ then cur/ (a file moved from
        new/ to cur/ meanwhile is then seen at least once)."""
        found = {}
        for subdir in ("new", "cur"):
            try:
                entries = os.listdir(os.path.join(self.path, subdir))
            except FileNotFoundError:
                ensure_maildir(self.path)
                continue
            for filename in entries:
                if filename.startswith("."):
                    continue
                key = names.split_info(filename)[0]
                if subdir == "cur" or key not in found:
                    found[key] = (subdir, filename)
        return found

    def _locate(self, key):
        """(subdir, filename) of `key` now, or None."""
        for subdir in ("cur", "new"):
            try:
                entries = os.listdir(os.path.join(self.path, subdir))
            except FileNotFoundError:
                continue
            for filename in entries:
                if filename == key or filename.startswith(key + ":"):
                    return subdir, filename
        return None

    def _scan(self):
        """The blocking part of a sync (holding the folder lock)."""
        started = time.time()
        ul, kw = self._uidlist, self._keywords
        result = _Result()
        known = self._by_key
        old_uidvalidity = self.uidvalidity
        saved = None
        if not self._loaded:
            saved = index.load_index(self.path)
            if saved is not None:
                old_uidvalidity = saved.get("uidvalidity") or 0
                if self._adopt_index(saved, result):
                    return result
        # The uidlist is read before the directories are listed, so every
        # file it names (with a UID below nextuid) is in the listing.
        state = self._refresh_uidlist()
        kw.refresh()
        found = self._list()
        if saved is not None:
            known = _entries_from_index(saved, kw)
            result.first_recent = saved.get("first_recent", 1)
        elif not self._loaded:
            # A folder seen for the first time (no index): what waits in new/
            # is recent, as Dovecot treats it.
            result.first_recent = None
        if self._loaded and known:
            gone = [k for k in known if k not in found]
            if gone:
                # A rename by another program may hide a file from one
                # listing; a second look tells a move from a removal.
                found.update({k: v for k, v in self._list().items() if k in known})
        lost = state == "missing" and old_uidvalidity
        new_keys = [k for k in found if k not in ul.uids]
        if state == "missing" or new_keys or ul.records > 2 * len(found) + 1000:
            with ul.locked():
                again = self._refresh_uidlist()
                if again == "missing":
                    validity = max(int(time.time()), old_uidvalidity + 1) if old_uidvalidity else int(time.time())
                    ul.create(validity)
                    lost = bool(old_uidvalidity)
                if again == "changed" or lost:
                    found = self._list()  # others assigned UIDs: see their files
                new_keys = sorted((k for k in found if k not in ul.uids), key=names.sort_key)
                ul.assign(new_keys)
                if ul.records > 2 * len(found) + 1000:
                    ul.compact(set(found))
        self._seen_upto = ul.nextuid
        if lost:
            log.warn("{path}: dovecot-uidlist was lost; UIDVALIDITY is now {v}", path=self.path, v=ul.uidvalidity)
            known = {}
            result.reset = True
        kw_changed = kw.stamp != self._kw_stamp
        infos = []
        for key, (subdir, filename) in found.items():
            uid = ul.uids.get(key)
            if uid is None:
                continue
            old = known.get(key)
            if old is not None and old.uid != uid:
                old = None  # the uidlist was rebuilt by someone else
            if old is not None and old.filename == filename and old.subdir == subdir and not kw_changed:
                infos.append(old)
                continue
            info = self._describe(uid, key, subdir, filename, old)
            if info is not None:
                infos.append(info)
        if result.first_recent is None:
            fresh = [i.uid for i in infos if i.subdir == "new"]
            result.first_recent = min(fresh) if fresh else ul.nextuid
        infos = self._move_new_to_cur(infos)
        infos.sort(key=lambda i: i.uid)
        self._finish_scan(result, infos, known, started)
        if not self._loaded:
            result.cache, self._cache_lines = index.load_cache(self.path, ul.uidvalidity)
        return result

    def _refresh_uidlist(self):
        try:
            return self._uidlist.refresh()
        except TemporaryFailure as e:
            # A broken uidlist is a lost one (Dovecot rebuilds it too); keep
            # the bad file for the operator.
            log.error("{error}; moved aside and rebuilt", error=e.args[0])
            try:
                os.rename(self._uidlist.path, self._uidlist.path + ".broken")
            except OSError:
                pass
            return "missing"

    def _describe(self, uid, key, subdir, filename, old):
        """A MessageInfo for a file, reusing what `old` knew; None if gone."""
        info = names.split_info(filename)[1]
        extra = old.extra if old is not None else frozenset()
        flags = self._keywords.flags_from_info(info) | extra
        if old is not None:
            return MessageInfo(uid, key, old.size, flags, old.internaldate, subdir, filename, extra)
        path = os.path.join(self.path, subdir, filename)
        try:
            st = os.stat(path)
            size = names.sizes_from_key(key)[1]
            if size is None:
                size = _crlf_size(path)
        except FileNotFoundError:
            return None
        return MessageInfo(uid, key, size, flags, st.st_mtime, subdir, filename, extra)

    def _move_new_to_cur(self, infos):
        """
        Move what has a UID from new/ to cur/ (maildir spec; Dovecot does
        the same), so mutt sees it as no longer new. A read-only folder
        keeps it in new/.
        """
        out = []
        for info in infos:
            if info.subdir != "new":
                out.append(info)
                continue
            letters = names.split_info(info.filename)[1]
            target = f"{info.key}:2,{letters}"
            try:
                os.rename(os.path.join(self.path, "new", info.filename), os.path.join(self.path, "cur", target))
                info = info.with_file("cur", target, info.flags, info.extra)
            except FileNotFoundError:
                found = self._locate(info.key)
                if found is None:
                    continue
                info = self._describe(info.uid, info.key, found[0], found[1], info)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
            out.append(info)
        return out

    def _finish_scan(self, result, infos, known, started):
        ul = self._uidlist
        before = {i.uid: i for i in known.values()} if not result.reset else {}
        now = {i.uid: i for i in infos}
        if result.reset:
            result.removed = sorted(self._by_uid)
            result.added = sorted(now)
        else:
            result.removed = sorted(uid for uid in self._by_uid if uid not in now)
            result.added = sorted(uid for uid in now if uid not in self._by_uid)
            result.changed = sorted(
                uid for uid, i in now.items() if uid in self._by_uid and self._by_uid[uid].flags != i.flags
            )
        result.msgs = infos
        result.value = (ul.uidvalidity, ul.nextuid)
        stamps = self._current_stamps()
        result.stamps = stamps
        newest = max((s for s in stamps[:2] if s is not None), default=0) / 1e9
        result.recheck_at = time.time() + SYNC_SECS if newest >= started - SYNC_SECS else None
        result.kw_stamp = self._keywords.stamp
        result.dirty = bool(result.added or result.removed or result.changed or before.keys() != now.keys())

    def _adopt_index(self, saved, result):
        """
        Take the folder from the index if nothing changed since it was
        written (new/, cur/ and the uidlist as it saw them): SELECT of a
        large folder then reads one file and lists no directory.
        """
        try:
            stamps = (saved["new"], saved["cur"], tuple(saved["uidlist"]) if saved["uidlist"] else None)
            if saved.get("recheck") or stamps != self._current_stamps() or stamps[2] is None:
                return False
            self._keywords.refresh()
            if saved.get("keywords") != list(self._keywords.stamp or ()):
                return False
            entries = _entries_from_index(saved, self._keywords)
            self._uidlist.adopt(
                stamps[2], saved["uidvalidity"], saved["nextuid"], {k: i.uid for k, i in entries.items()}, saved["records"]
            )
        except (KeyError, TypeError, ValueError):
            return False
        infos = sorted(entries.values(), key=lambda i: i.uid)
        result.msgs = infos
        result.added = [i.uid for i in infos]
        result.value = (saved["uidvalidity"], saved["nextuid"])
        result.stamps = stamps
        result.recheck_at = None
        result.kw_stamp = self._keywords.stamp
        result.first_recent = saved.get("first_recent", 1)
        result.dirty = False
        self._seen_upto = saved["nextuid"]
        result.cache, self._cache_lines = index.load_cache(self.path, saved["uidvalidity"])
        return True

    def _apply(self, result):
        """Install a scan's view and tell the subscribers (reactor thread)."""
        first = not self._loaded
        self._install(result.msgs)
        self.uidvalidity, self.uidnext = result.value
        self._stamps = result.stamps
        self._recheck_at = result.recheck_at
        self._kw_stamp = result.kw_stamp
        if result.cache is not None:
            self._cache = result.cache
        if result.first_recent is not None and first:
            self._first_recent = result.first_recent
        if result.reset:
            self._cache = {}
        else:
            for uid in result.removed:
                self._cache.pop(uid, None)
        self._loaded = True
        if result.dirty or first and not os.path.exists(os.path.join(self.path, index.INDEX)):
            self._index_dirty = True
            if first or time.time() - self._index_written >= INDEX_DELAY:
                self._write_index_soon()
        if not first:
            self._publish("expunge", result.removed)
            self._publish("exists", result.added)
            self._publish("flags", result.changed)
        return self._msgs

    def _install(self, infos):
        self._msgs = infos
        self._by_uid = {i.uid: i for i in infos}
        self._by_key = {i.key: i for i in infos}

    # --- the index ---------------------------------------------------------------

    def _snapshot(self):
        ul = self._uidlist
        new, cur, ulstamp = self._stamps or (None, None, None)
        return {
            "uidvalidity": self.uidvalidity,
            "nextuid": self.uidnext,
            "records": ul.records,
            "uidlist": list(ulstamp) if ulstamp else None,
            "new": new,
            "cur": cur,
            "recheck": self._recheck_at is not None,
            "keywords": list(self._kw_stamp or ()),
            "first_recent": self._first_recent,
            "messages": [
                [i.uid, i.subdir, i.filename, i.size, i.internaldate] + ([sorted(i.extra)] if i.extra else [])
                for i in self._msgs
            ],
        }

    def _write_index_soon(self):
        """Write the index in the thread pool (called holding the lock)."""
        snap = self._snapshot()
        self._index_dirty = False
        self._index_written = time.time()
        path = self.path
        d = threads.deferToThread(index.save_index, path, snap)
        d.addErrback(lambda f: log.failure("writing the index of {path}", f, path=path))

    def flush(self):
        """Write the index and cache values not yet on disk."""

        def run():
            if self._gone or not self._loaded:
                return None
            if self._index_dirty:
                self._write_index_soon()
            pending, self._cache_pending = self._cache_pending, []
            if not pending:
                return None
            live = len(self._by_uid) * 2
            uidvalidity = self.uidvalidity
            self._cache_lines += len(pending)
            if self._cache_lines > 2 * live + 1000:
                whole = {uid: dict(fields) for uid, fields in self._cache.items()}
                self._cache_lines = sum(len(f) for f in whole.values())
                return threads.deferToThread(index.rewrite_cache, self.path, uidvalidity, whole)
            return threads.deferToThread(index.append_cache, self.path, uidvalidity, pending)

        d = self._lock.run(run)
        d.addErrback(lambda f: log.failure("flushing the index of {path}", f, path=self.path))
        return d

    def flush_due(self):
        """True when lazily kept index or cache data is worth writing now."""
        if self._cache_pending:
            return True
        return self._index_dirty and time.time() - self._index_written >= INDEX_DELAY

    # --- flags --------------------------------------------------------------------

    def store_flags(self, uids, flags, mode, origin=None):
        if mode not in ("+", "-", "="):
            return defer.fail(ValueError(f"bad flag mode {mode!r}"))
        flags = normalise(flags)

        def work():
            plan = []
            for uid in sorted(set(uids)):
                info = self._by_uid.get(uid)
                if info is None:
                    continue
                if mode == "+":
                    wanted = info.flags | flags
                elif mode == "-":
                    wanted = frozenset(f for f in info.flags if f not in flags and f.lower() not in _lower(flags))
                else:
                    wanted = flags
                plan.append((info, wanted))
            self._ensure_keywords(set().union(*(w for _, w in plan)) if plan else ())
            return self._rename_all(plan)

        def apply(done):
            changed = []
            for info in done.values():
                if self._by_uid.get(info.uid) is not None:
                    if self._by_uid[info.uid].flags != info.flags:
                        changed.append(info.uid)
                    self._replace(info)
            self._publish("flags", changed, origin)
            return {uid: info.flags for uid, info in done.items()}

        return self._locked(work, apply)

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
        before = _dir_mtime(cur)
        done, renamed = {}, False
        for info, wanted in plan:
            letters, extra = kw.info_for(wanted, names.split_info(info.filename)[1])
            target = f"{info.key}:2,{letters}"
            new_flags = kw.flags_from_info(letters) | extra
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
                new_flags = kw.flags_from_info(letters) | extra
                os.rename(os.path.join(self.path, *found), os.path.join(cur, target))
            renamed = True
            done[info.uid] = info.with_file("cur", target, new_flags, extra)
        if renamed:
            fsync_dir(cur)
            self._note_own_change(before, "cur")
        return done

    def _note_own_change(self, before, which):
        """
        After our own renames, take cur/'s (or new/'s) new mtime as seen if
        nobody else changed it first, so the next sync needn't rescan; a
        rescan still follows SYNC_SECS later for same-tick changes by others.
        """
        if self._stamps is None:
            return
        position = 1 if which == "cur" else 0
        if before != self._stamps[position]:
            return
        stamps = list(self._stamps)
        stamps[position] = _dir_mtime(os.path.join(self.path, which))
        stamps[2] = self._uidlist.current_stamp() if stamps[2] == self._uidlist.stamp else stamps[2]
        self._pending_stamps = (tuple(stamps), time.time() + SYNC_SECS)

    def _locked(self, work, apply):
        """Run `work` in a thread and `apply` in the reactor, holding the lock."""
        if self._gone:
            return defer.fail(FolderGone(self.name))

        def run():
            self._pending_stamps = None
            d = threads.deferToThread(work)
            d.addCallback(self._take_stamps)
            return d.addCallback(apply)

        return self._lock.run(run)

    def _take_stamps(self, value):
        pending = getattr(self, "_pending_stamps", None)
        if pending is not None:
            self._stamps, self._recheck_at = pending
            self._pending_stamps = None
        self._index_dirty = True
        return value

    def _replace(self, info):
        old = self._by_uid.get(info.uid)
        if old is None:
            return
        self._by_uid[info.uid] = info
        self._by_key[info.key] = info
        # Binary search on the UID-ordered list.
        lo, hi = 0, len(self._msgs)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._msgs[mid].uid < info.uid:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self._msgs) and self._msgs[lo].uid == info.uid:
            self._msgs[lo] = info

    # --- new messages ---------------------------------------------------------------

    def _add_files(self, entries):
        """
        Give UIDs to files we just put in cur/ (blocking, holding the lock):
        [(key, filename, size, internaldate, extra)] -> [MessageInfo]. When
        another process handed out UIDs since our last look, a full scan
        first brings their messages in, so UIDs stay ascending for sessions.
        """
        ul = self._uidlist
        with ul.locked():
            state = self._refresh_uidlist()
            if state is None or (state == "changed" and ul.nextuid == self._seen_upto):
                assigned = ul.assign([e[0] for e in entries])
                self._seen_upto = ul.nextuid
                infos = []
                for key, filename, size, internaldate, extra in entries:
                    flags = self._keywords.flags_from_info(names.split_info(filename)[1]) | extra
                    infos.append(MessageInfo(assigned[key], key, size, flags, internaldate, "cur", filename, extra))
                return infos, None
        scan = self._scan()
        by_key = {i.key: i for i in scan.msgs}
        return [by_key[e[0]] for e in entries if e[0] in by_key], scan

    def _apply_added(self, infos, scan, origin):
        """Install messages we added (reactor thread) and publish them."""
        if scan is not None:
            ours = {i.uid for i in infos}
            scan.added = [u for u in scan.added if u not in ours]
            self._apply(scan)
        else:
            self._msgs = self._msgs + infos
            for info in infos:
                self._by_uid[info.uid] = info
                self._by_key[info.key] = info
            self.uidnext = self._uidlist.nextuid
            self._index_dirty = True
        self._publish("exists", [i.uid for i in infos], origin)

    def append(self, source, flags=(), internaldate=None, origin=None):
        flags = normalise(flags)

        def work():
            self._ensure_keywords(flags)
            letters, extra = self._keywords.info_for(flags)
            key = write_message(self.path, source, letters, cur=True, mtime=internaldate)
            filename = f"{key}:2,{letters}"
            when = internaldate if internaldate is not None else os.stat(os.path.join(self.path, "cur", filename)).st_mtime
            size = names.sizes_from_key(key)[1]
            return self._add_files([(key, filename, size, when, extra)])

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
                self._pending_stamps = None
                d = threads.deferToThread(self._transfer_work, uids, target, move)
                return d.addCallback(self._transfer_apply, target, origin)

            return second._lock.run(inner)

        return first._lock.run(outer)

    def _transfer_work(self, uids, target, move):
        infos = [self._by_uid[u] for u in sorted(set(uids)) if u in self._by_uid]
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
        by_key = {i.key: i.uid for i in added}
        mapping = [(uid, by_key[e[0]]) for uid, e in zip(pairs, entries) if e[0] in by_key]
        return mapping, scan, added, moved

    def _transfer_apply(self, result, target, origin):
        mapping, scan, added, moved = result
        if added:
            target._apply_added(added, scan, origin)
        if moved:
            self._drop(moved)
            self._publish("expunge", moved, origin)
        return mapping

    def _drop(self, uids):
        gone = set(uids)
        self._install([i for i in self._msgs if i.uid not in gone])
        for uid in gone:
            self._cache.pop(uid, None)
        self._index_dirty = True

    def expunge(self, uids=None, origin=None):
        wanted = None if uids is None else set(uids)

        def work():
            removed, touched = [], set()
            before = {d: _dir_mtime(os.path.join(self.path, d)) for d in ("new", "cur")}
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
            for which in ("cur", "new"):
                if os.path.join(self.path, which) in touched:
                    self._note_own_change(before[which], which)
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


def _fire(result, waiters):
    for waiter in waiters:
        waiter.callback(result)
    return None


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


def _entries_from_index(saved, keywords):
    """{key: MessageInfo} from an index's message list."""
    out = {}
    for row in saved.get("messages", ()):
        uid, subdir, filename, size, internaldate = row[:5]
        extra = frozenset(row[5]) if len(row) > 5 else frozenset()
        key, letters = names.split_info(filename)
        flags = keywords.flags_from_info(letters) | extra
        out[key] = MessageInfo(uid, key, size, flags, internaldate, subdir, filename, extra)
    return out
