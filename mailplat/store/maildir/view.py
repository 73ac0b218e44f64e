"""
A maildir folder's view of the disk: which messages it holds, with which
UIDs, flags, sizes and dates; kept in step with new/, cur/ and
`dovecot-uidlist` by scanning, and saved in the folder's index.

Other processes (a second mailplat, Dovecot, mutt, mbsync) are coped with
as Dovecot does (see its maildir-sync.c): UIDs are handed out under the
uidlist dotlock after re-reading it, and a folder is rescanned when new/,
cur/ or the uidlist change, or when their mtime was too recent to be
trusted. Every method here blocks or must run holding the folder's lock;
L{MaildirMailFolder} (mailfolder.py) is the IMAP side built on it.
"""

import errno
import os
import re
import time
from sys import intern

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import IMessageInfo, TemporaryFailure
from mailplat.store.maildir import index, layout, names
from mailplat.store.maildir.uidlist import next_uidvalidity

log = Logger()

# Dovecot's MAILDIR_SYNC_SECS: a directory whose mtime is this close to the
# scan may change again within the same timestamp, so it is scanned again.
SYNC_SECS = 1.0


# The index is rewritten at most this often (it is a cache).
INDEX_DELAY = 5.0


# One shared empty set: most messages have no keywords beyond the 26 letters.
NO_FLAGS = frozenset()


_DIGITS = re.compile(r"\d+").match


@implementer(IMessageInfo)
class MessageInfo:
    """One message as the folder knows it; replaced, never changed."""

    __slots__ = ("uid", "key", "size", "flags", "internaldate", "subdir", "filename", "extra", "modseq")

    def __init__(self, uid, key, size, flags, internaldate, subdir, filename, extra=NO_FLAGS, modseq=0):
        self.uid = uid
        self.key = key
        self.size = size
        self.flags = flags
        self.internaldate = internaldate
        self.subdir = subdir
        self.filename = filename
        self.extra = extra  # keywords beyond the 26 a file name can hold
        # RFC 7162: set once when the info is installed (0: not yet; see
        # mailplat.store.modseq.settle); kept by a replacement with the same flags.
        self.modseq = modseq

    def with_file(self, subdir, filename, flags, extra):
        kept = self.modseq if flags == self.flags else 0
        return MessageInfo(self.uid, self.key, self.size, flags, self.internaldate, subdir, filename, extra, kept)

    @property
    def savedate(self):
        """RFC 8514: when the file was saved in this folder, from its unique name (L{names.saved_at})."""
        return names.saved_at(self.key)

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
        self.from_index = False
        self.index_removed = []  # UIDs the index had and the disk has not (first scan)


class FolderGone(KeyError):
    """The folder was deleted while open."""


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


