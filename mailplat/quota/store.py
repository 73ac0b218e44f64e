"""
L{QuotaStore}: the maildir or mbox store behind checks before mail comes in
and usage kept after it came in or went (see L{mailplat.quota}).
"""

import os
import time
import weakref

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import directlyProvides, implementer, providedBy

from mailplat.interfaces import (
    IQuotaSource,
    IQuotaStore,
    OverQuota,
    OverQuotaForGood,
    PermanentFailure,
    QuotaReport,
)
from mailplat.quota.rules import Limits, RealmLimits, settings
from mailplat.quota.usage import USAGE_MAX, append_usage, crlf_size, layout_for, read_usage, write_usage
from mailplat.quota.warning import warning_message
from mailplat.store.source import BytesSource

log = Logger()

RECALC_INTERVAL = 15 * 60  # seconds: a user in use is recounted at least this often


def wrap(store, realm, table):
    """
    The store every caller should use: `store` behind a L{QuotaStore}, or
    `store` itself for a store whose mail we can't count (logged when a
    limit is configured).
    """
    options = settings(table or {})
    if type(store) is QuotaStore or IQuotaStore.providedBy(store):
        return store  # wrapped already, or a store that keeps quotas itself (the sql store)
    layout = layout_for(store)
    if layout is None:
        if options["storage"] or options["messages"] or IQuotaSource.providedBy(realm):
            log.warn("[quota]: store {store!r} can't be counted; quotas are not enforced", store=store)
        return store
    return QuotaStore(store, layout, realm, **options)


# --- the store wrapper ----------------------------------------------------------------


def _passing(inner, wrapper):
    """The wrapper provides what the wrapped object provides (IBatchOpen and the like)."""
    directlyProvides(wrapper, *list(providedBy(inner)))


def _normalize(address):
    return address.strip().lower()


