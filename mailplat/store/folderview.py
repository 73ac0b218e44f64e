"""
What every IMAP folder of a store does the same way, whatever the files
look like: the in-memory view's lookups, the protocol's metadata cache,
and \\Recent kept as Dovecot's first unclaimed UID.

A folder class mixes this in and keeps `_msgs` (infos by ascending UID),
`_by_uid`, `_cache`, `_cache_pending`, `_flush_queued` and
`_first_recent`, `_index_dirty`, `_index_written`, `_gone`, `_loaded`,
`_sync_waiters`, `_lock` (a DeferredLock), `_modseq` (a
L{mailplat.store.modseq.ModSeqs}); it provides `flush()`,
`needs_scan()`, `_rescan()` (read the disk, apply, fire with the
messages), `_recent_claimed()` (persist the new first unclaimed UID), and
the class attributes `gone_error` and `index_delay`.
"""

import time
from bisect import bisect_left

from twisted.internet import defer

from mailplat.store import modseq

# Cached values written to the index in batches of this many.
CACHE_BATCH = 500


def uid_of(info):
    return info.uid


def _fire(result, waiters):
    for waiter in waiters:
        waiter.callback(result)  # a Failure goes down the errback chain
    return None


class FolderViewMixin:
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
                step = defer.fail(self.gone_error(self.name))
            elif self._loaded and not self.needs_scan():
                step = defer.succeed(self._msgs)
            else:
                step = self._rescan()
            return step.addBoth(_fire, waiters)

        self._lock.run(start)
        return d

    def flush_due(self):
        """True when lazily kept index or cache data is worth writing now (the poller asks)."""
        if self._cache_pending:
            return True
        return self._index_dirty and time.time() - self._index_written >= self.index_delay

    def messages(self):
        return self._msgs

    def info(self, uid):
        """The message info of `uid`, or None (no I/O)."""
        return self._by_uid.get(uid)

    def cached(self, uid, field):
        fields = self._cache.get(uid)
        return None if fields is None else fields.get(field)

    def cache(self, uid, field, value):
        if uid not in self._by_uid:
            return
        self._cache.setdefault(uid, {})[field] = value
        self._cache_pending.append((uid, field, value))
        # One flush queued at a time: a fast FETCH caches faster than a
        # flush is written, and thousands of flushes waiting on the folder
        # lock would exhaust the stack when they ran.
        if len(self._cache_pending) >= CACHE_BATCH and not self._flush_queued:
            self.flush()

    # --- RFC 7162 mod-sequences (IModSeqFolder; mailplat.store.modseq) ----------

    def _settle(self, infos, removed=(), reset=False):
        """
        L{modseq.settle} for this folder. A folder no session watches is
        freed when its command is done, before the poller would write its
        index, and the next one made would have to number every message
        again (the ceiling is ahead of that index): the store holds it
        until it is written (`_hold`).
        """
        value = modseq.settle(self._modseq, infos, removed, reset)
        if value is not None and not self._subscribers:
            self.store._hold(self)
        return value

    @property
    def highestmodseq(self):
        return self._modseq.highest

    def vanished(self, modseq):
        return self._modseq.vanished(modseq)

    def claim_recent(self, uids):
        # RFC 3501 2.3.2: \Recent goes to the first session told of a message.
        # As Dovecot's first_recent_uid: UIDs from here on are still unclaimed.
        claimed = {uid for uid in uids if uid >= self._first_recent}
        if claimed:
            self._first_recent = max(claimed) + 1
            self._recent_claimed()
        return claimed

    def recent_count(self):
        # RFC 3501 6.3.10, 6.3.2: counted without claiming; the unclaimed
        # messages are those from _first_recent on, the tail of the view.
        msgs = self._msgs
        return len(msgs) - bisect_left(msgs, self._first_recent, key=uid_of)


HELD = 256  # changed folders nobody watches kept for their index to be written; more are written at once
# Folders kept in memory after their last session left, and for how long:
# a client that logs out and in again (or a second client) finds a large
# folder ready instead of reading its index anew.
KEPT = 16
KEPT_SECONDS = 600.0


class HeldFolders:
    """
    A store's care for folders nobody watches (both stores mix it in):
    one that changed is kept until its index is written, so that its
    mod-sequences survive the folder being dropped; the last KEPT left
    by their sessions stay for KEPT_SECONDS. The store keeps `_held` and
    `_kept` (ordered dicts), `_watched` and `_poller`.
    """

    def _unwatch(self, folder):
        self._watched.discard(folder)
        if not self._watched and self._poller is not None:
            poller, self._poller = self._poller, None
            if poller.running:
                poller.stop()
        if not folder._gone:
            self._kept.pop(folder, None)
            self._kept[folder] = time.monotonic()
            while len(self._kept) > KEPT:
                del self._kept[next(iter(self._kept))]

    def _drop_kept(self):
        """Let go of the folders kept longer than KEPT_SECONDS, or deleted."""
        if not self._kept:
            return
        too_old = time.monotonic() - KEPT_SECONDS
        for folder, since in list(self._kept.items()):
            if since < too_old or folder._gone:
                del self._kept[folder]

    def _hold(self, folder):
        """
        A folder nobody watches changed (FolderViewMixin._settle): keep it
        until its index is written, at the next poll or folder opened after
        INDEX_DELAY (or at close), so that its mod-sequences are kept.
        """
        self._held.pop(folder, None)
        self._held[folder] = None
        while len(self._held) > HELD:
            oldest = next(iter(self._held))
            del self._held[oldest]
            oldest.flush()

    def _flush_held(self):
        self._drop_kept()
        for folder in list(self._held):
            if folder._gone or folder._subscribers or not (folder._index_dirty or folder._cache_pending):
                del self._held[folder]  # the poller or the last session's flush writes a watched one
            elif folder.flush_due():
                del self._held[folder]
                folder.flush()