class FolderView:
    """
    The scanning half of L{MaildirMailFolder}: the subclass sets up the
    attributes (see its __init__) and provides `_publish`.
    """

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
        """
        ({key: filename}, {keys of the files in new/}). new/ is listed
        before cur/, so a file moved from one to the other meanwhile is seen
        at least once. (Not re-created when missing: the folder may be
        being renamed.)
        """
        try:
            entries = os.listdir(os.path.join(self.path, "new"))
            in_new = {f.partition(":")[0]: f for f in entries if f[:1] != "."}
        except FileNotFoundError:
            in_new = {}
        try:
            entries = os.listdir(os.path.join(self.path, "cur"))
            # Interned: the uidlist holds the same keys, once in memory.
            found = {intern(f.partition(":")[0]): f for f in entries if f[:1] != "."}
        except FileNotFoundError:
            found = {}
        for key in list(in_new):
            if key in found:
                del in_new[key]
            else:
                found[key] = in_new[key]
        return found, in_new.keys()

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
        if not os.path.isdir(self.path):
            raise FolderGone(self.name)
        ul, kw = self._uidlist, self._keywords
        result = _Result()
        known = self._by_key
        old_uidvalidity = self.uidvalidity
        saved = None
        if not self._loaded:
            saved = index.load_index(self.path)
            self._modseq.load(saved)
            if saved is not None:
                old_uidvalidity = saved.get("uidvalidity") or 0
                if self._adopt_index(saved, result):
                    return result
        # The uidlist is read before the directories are listed, so every
        # file it names (with a UID below nextuid) is in the listing.
        state = self._refresh_uidlist()
        kw.refresh()
        found, in_new = self._list()
        if saved is not None:
            known = _entries_from_index(saved, kw, self._modseq)
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
                again, again_new = self._list()
                back = {k: v for k, v in again.items() if k in known and k not in found}
                found.update(back)
                in_new = set(in_new) | {k for k in back if k in again_new}
        lost = state == "missing" and old_uidvalidity
        new_keys = [k for k in found if k not in ul.uids]
        if state == "missing" or new_keys or ul.records > 2 * len(found) + 1000:
            with ul.locked():
                again = self._refresh_uidlist()
                if again == "missing":
                    ul.create(next_uidvalidity(layout.root_of(self.path, self.name), old_uidvalidity))
                    lost = bool(old_uidvalidity)
                if again == "changed" or lost:
                    found, in_new = self._list()  # others assigned UIDs: see their files
                new_keys = names.sorted_keys(k for k in found if k not in ul.uids)
                ul.assign(new_keys)
                if ul.records > 2 * len(found) + 1000:
                    ul.compact(set(found))
        self._seen_upto = ul.nextuid
        if lost:
            log.warn("{path}: dovecot-uidlist was lost; UIDVALIDITY is now {v}", path=self.path, v=ul.uidvalidity)
            known = {}
            result.reset = True
        kw_changed = kw.stamp != self._kw_stamp
        infos, fresh, unknown = [], [], []
        uid_of, known_info = ul.uids.get, known.get
        for key, filename in found.items():
            uid = uid_of(key)
            if uid is None:
                continue
            old = known_info(key)
            subdir = "new" if key in in_new else "cur"
            if old is not None:
                if old.uid != uid:
                    old = None  # the uidlist was rebuilt by someone else
                elif old.filename == filename and old.subdir == subdir and not kw_changed:
                    (fresh if subdir == "new" else infos).append(old)
                    continue
            if old is None:
                unknown.append((uid, key, subdir, filename))
                continue
            info = self._describe(uid, key, subdir, filename, old)
            if info is not None:
                (fresh if info.subdir == "new" else infos).append(info)
        for info in self._describe_new(unknown):
            (fresh if info.subdir == "new" else infos).append(info)
        if result.first_recent is None:
            result.first_recent = min((i.uid for i in fresh), default=ul.nextuid)
        if fresh:
            infos.extend(self._move_new_to_cur(fresh))
        infos.sort(key=_by_uid)
        if saved is not None and not lost:
            # RFC 7162: what went while no process watched is expunged too.
            present = {i.uid for i in infos}
            result.index_removed = sorted(i.uid for i in known.values() if i.uid not in present)
        self._finish_scan(result, infos, started)
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
        extra = old.extra if old is not None else NO_FLAGS
        flags = _with(self._keywords.flags_from_info(info), extra)
        if old is not None:
            kept = old.modseq if flags == old.flags else 0
            return MessageInfo(uid, key, old.size, flags, old.internaldate, subdir, filename, extra, kept)
        vsize = _vsize(key)
        for attempt in range(3):
            path = f"{self.path}/{subdir}/{filename}"
            try:
                st = os.stat(path)
                size = vsize
                if size is None:
                    size = _crlf_size(path)
                break
            except FileNotFoundError:
                # Renamed since the listing (moved to cur/, flagged) by
                # another program: follow it; only a removed file is gone.
                found = self._locate(key)
                if found is None:
                    return None
                subdir, filename = found
                flags = _with(self._keywords.flags_from_info(names.split_info(filename)[1]), extra)
        else:
            return None
        return MessageInfo(uid, key, size, flags, st.st_mtime, subdir, filename, extra)

    def _describe_new(self, entries):
        """
        L{_describe} of files seen for the first time, [(uid, key, subdir,
        filename)] -> [MessageInfo], the common case at its cheapest: the
        size from W=, the flags memoised per info string, and one stat
        relative to an open directory each (a folder copied in holds tens
        of thousands). A file renamed meanwhile goes through L{_describe}.
        """
        out = []
        if not entries:
            return out
        flags_of = self._keywords.flags_from_info
        dirs = {}
        try:
            for subdir in ("cur", "new"):
                try:
                    dirs[subdir] = os.open(os.path.join(self.path, subdir), os.O_RDONLY | os.O_DIRECTORY)
                except FileNotFoundError:
                    pass
            stat, append = os.stat, out.append
            for uid, key, subdir, filename in entries:
                fd = dirs.get(subdir)
                size = _vsize(key)
                if fd is not None and size is not None:
                    try:
                        when = stat(filename, dir_fd=fd).st_mtime
                    except FileNotFoundError:
                        pass
                    else:
                        letters = filename.partition(":")[2]
                        letters = letters[2:] if letters.startswith("2,") else ""
                        append(MessageInfo(uid, key, size, flags_of(letters), when, subdir, filename))
                        continue
                info = self._describe(uid, key, subdir, filename, None)
                if info is not None:
                    append(info)
        finally:
            for fd in dirs.values():
                os.close(fd)
        return out

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

    def _finish_scan(self, result, infos, started):
        ul = self._uidlist
        now = {i.uid: i for i in infos}
        shown = self._by_uid
        if result.reset:
            result.removed = sorted(shown)
            result.added = sorted(now)
        else:
            result.removed = sorted(shown.keys() - now.keys())
            result.added = sorted(now.keys() - shown.keys())
            result.changed = [
                i.uid for i in infos if (o := shown.get(i.uid)) is not None and o is not i and o.flags != i.flags
            ]
        result.msgs = infos
        result.by_uid = now
        result.by_key = {i.key: i for i in infos}
        result.value = (ul.uidvalidity, ul.nextuid)
        stamps = self._current_stamps()
        result.stamps = stamps
        newest = max((s for s in stamps[:2] if s is not None), default=0) / 1e9
        result.recheck_at = time.time() + SYNC_SECS if newest >= started - SYNC_SECS else None
        result.kw_stamp = self._keywords.stamp
        result.dirty = bool(result.added or result.removed or result.changed)

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
            entries = _entries_from_index(saved, self._keywords, self._modseq)
            self._uidlist.adopt(
                stamps[2], saved["uidvalidity"], saved["nextuid"], {k: i.uid for k, i in entries.items()}, saved["records"]
            )
            self._uidlist.header = dict(saved.get("header") or {})
        except (KeyError, TypeError, ValueError):
            return False
        infos = sorted(entries.values(), key=_by_uid)
        result.msgs = infos
        result.by_uid = {i.uid: i for i in infos}
        result.by_key = {i.key: i for i in infos}
        result.added = [i.uid for i in infos]
        result.value = (saved["uidvalidity"], saved["nextuid"])
        result.stamps = stamps
        result.recheck_at = None
        result.kw_stamp = self._keywords.stamp
        result.first_recent = saved.get("first_recent", 1)
        result.dirty = False
        result.from_index = True
        self._seen_upto = saved["nextuid"]
        result.cache, self._cache_lines = index.load_cache(self.path, saved["uidvalidity"])
        return True

    def _apply(self, result):
        """Install a scan's view and tell the subscribers (reactor thread)."""
        first = not self._loaded
        self._install(result.msgs, result.by_uid, result.by_key)
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
            self._cache_lines = 0  # the file on disk names the old UIDVALIDITY
        else:
            for uid in result.removed:
                self._cache.pop(uid, None)
        gone = result.index_removed if first else result.removed
        numbered = self._settle(self._msgs, gone, result.reset) is not None
        self._loaded = True
        if result.from_index:
            self._index_stamps = self._stamp_state()
            self._index_dirty = self._index_dirty or numbered
        elif result.dirty or numbered or self._stamp_state() != self._index_stamps:
            # Changed, or the index on disk would make a later process
            # rescan (or trust what it must not).
            self._index_dirty = True
            if first or time.time() - self._index_written >= INDEX_DELAY:
                self._write_index_soon()
        if not first:
            self._publish("expunge", result.removed)
            self._publish("exists", result.added)
            self._publish("flags", result.changed)
        return self._msgs

    def _stamp_state(self):
        return (self._stamps, self._recheck_at is None)

    def _install(self, infos, by_uid=None, by_key=None):
        self._msgs = infos
        self._by_uid = {i.uid: i for i in infos} if by_uid is None else by_uid
        self._by_key = {i.key: i for i in infos} if by_key is None else by_key

    def _snapshot(self):
        ul = self._uidlist
        new, cur, ulstamp = self._stamps or (None, None, None)
        return {
            "uidvalidity": self.uidvalidity,
            "nextuid": self.uidnext,
            "records": ul.records,
            "header": ul.header,
            "uidlist": list(ulstamp) if ulstamp else None,
            "new": new,
            "cur": cur,
            "recheck": self._recheck_at is not None,
            "keywords": list(self._kw_stamp or ()),
            "first_recent": self._first_recent,
            # Rows are made in the thread; the infos never change.
            "messages": list(self._msgs),
            # RFC 7162 (mailplat.store.modseq): beside the rows, so that an
            # index without them (an older mailplat's) still loads.
            "modseqs": [i.modseq for i in self._msgs],
            **self._modseq.snapshot(),
        }

    def _write_index_soon(self):
        """Write the index in the thread pool (called holding the lock)."""
        snap = self._snapshot()
        self._index_dirty = False
        self._index_written = time.time()
        self._index_stamps = self._stamp_state()
        path = self.path
        # In order: a later snapshot is never overwritten by an earlier one.
        d = self._index_lock.run(threads.deferToThread, _save_snapshot, path, snap)
        d.addErrback(lambda f: log.failure("writing the index of {path}", f, path=path))
        return d

    def flush(self):
        """Write the index and cache values not yet on disk."""
        self._flush_queued = True

        def run():
            self._flush_queued = False
            if self._gone or not self._loaded:
                return None
            writes = []
            if self._index_dirty:
                writes.append(self._write_index_soon())
            pending, self._cache_pending = self._cache_pending, []
            if pending:
                uidvalidity = self.uidvalidity
                self._cache_lines += len(pending)
                # Values live are at least the messages cached: counted only when that is not enough.
                live = len(self._cache)
                if self._cache_lines > 2 * live + 1000:
                    live = sum(len(f) for f in self._cache.values())
                if self._cache_lines == len(pending) or self._cache_lines > 2 * live + 1000:
                    # New (or of an old UIDVALIDITY), or mostly dead lines
                    # (expunged, overwritten): start afresh.
                    whole = {uid: dict(fields) for uid, fields in self._cache.items()}
                    self._cache_lines = live
                    writes.append(threads.deferToThread(index.rewrite_cache, self.path, uidvalidity, whole))
                else:
                    writes.append(threads.deferToThread(index.append_cache, self.path, uidvalidity, pending))
            # Also wait for index writes already under way.
            writes.append(self._index_lock.run(lambda: None))
            return defer.gatherResults(writes)

        d = self._lock.run(run)
        d.addErrback(lambda f: log.failure("flushing the index of {path}", f, path=self.path))
        return d

    def _own_begin(self):
        """Stamps before a change of our own (blocking, holding the lock)."""
        return self._current_stamps()

    def _own_end(self, before):
        """
        After our own change, take the new stamps as seen if nobody changed
        the folder since our last scan, so the next sync needn't rescan; one
        rescan still follows SYNC_SECS later, for changes by others within
        the same timestamp (Dovecot's dirty_cur_time).
        """
        if self._stamps is not None and before == self._stamps:
            self._pending_stamps = (self._current_stamps(), time.time() + SYNC_SECS)

    def _take_stamps(self, value):
        pending = self._pending_stamps
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
            if state != "missing" and ul.nextuid == self._seen_upto:
                assigned = ul.assign([e[0] for e in entries])
                self._seen_upto = ul.nextuid
                infos = []
                for key, filename, size, internaldate, extra in entries:
                    flags = _with(self._keywords.flags_from_info(names.split_info(filename)[1]), extra)
                    infos.append(MessageInfo(assigned[key], key, size, flags, internaldate, "cur", filename, extra))
                return infos, None
        scan = self._scan()
        by_key = {i.key: i for i in scan.msgs}
        return [by_key[e[0]] for e in entries if e[0] in by_key], scan

    def _drop(self, uids):
        gone = set(uids)
        if not gone:
            return
        self._settle((), [u for u in gone if u in self._by_uid])
        self._msgs = [i for i in self._msgs if i.uid not in gone]
        for uid in gone:
            info = self._by_uid.pop(uid, None)
            if info is not None:
                self._by_key.pop(info.key, None)
            self._cache.pop(uid, None)
        self._index_dirty = True