@implementer(IQuotaStore)
class QuotaStore:
    """
    A store with quotas: checks before mail comes in, usage kept after it
    came in or went. Everything else is the wrapped store's.
    """

    def __init__(self, inner, layout, realm=None, storage=0, messages=0, warning_percent=90, clock=time.time):
        self.inner = inner
        self.layout = layout
        self.realm = realm
        self.defaults = Limits(storage, messages)
        self.warning_percent = warning_percent
        self.clock = clock
        self._walked = {}  # root -> time of the last recount in this process
        self._locks = weakref.WeakValueDictionary()
        self._limits = RealmLimits(realm, self.defaults, clock)
        # The one QuotaFolder per folder object (IMailFolder: one object per
        # folder per process), by id of the wrapped folder, which the view
        # keeps alive: the id can't be reused while the entry exists.
        self._views = weakref.WeakValueDictionary()
        self._pending = set()  # usage updates not waited for (deliver)
        directlyProvides(self, *list(providedBy(inner)), IQuotaStore)

    def __getattr__(self, name):
        # Only for what this class does not define: the wrapped store's own.
        try:
            inner = self.__dict__["inner"]
        except KeyError:
            raise AttributeError(name)
        return getattr(inner, name)

    def __repr__(self):
        return f"<QuotaStore {self.inner!r}>"

    @property
    def __class__(self):
        # A proxy: code that asks which store it has (isinstance(store,
        # MaildirStore), the delivery plugins) sees the wrapped one.
        return type(self.inner)

    # --- limits and usage ------------------------------------------------------------

    def limits(self, address):
        """Deferred Limits for `address`: the realm's rules over the defaults."""
        return self._limits.limits(_normalize(address))

    def _root(self, address):
        return self.layout.root(address)

    def _locked(self, root, f, *args):
        lock = self._locks.get(root)
        if lock is None:
            lock = self._locks[root] = defer.DeferredLock()
        return lock.run(threads.deferToThread, f, *args)

    def _usage_now(self, root, address, limits, force=False):
        """(octets, messages), recounted when the file can't be trusted (blocking)."""
        path = os.path.join(root, self.layout.usage_name)
        found = None if force else read_usage(path)
        now = self.clock()
        walked = self._walked.get(root)
        if (
            found is not None
            and limits.written_as(found[0])
            and found[3] <= USAGE_MAX
            and (walked is None or now - walked <= RECALC_INTERVAL)
        ):
            if walked is None:
                self._walked[root] = now  # trusted as found (a restart): recounted later
            return found[1], found[2]
        octets, messages = self.layout.walk(root, address)
        try:
            # The mail directory may not exist yet (no mail so far; an mbox
            # INBOX in a spool elsewhere): made now, or every check recounts.
            os.makedirs(root, mode=0o700, exist_ok=True)
            write_usage(path, limits, octets, messages)
        except OSError as e:
            log.warn("quota: cannot write {path}: {e}", path=path, e=e.strerror)
        self._walked[root] = now
        return octets, messages

    def _charge_now(self, root, address, limits, octets, messages, warn):
        """Add to the usage (blocking); True when the warning mail is due."""
        if callable(octets):
            octets = octets()
        path = os.path.join(root, self.layout.usage_name)
        found = read_usage(path)
        if (
            found is not None
            and limits.written_as(found[0])
            and found[3] + 40 <= USAGE_MAX
            and append_usage(path, octets, messages)
        ):
            total, count = found[1] + octets, found[2] + messages
        else:
            # Missing, stale or full: the recount includes what just changed.
            total, count = self._usage_now(root, address, limits, force=True)
        return self._warning_due(root, limits, total, count) if warn else False

    def _warning_due(self, root, limits, total, count):
        if not self.warning_percent:
            return False
        marker = os.path.join(root, self.layout.warned_name)
        high = (limits.storage and total * 100 >= limits.storage * self.warning_percent) or (
            limits.messages and count * 100 >= limits.messages * self.warning_percent
        )
        warned = os.path.exists(marker)
        if high and not warned:
            with open(marker, "w", encoding="ascii") as f:
                f.write(f"{int(self.clock())} {total} {count}\n")
            return True
        if not high and warned:
            try:
                os.unlink(marker)
            except FileNotFoundError:
                pass
        return False

    def usage(self, address, force=False):
        """Deferred (octets, messages, Limits); usage (0, 0) for a user without limits."""
        try:
            root = self._root(address)
        except PermanentFailure:
            return defer.fail()

        def got(limits):
            if not limits.limited and not force:
                return 0, 0, limits
            d = self._locked(root, self._usage_now, root, address, limits, force)
            return d.addCallback(lambda u: (u[0], u[1], limits))

        return self.limits(address).addCallback(got)

    def quota(self, address):
        """L{IQuotaStore.quota}."""
        d = self.usage(address)
        return d.addCallback(lambda u: QuotaReport(u[0], u[2].storage, u[1], u[2].messages))

    def recalculate(self, address):
        """Recount now (`mailplat quota recalc`): Deferred QuotaReport."""
        d = self.usage(address, force=True)
        return d.addCallback(lambda u: QuotaReport(u[0], u[2].storage, u[1], u[2].messages))

    def check_quota(self, address, size=None, count=1):
        """L{IQuotaStore.check_quota}."""
        try:
            root = self._root(address)
        except PermanentFailure:
            return defer.fail()

        def got(limits):
            if not limits.limited:
                return None
            if size is not None and limits.storage and size > limits.storage:
                raise OverQuotaForGood(
                    f"message larger than the mailbox quota ({size} octets, the quota is {limits.storage})"
                )
            d = self._locked(root, self._usage_now, root, address, limits)
            return d.addCallback(decide, limits)

        def decide(usage, limits):
            octets, messages = usage
            if size is None:
                if (limits.storage and octets >= limits.storage) or (limits.messages and messages >= limits.messages):
                    raise OverQuota("mailbox full")
                return None
            if limits.storage and octets + size > limits.storage:
                raise OverQuota("mailbox full: the message does not fit in the space left")
            if limits.messages and messages + count > limits.messages:
                raise OverQuota("mailbox full: too many messages")
            return None

        return self.limits(address).addCallback(got)

    def charge(self, address, octets, messages, warn=True):
        """
        Usage changed by `octets` (an int, or a callable run in the thread
        pool that returns it) and `messages`. Never fails: a problem is
        logged and the next recount sets the figures right.
        """
        try:
            root = self._root(address)
        except PermanentFailure:
            return defer.succeed(None)

        def got(limits):
            if not limits.limited:
                return None
            d = self._locked(root, self._charge_now, root, address, limits, octets, messages, warn)
            return d.addCallback(lambda due: self._warn(address, limits) if due else None)

        d = self.limits(address).addCallback(got)
        return d.addErrback(lambda f: log.failure("quota: usage of {address} not updated", f, address=address))

    def invalidate(self, address):
        """Recount at the next check (a folder was deleted with its mail)."""
        try:
            root = self._root(address)
        except PermanentFailure:
            return defer.succeed(None)

        def run():
            try:
                os.unlink(os.path.join(root, self.layout.usage_name))
            except FileNotFoundError:
                pass

        return self._locked(root, run).addErrback(lambda f: log.failure("quota: {address}", f, address=address))

    # --- the warning ------------------------------------------------------------------

    def _warn(self, address, limits):
        d = self.usage(address)

        def send(usage):
            message = warning_message(address, usage[0], usage[1], limits, self.warning_percent)
            source = BytesSource(message)
            d = defer.maybeDeferred(self.inner.deliver, address, source, None)
            d.addCallback(lambda key: self.charge(address, self._size_of(key, source), 1, warn=False))
            log.info("quota: {address} reached {percent}% of its quota; warning sent", address=address,
                     percent=self.warning_percent)
            return d

        d.addCallback(send)
        return d.addErrback(lambda f: log.failure("quota: warning to {address} not delivered", f, address=address))

    def _size_of(self, key, source):
        size = self.layout.key_size(key) if isinstance(key, str) else None
        return size if size is not None else (lambda: crlf_size(source))

    # --- IMailStore / IFolderStore --------------------------------------------------------

    def deliver(self, address, source, folder=None, flags=()):
        # The local delivery agent checked every recipient before writing
        # any copy (mailplat.delivery.local): no second look at the file.
        if getattr(source, "quota_checked", False):
            d = defer.succeed(None)
        else:
            d = self.check_quota(address, source.size)
        # A Sieve script's flags only when there are some (an inner store may not take them).
        d.addCallback(lambda _: self.inner.deliver(address, source, folder, flags=flags) if flags
                      else self.inner.deliver(address, source, folder))

        def delivered(key):
            size = self._size_of(key, source)
            charged = self.charge(address, size, 1)
            if callable(size):
                # Read from the message (mbox): before the caller drops it.
                return charged.addCallback(lambda _: key)
            # Not waited for (the 250 need not wait): the per-user lock puts
            # it before any later check or report of this user; close() waits.
            # (A Deferred waiting on another is `called` already: track it until it ends.)
            self._pending.add(charged)
            charged.addBoth(lambda _: self._pending.discard(charged))
            return key

        return d.addCallback(delivered)

    def inbox(self, address):
        return defer.maybeDeferred(self.inner.inbox, address).addCallback(QuotaInbox, self, address)

    def close(self):
        """The usage updates still running, then the store's own close (server stop)."""
        pending = defer.DeferredList(list(self._pending))
        close = getattr(self.inner, "close", None)
        return pending.addCallback(lambda _: close() if close is not None else None)

    def _view(self, folder, address):
        view = self._views.get(id(folder))
        if view is None or view._quota_inner is not folder:
            view = self._views[id(folder)] = QuotaFolder(folder, self, address)
        return view

    def account(self, address):
        return defer.maybeDeferred(self.inner.account, address).addCallback(QuotaAccount, self, address)


