"""
One sql-store mailbox with IMAP semantics (L{IMailFolder}, L{IBatchOpen},
L{IModSeqFolder}): an in-memory view of its messages, kept in step with
the database by mod-sequence.

The view remembers the highest modseq it has seen; `sync` reads what
changed above it (messages, expunges) in one snapshot, and every change a
session makes runs its SQL and that same read in one transaction, holding
the mailbox row lock (mailbox.py). So the view moves from one committed
state of the mailbox to the next, whichever node made the change, and the
differences become FolderEvents: the session's own with its origin, the
others' with None. The folder's DeferredLock keeps this process's changes
to the view in order; the view is only changed in the reactor thread.
"""

import io
import json
import time
from bisect import bisect_left

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import FolderEvent, IBatchOpen, IMailFolder, IModSeqFolder
from mailplat.store.sql import flags as flagset
from mailplat.store.sql import mailbox, quota
from mailplat.store.sql.info import uid_of
from mailplat.store.sql.mailbox import FolderGone

log = Logger()


def crlf_size(data):
    """RFC822.SIZE: octets with CRLF line ends."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def read_source(source):
    f = source.open()
    try:
        return f.read()
    finally:
        f.close()


@implementer(IMailFolder, IBatchOpen, IModSeqFolder)
class SQLMailFolder:
    """A mailbox as IMAP sees it; made by L{SQLStore} only, one per mailbox per process."""

    def __init__(self, store, mailbox_id, name, address):
        self.store = store
        self.id = mailbox_id
        self.name = name
        self.address = address  # the owner, whose quota APPEND and COPY count against
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 1
        self._msgs = []
        self._by_uid = {}
        self._cache = {}  # uid -> {field: value}
        self._undecoded = {}  # uid -> JSON text of more cached values, decoded when asked (L{_decoded})
        self._first_recent = 1
        self._expunged = []  # [(modseq, uid)] as they went
        self._vanished_floor = 0
        self._subscribers = []
        self._lock = defer.DeferredLock()
        self._sync_waiters = None
        self._loaded = False
        self._gone = False

    def __repr__(self):
        return f"<SQLMailFolder {self.name!r} #{self.id}>"

    # --- reading ------------------------------------------------------------------

    def sync(self):
        """See L{IMailFolder.sync}. Calls made while one waits share its result."""
        d = defer.Deferred()
        if self._sync_waiters is not None:
            self._sync_waiters.append(d)
            return d
        self._sync_waiters = [d]

        def start():
            waiters, self._sync_waiters = self._sync_waiters, None
            if self._gone:
                step = defer.fail(FolderGone(self.name))
            else:
                step = self.store.db.run("reading a folder", mailbox.read_changes, self.id, self.highestmodseq if self._loaded else 0)
                step.addCallback(lambda delta: self._apply(delta, (), None))
            return step.addBoth(_fire, waiters)

        self._lock.run(start)
        return d

    def messages(self):
        return self._msgs

    def info(self, uid):
        return self._by_uid.get(uid)

    def open(self, uid):
        info = self._by_uid.get(uid)
        if info is None:
            return defer.fail(KeyError(uid))

        def opened(found):
            data = found.get(info.body)
            if data is None:
                raise KeyError(uid)
            return io.BytesIO(data)

        d = self.store.db.run("reading a message", self.store.blobs.get_many, [info.body])
        return d.addCallback(opened)

    def open_many(self, uids):
        """L{IBatchOpen}: the bodies of `uids` in one query."""
        infos = [self._by_uid.get(uid) for uid in uids]
        hashes = [i.body for i in infos if i is not None]
        if not hashes:
            return defer.succeed([None] * len(infos))

        def opened(found):
            return [None if i is None or i.body not in found else io.BytesIO(found[i.body]) for i in infos]

        d = self.store.db.run("reading messages", self.store.blobs.get_many, hashes)
        return d.addCallback(opened)

    # --- the metadata cache (kept per body: mailplat_body_index) -----------------------

    # A folder's load decodes no JSON: the strings FETCH asks for come as
    # text columns, the rest (sort keys) as JSON text, decoded at the first
    # SORT that asks (mailbox.MESSAGE_COLUMNS says why).

    def _decoded(self, uid):
        """The cached values of `uid`, with what was still JSON text decoded (or None)."""
        fields = self._cache.get(uid)
        text = self._undecoded.pop(uid, None)
        if text is not None:
            fields = self._cache[uid] = {**json.loads(text), **(fields or {})}
        return fields

    def cached(self, uid, field):
        fields = self._cache.get(uid)
        if fields is not None and field in fields:
            return fields[field]
        if uid not in self._undecoded:
            return None
        return self._decoded(uid).get(field)

    def cache(self, uid, field, value):
        info = self._by_uid.get(uid)
        if info is None:
            return
        fields = self._decoded(uid)
        if fields is None:
            fields = self._cache[uid] = {}
        fields[field] = value
        self.store._queue_index(self, info.body, field, value)

    # --- \Recent (RFC 3501 2.3.2), as Dovecot's first_recent_uid ------------------------

    def claim_recent(self, uids):
        claimed = {uid for uid in uids if uid >= self._first_recent}
        if claimed:
            self._first_recent = max(claimed) + 1
            self.store._queue_claim(self, self._first_recent)
        return claimed

    def recent_count(self):
        msgs = self._msgs
        return len(msgs) - bisect_left(msgs, self._first_recent, key=uid_of)

    # --- RFC 7162 -----------------------------------------------------------------------

    def vanished(self, modseq):
        if modseq < self._vanished_floor:
            return None
        return sorted(uid for m, uid in self._expunged if m > modseq)

    # --- change notification ---------------------------------------------------------

    def subscribe(self, callback):
        token = [callback]
        self._subscribers.append(token)
        self.store._watch(self)

        def unsubscribe():
            if token in self._subscribers:
                self._subscribers.remove(token)
                if not self._subscribers:
                    self.store._unwatch(self)

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

    def _publish_runs(self, kind, uids, ours, origin):
        """Events for `uids` in UID order: ours with `origin`, the others' with None."""
        run, run_origin = [], None
        for uid in sorted(uids):
            this = origin if uid in ours else None
            if run and this is not run_origin:
                self._publish(kind, run, run_origin)
                run = []
            run_origin = this
            run.append(uid)
        self._publish(kind, run, run_origin)

    # --- applying a delta ---------------------------------------------------------------

    def _apply(self, delta, ours, origin):
        """Install what the database said (reactor thread) and publish the differences."""
        if delta is None:
            self._forget()
            raise FolderGone(self.name)
        validity = delta.uidvalidity
        by_uid = self._by_uid
        added, flagged, replaced = [], [], False
        for info, strings, text in delta.messages:
            uid = info.uid
            old = by_uid.get(uid)
            if old is None:
                added.append(info)
            else:
                replaced = True
                if old.flags != info.flags:
                    flagged.append(uid)
            by_uid[uid] = info
            if strings or text:
                # What we hold wins (values of ours may not be written yet),
                # also over the JSON text when it is decoded (L{_decoded}).
                mine = self._cache.get(uid)
                self._cache[uid] = {**strings, **mine} if mine and strings else (mine or strings or {})
                if text:
                    self._undecoded[uid] = text
        removed = []
        for uid, modseq in delta.expunged:
            self._expunged.append((modseq, uid))
            if by_uid.pop(uid, None) is not None:
                removed.append(uid)
                self._cache.pop(uid, None)
                self._undecoded.pop(uid, None)
        if removed or replaced:
            msgs = [by_uid[m.uid] for m in self._msgs if m.uid in by_uid]
        else:
            msgs = self._msgs
        if added:
            added.sort(key=uid_of)
            if msgs and added[0].uid < msgs[-1].uid:
                # Never expected (the row lock hands out UIDs in commit
                # order, so new ones come last); sequence numbers need order.
                log.warn("sql store: {folder} got UID {uid} below its last", folder=self, uid=added[0].uid)
                msgs = sorted(msgs + added, key=uid_of)
            else:
                msgs = msgs + added
        self._msgs = msgs
        self.name = delta.name
        self.uidvalidity = validity
        self.uidnext = delta.uidnext
        self.highestmodseq = delta.highestmodseq
        self._first_recent = max(self._first_recent, delta.first_recent)
        if delta.vanished_floor > self._vanished_floor:
            self._expunged = [e for e in self._expunged if e[0] > delta.vanished_floor]
        self._vanished_floor = delta.vanished_floor
        self._loaded = True
        ours = set(ours)
        self._publish_runs("exists", [i.uid for i in added], ours, origin)
        self._publish_runs("flags", flagged, ours, origin)
        self._publish_runs("expunge", removed, ours, origin)
        return self._msgs

    def _forget(self):
        """The mailbox was deleted: every message is gone for the sessions."""
        if self._gone:
            return
        uids = [i.uid for i in self._msgs]
        self._gone = True
        self._msgs, self._by_uid, self._cache, self._undecoded = [], {}, {}, {}
        self._publish("expunge", uids)
        self.store._forget_folder(self.id)

    # --- changes ----------------------------------------------------------------------

    def _change(self, what, function, origin):
        """
        Run `function(cursor) -> (answer, our uids)` and the read of what
        changed, in one transaction, holding the folder's lock; then apply.
        """
        if self._gone:
            return defer.fail(FolderGone(self.name))

        def run():
            since = self.highestmodseq if self._loaded else 0

            def transaction(cursor):
                answer, ours = function(cursor)
                return answer, ours, mailbox.changes(cursor, self.id, since)

            def apply(result):
                answer, ours, delta = result
                self._apply(delta, ours, origin)
                return answer

            return self.store.db.run(what, transaction).addCallback(apply)

        return self._lock.run(run)

    def _store_flags(self, uids, flags, mode, origin, unchangedsince):
        if mode not in ("+", "-", "="):
            return defer.fail(ValueError(f"bad flag mode {mode!r}"))
        flags = flagset.normalise(flags)

        def change(cursor):
            answer, modified, changed = mailbox.store_flags(cursor, self.id, uids, flags, mode, unchangedsince)
            return (answer, modified), changed

        return self._change("changing flags", change, origin)

    def store_flags(self, uids, flags, mode, origin=None):
        return self._store_flags(uids, flags, mode, origin, None).addCallback(lambda result: result[0])

    def store_flags_unchanged_since(self, uids, flags, mode, modseq, origin=None):
        return self._store_flags(uids, flags, mode, origin, modseq)

    def append(self, source, flags=(), internaldate=None, origin=None):
        flags = flagset.normalise(flags)
        when = time.time() if internaldate is None else internaldate
        store = self.store

        def change(cursor, limits):
            data = read_source(source)
            size = crlf_size(data)
            if limits is not None and limits.limited:
                quota.refuse_larger(limits, size)
                quota.refuse(limits, quota.usage(cursor, self.address), size)
            body = store._put_body(cursor, data)
            _, uids = mailbox.add(cursor, self.id, [(body, size, flags, when)])
            return uids[0], uids

        return self._with_limits(lambda limits: self._change("appending a message", lambda c: change(c, limits), origin))

    def _with_limits(self, f):
        """f(the owner's quota Limits, or None without quotas): the check runs in the change's transaction."""
        return self.store._limits(self.address).addCallback(f)

    def expunge(self, uids=None, origin=None):
        def change(cursor):
            removed = mailbox.expunge(cursor, self.id, uids)
            return removed, removed

        return self._change("expunging", change, origin)

    def copy_to(self, uids, target, origin=None):
        def checked(limits):
            if limits is None or not limits.limited:
                return self._transfer(uids, target, origin, move=False)
            sizes = {m.uid: m.size for m in self._msgs}
            chosen = [u for u in set(uids) if u in sizes]

            def check(cursor):
                if chosen:
                    quota.refuse(limits, quota.usage(cursor, self.address), sum(sizes[u] for u in chosen), len(chosen))

            return self._transfer(uids, target, origin, move=False, check=check)

        return self._with_limits(checked)

    def move_to(self, uids, target, origin=None):
        # RFC 6851: the copy and the removal are one transaction.
        return self._transfer(uids, target, origin, move=True)

    def _transfer(self, uids, target, origin, move, check=None):
        if self._gone or target._gone:
            return defer.fail(FolderGone(self.name if self._gone else target.name))
        if target is self:
            def change(cursor):
                if check is not None:
                    check(cursor)
                mapping = mailbox.transfer(cursor, self.id, self.id, uids, move)
                return mapping, [new for _, new in mapping] + ([old for old, _ in mapping] if move else [])

            return self._change("copying", change, origin)
        # Both locks, always in id order (as the rows are locked).
        first, second = sorted((self, target), key=lambda f: f.id)

        def inner():
            since = (self.highestmodseq if self._loaded else 0, target.highestmodseq if target._loaded else 0)

            def transaction(cursor):
                if check is not None:
                    check(cursor)
                mapping = mailbox.transfer(cursor, self.id, target.id, uids, move)
                return mapping, mailbox.changes(cursor, self.id, since[0]), mailbox.changes(cursor, target.id, since[1])

            def apply(result):
                mapping, mine, theirs = result
                target._apply(theirs, [new for _, new in mapping], origin)
                self._apply(mine, [old for old, _ in mapping] if move else [], origin)
                return mapping

            return self.store.db.run("moving" if move else "copying", transaction).addCallback(apply)

        return first._lock.run(lambda: second._lock.run(inner))


def _fire(result, waiters):
    for waiter in waiters:
        waiter.callback(result)
    return None
