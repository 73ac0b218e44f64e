"""
MboxStore: each user's mail directory at a path template (`%d` domain,
`%n` local part, `%u` address, as the maildir store and Dovecot's
mail_location), INBOX the mbox file `INBOX` in it or the file the `inbox`
template names (a system spool such as `/var/mail/%n`).

One L{MboxFolder} per mbox file in the process (a weak registry, plus the
most recently used ones kept alive so deliveries to a busy mailbox don't
reload its index each time); while a folder has subscribers a single
poller stats its file about once a second and syncs what changed.
"""

import collections
import os
import threading
import weakref

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import IFolderStore, PermanentFailure, TemporaryFailure
from mailplat.store import boundary
from mailplat.store.folderview import HeldFolders
from mailplat.store.maildir.store import expand
from mailplat.store.mbox import account as accounts
from mailplat.store.mbox import index, locking
from mailplat.store.mbox.folder import MboxFolder
from mailplat.store.mbox.maildrop import MboxPOP3Folder

log = Logger()

KEEP_OPEN = 64  # folders kept loaded after their last user


@implementer(IFolderStore)
class MboxStore(HeldFolders):
    """Users' mail in mbox files under a path template."""

    def __init__(self, path_template, inbox_template=None, poll_interval=1.0,
                 lock_timeout=locking.TIMEOUT, clock=None):
        self.path_template = path_template
        self.inbox_template = inbox_template
        self.poll_interval = poll_interval
        self.lock_timeout = lock_timeout
        self._given_clock = clock
        self._folders = weakref.WeakValueDictionary()  # mbox path -> MboxFolder
        self._recent = collections.OrderedDict()
        self._opening = {}
        self._watched = set()
        self._poller = None
        self._held = {}  # changed folders nobody watches, until their index is written (strong refs)
        self._kept = {}  # folders their last session left lately (strong refs; HeldFolders)
        self._set_up = set()
        self._root_locks = weakref.WeakValueDictionary()
        self._uidvalidity_lock = threading.Lock()

    def _clock(self):
        if self._given_clock is not None:
            return self._given_clock
        from twisted.internet import reactor

        return reactor

    def user_root(self, address):
        return expand(self.path_template, address)

    def inbox_path(self, address):
        if self.inbox_template:
            # A relative one is relative to the user's mail directory.
            return os.path.join(self.user_root(address), os.path.expanduser(expand(self.inbox_template, address)))
        return os.path.join(self.user_root(address), accounts.INBOX)

    # --- IMailStore ---------------------------------------------------------------

    def deliver(self, address, source, folder=None, flags=()):
        try:
            root = self.user_root(address)
            inbox = self.inbox_path(address)
        except PermanentFailure:
            return defer.fail()

        def choose():
            if folder and accounts.canonical(folder) != accounts.INBOX:
                # Through the account boundary: `alice+../bob@` lands in INBOX.
                try:
                    candidate = accounts.resolve(root, inbox, folder)
                except boundary.RefusedName:
                    candidate = None
                if candidate is not None and os.path.isfile(candidate):
                    return candidate, folder
            try:
                os.makedirs(os.path.dirname(inbox), mode=0o700, exist_ok=True)
            except OSError as e:
                raise TemporaryFailure(f"cannot make the mail directory of {address} ({e.strerror})")
            return inbox, accounts.INBOX

        def opened(result):
            path, name = result
            return self._open_folder(path, name, accounts.index_dir(root, name), root)

        d = threads.deferToThread(choose).addCallback(opened)
        # A Sieve script's flags (RFC 5232) go into Status / X-Status / X-Keywords.
        return d.addCallback(lambda f: f.deliver(source, flags) if flags else f.deliver(source))

    def inbox(self, address):
        try:
            root = self.user_root(address)
            inbox = self.inbox_path(address)
        except PermanentFailure:
            return defer.fail()
        return defer.succeed(
            MboxPOP3Folder(lambda: self._open_folder(inbox, accounts.INBOX, accounts.index_dir(root, "INBOX"), root))
        )

    # --- IFolderStore ----------------------------------------------------------------

    def account(self, address):
        try:
            root = self.user_root(address)
            inbox = self.inbox_path(address)
        except PermanentFailure:
            return defer.fail()
        made = accounts.MboxAccount(self, address, root, inbox)
        if root in self._set_up:
            return defer.succeed(made)

        def ready(_):
            self._set_up.add(root)
            return made

        return self._root_lock(root).run(threads.deferToThread, accounts.set_up, root, inbox).addCallback(ready)

    # --- the folder registry -----------------------------------------------------------

    def _open_folder(self, path, name, index_dir, root, check=None):
        """
        The one folder object for `path`, synced; KeyError if there is no such folder.

        @param check: run in a thread before a folder is first opened
            (account.confine: the account boundary); it raises to refuse.
        """
        self._flush_held()
        existing = self._folders.get(path)
        if existing is not None and existing._loaded and not existing._gone:
            self._keep(existing)
            return existing.sync().addCallback(lambda _: existing)
        if path in self._opening:
            waiter = defer.Deferred()
            self._opening[path].append(waiter)
            return waiter
        self._opening[path] = waiters = []

        def exists():
            if check is not None:
                check()
            if name == accounts.INBOX:
                return True
            return os.path.isfile(path)

        def made(found):
            if not found:
                raise KeyError(name)
            folder = self._folders.get(path)
            if folder is None or folder._gone:
                folder = MboxFolder(self, path, name, index_dir)
                folder.state_dir = os.path.join(root, accounts.STATE)
                self._folders[path] = folder
            self._keep(folder)
            return folder.sync().addCallback(lambda _: folder)

        def done(result):
            self._opening.pop(path, None)
            for waiter in waiters:
                waiter.callback(result)
            return result

        return threads.deferToThread(exists).addCallback(made).addBoth(done)

    def _keep(self, folder):
        self._recent.pop(folder.path, None)
        self._recent[folder.path] = folder
        while len(self._recent) > KEEP_OPEN:
            self._recent.popitem(last=False)

    def _next_uidvalidity(self, folder):
        """Called in a thread by a folder that starts afresh."""
        with self._uidvalidity_lock:
            return index.next_uidvalidity(folder.state_dir)

    def _root_lock(self, root):
        lock = self._root_locks.get(root)
        if lock is None:
            lock = self._root_locks[root] = defer.DeferredLock()
        return lock

    def _with_folder_lock(self, path, f):
        folder = self._folders.get(path)
        if folder is None:
            return defer.maybeDeferred(f)
        return folder._lock.run(f)

    def _forget_folder(self, path):
        folder = self._folders.pop(path, None)
        self._recent.pop(path, None)
        if folder is not None:
            self._unwatch(folder)
            self._kept.pop(folder, None)
            folder._forget()

    def _relocate_folders(self, source, target, old, new, root):
        """After a rename the open folder objects follow their files."""
        for path in list(self._folders.keys()):
            if path == source or path.startswith(source + os.sep):
                folder = self._folders.pop(path)
                self._recent.pop(path, None)
                moved = target + path[len(source):]
                name = accounts._moved(folder.name, old, new)
                folder._relocate(moved, name, accounts.index_dir(root, name))
                self._folders[moved] = folder
                self._keep(folder)

    # --- watching the disk ----------------------------------------------------------------

    def _watch(self, folder):
        self._watched.add(folder)
        if self._poller is None:
            self._poller = task.LoopingCall(self._poll)
            self._poller.clock = self._clock()
            self._poller.start(self.poll_interval, now=False).addErrback(
                lambda f: log.failure("folder poller stopped", f)
            )

    def _poll(self):
        """Sync the watched folders whose file changed (mail from other programs)."""
        self._flush_held()
        for folder in [f for f in self._watched if not f._gone]:
            if folder.needs_scan():
                folder.sync().addErrback(lambda f, path=folder.path: log.failure("syncing {path}", f, path=path))
            elif folder.write_back_due():
                folder.write_back()
            elif folder.flush_due():
                folder.flush()

    def close(self):
        """Stop watching; write pending flags into the files and every index (server stop)."""
        for folder in list(self._watched):
            self._unwatch(folder)
        folders = list(self._folders.values())
        self._held.clear()
        self._kept.clear()
        return defer.DeferredList([f.write_back().addBoth(lambda _, f=f: f.flush()) for f in folders])