class _Wrapper:
    """Everything not defined here is the wrapped object's."""

    def __getattr__(self, name):
        try:
            inner = self.__dict__["_quota_inner"]
        except KeyError:
            raise AttributeError(name)
        return getattr(inner, name)


class QuotaInbox(_Wrapper):
    """A POP3 / delivery INBOX (L{IFolder}): removals lower the usage."""

    def __init__(self, inner, store, address):
        self._quota_inner = inner
        self._store = store
        self._address = address
        self._sizes = {}
        _passing(inner, self)

    def messages(self):
        def seen(found):
            self._sizes = {m.key: m.size for m in found}
            return found

        return defer.maybeDeferred(self._quota_inner.messages).addCallback(seen)

    def remove(self, keys):
        keys = list(keys)
        known = [k for k in keys if k in self._sizes]
        d = defer.maybeDeferred(self._quota_inner.remove, keys)

        def removed(result):
            if len(known) < len(keys):
                # Not seen by messages() (a delivery taken back): recount.
                return self._store.invalidate(self._address).addCallback(lambda _: result)
            octets = sum(self._sizes.pop(k) for k in known)
            return self._store.charge(self._address, -octets, -len(known)).addCallback(lambda _: result)

        return d.addCallback(removed)


class QuotaAccount(_Wrapper):
    """An IMAP account whose folders keep the usage, and that reports it (GETQUOTAROOT)."""

    def __init__(self, inner, store, address):
        self._quota_inner = inner
        self._store = store
        self._address = address
        _passing(inner, self)

    def folder(self, name):
        d = defer.maybeDeferred(self._quota_inner.folder, name)
        return d.addCallback(self._store._view, self._address)

    def delete(self, name):
        d = defer.maybeDeferred(self._quota_inner.delete, name)
        return d.addCallback(lambda result: self._store.invalidate(self._address).addCallback(lambda _: result))

    def quota(self):
        """L{QuotaReport} of this account (the one quota root, "")."""
        return self._store.quota(self._address)