def _vsize(key):
    """W= of a key (RFC822.SIZE), None without one."""
    at = key.find(",W=")
    if at < 0:
        return None
    m = _DIGITS(key, at + 3)  # one C call from where W= is: a cold scan does 20,000
    return int(m.group()) if m else None


def _with(flags, extra):
    # Most messages have no overflow keywords: keep the shared frozenset.
    return flags | extra if extra else flags


def _by_uid(info):
    return info.uid


def _entries_from_index(saved, keywords, modseqs):
    """{key: MessageInfo} from an index's message list (modseqs: the folder's L{modseq.ModSeqs}, loaded)."""
    out = {}
    none = NO_FLAGS
    flags_of = keywords.flags_from_info
    rows = saved.get("messages", ())
    for row, value in zip(rows, modseqs.index_modseqs(saved, len(rows))):
        uid, subdir, filename, size, internaldate = row[:5]
        key, _, info = filename.partition(":")
        flags = flags_of(info[2:] if info.startswith("2,") else "")
        if len(row) > 5:
            extra = frozenset(row[5])
            flags = flags | extra
        else:
            extra = none
        out[key] = MessageInfo(uid, key, size, flags, internaldate, subdir, filename, extra, value)
    return out


def _save_snapshot(path, snap):
    snap["messages"] = [
        [i.uid, i.subdir, i.filename, i.size, i.internaldate] + ([sorted(i.extra)] if i.extra else [])
        for i in snap["messages"]
    ]
    index.save_index(path, snap)
