"""
What every IMAP folder of a store does the same way, whatever the files
look like: the in-memory view's lookups, the protocol's metadata cache,
and \\Recent kept as Dovecot's first unclaimed UID.

A folder class mixes this in and keeps `_msgs` (infos by ascending UID),
`_by_uid`, `_cache`, `_cache_pending`, `_flush_queued` and
`_first_recent`; it provides `flush()` and `_recent_claimed()` (how it
persists the new first unclaimed UID).
"""

from bisect import bisect_left

# Cached values written to the index in batches of this many.
CACHE_BATCH = 500


def uid_of(info):
    return info.uid


class FolderViewMixin:
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