def _inner(folder):
    return folder.__dict__.get("_quota_inner", folder) if hasattr(folder, "__dict__") else folder


class QuotaFolder(_Wrapper):
    """An IMAP folder: APPEND and COPY are checked first; APPEND, COPY, EXPUNGE counted."""

    def __init__(self, inner, store, address):
        self._quota_inner = inner
        self._store = store
        self._address = address
        _passing(inner, self)

    def __repr__(self):
        return f"<QuotaFolder {self._quota_inner!r}>"

    def append(self, source, *args, **kwargs):
        store, address = self._store, self._address
        d = threads.deferToThread(crlf_size, source)

        def sized(size):
            d = store.check_quota(address, size)
            d.addCallback(lambda _: self._quota_inner.append(source, *args, **kwargs))
            return d.addCallback(lambda uid: store.charge(address, size, 1).addCallback(lambda _: uid))

        return d.addCallback(sized)

    def copy_to(self, uids, target, *args, **kwargs):
        store, address = self._store, self._address
        sizes = {m.uid: m.size for m in self._quota_inner.messages()}
        chosen = [u for u in set(uids) if u in sizes]
        d = store.check_quota(address, sum(sizes[u] for u in chosen), count=len(chosen)) if chosen else defer.succeed(None)
        d.addCallback(lambda _: self._quota_inner.copy_to(uids, _inner(target), *args, **kwargs))

        def copied(pairs):
            octets = sum(sizes.get(source, 0) for source, _ in pairs)
            return store.charge(address, octets, len(pairs)).addCallback(lambda _: pairs)

        return d.addCallback(copied)

    def move_to(self, uids, target, *args, **kwargs):
        # Within the one quota root: usage does not change (RFC 9208 has one
        # root here), so a user over quota can still move mail to Trash.
        return self._quota_inner.move_to(uids, _inner(target), *args, **kwargs)

    def expunge(self, *args, **kwargs):
        sizes = {m.uid: m.size for m in self._quota_inner.messages()}
        d = defer.maybeDeferred(self._quota_inner.expunge, *args, **kwargs)

        def expunged(removed):
            gone = [u for u in removed if u in sizes]
            if not gone:
                return removed
            octets = sum(sizes[u] for u in gone)
            return self._store.charge(self._address, -octets, -len(gone)).addCallback(lambda _: removed)

        return d.addCallback(expunged)
