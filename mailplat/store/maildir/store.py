"""
MaildirStore: one maildir per user at a path made from a template
(`%d` domain, `%n` local part, `%u` whole address, as Dovecot's
mail_location), INBOX at its root and folders as Maildir++ `.Name`
subdirectories.

For IMAP it keeps one L{MaildirMailFolder} per folder directory in the
process (a weak registry), so every session and every delivery talk to the
same object; while a folder has subscribers a single poller stats its
new/, cur/ and uidlist about once a second and syncs what changed.
"""

import functools
import os
import stat
import weakref

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import IFolderStore, PermanentFailure
from mailplat.store import boundary
from mailplat.store.flags import normalise
from mailplat.store.folderview import HeldFolders
from mailplat.store.maildir import layout
from mailplat.store.maildir.account import MaildirAccount, set_up
from mailplat.store.maildir.deliver import ensure_maildir, write_message
from mailplat.store.maildir.folder import MaildirFolder
from mailplat.store.maildir.keywords import Keywords
from mailplat.store.maildir.uidlist import UidList
from mailplat.store.maildir.mailfolder import MaildirMailFolder

log = Logger()

# Folders checked in the reactor thread per poll; more go to a thread.
INLINE_CHECKS = 64
# Changed folders nobody watches kept for their index to be written (_hold); more are written at once.


def expand(template, address):
    """
    Fill in %d, %n, %u (and %% for a percent sign) for an address.

    @raise PermanentFailure: when a part could escape its directory.
    """
    local, _, domain = address.lower().rpartition("@")
    for part in (local, domain):
        if not part or "/" in part or "\0" in part or part.startswith("."):
            raise PermanentFailure(f"address not usable as a mailbox path: {address!r}", "5.1.3", 553)
    values = {"d": domain, "n": local, "u": f"{local}@{domain}"}
    return "".join(piece if isinstance(piece, str) else values[piece[0]] for piece in _template_pieces(template))


@functools.lru_cache(maxsize=64)
def _template_pieces(template):
    """
    A path template cut once into literal text (str) and the codes %d,
    %n, %u (1-tuples of the letter; %% is a literal percent sign, any other
    %x and a % at the end stay as they are): expanding it is a join, not a
    walk over its characters (4 expansions a delivery).
    """
    pieces, literal, i = [], [], 0
    while i < len(template):
        c = template[i]
        if c == "%" and i + 1 < len(template):
            code = template[i + 1]
            if code in "dnu":
                if literal:
                    pieces.append("".join(literal))
                    literal = []
                pieces.append((code,))
            else:
                literal.append("%" if code == "%" else "%" + code)
            i += 2
        else:
            literal.append(c)
            i += 1
    if literal:
        pieces.append("".join(literal))
    return tuple(pieces)


def plain_folder_dir(root, name):
    """
    The directory of folder `name` when it is a plain one: a real `.Name`
    directory right in `root` with real tmp/, new/ and cur/ in it, no
    symlink anywhere (a few lstat calls, where L{folder_dir}'s realpath
    checks cost ~0.4 ms a delivery here); None otherwise, for folder_dir
    to decide (blocking).
    """
    try:
        path = layout.spelled_path(root, name.replace("/", layout.SEPARATOR))
    except boundary.RefusedName:
        return None
    if os.path.dirname(path) != root.rstrip(os.sep):
        return None  # INBOX (the root itself), or a layout with levels
    try:
        for place in (path, os.path.join(path, "tmp"), os.path.join(path, "new"), os.path.join(path, "cur")):
            if not stat.S_ISDIR(os.lstat(place).st_mode):  # lstat: a symlink is no directory here
                return None
    except OSError:
        return None
    return path


def info_letters(path, flags, address=""):
    """
    The maildir info letters of `flags` in the folder at `path`, giving
    new keywords their letters in `dovecot-keywords` (under the uidlist's
    lock, as IMAP STORE does); blocking. Keywords past the 26 letters a
    file name holds are not kept (logged).
    """
    wanted = normalise(flags)
    keywords = Keywords(path)
    ensure_maildir(path)
    keywords.refresh()
    missing = keywords.missing(wanted)
    if missing:
        with UidList(path).locked():
            keywords.refresh()
            keywords.add(missing)
    letters, extra = keywords.info_for(wanted)
    if extra:
        log.warn("delivery to {user}: no keyword letter left for {flags}; not kept", user=address, flags=" ".join(sorted(extra)))
    return letters


def folder_dir(root, name):
    """
    The folder a delivery names (a plus tag, a check's Junk), through the
    account boundary (blocking); None for a name that can't be a folder
    of this account. Maildir++ layout: INBOX is the root, `Sent` is
    `.Sent`, `A/B` is `.A.B`.
    """
    try:
        return layout.resolve(root, name.replace("/", layout.SEPARATOR))
    except boundary.RefusedName:
        return None


@implementer(IFolderStore)
class MaildirStore(HeldFolders):
    """Users' mail in maildirs under a path template."""

    def __init__(self, path_template, poll_interval=1.0, clock=None):
        self.path_template = path_template
        self.poll_interval = poll_interval
        self._clock = clock
        self._folders = weakref.WeakValueDictionary()  # folder path -> MaildirMailFolder
        self._opening = {}  # folder path -> Deferred of the first sync
        self._watched = set()  # folders with subscribers (strong refs)
        self._held = {}  # changed folders nobody watches, until their index is written (strong refs)
        self._kept = {}  # folders their last session left lately (strong refs; HeldFolders)
        self._poller = None
        self._set_up = set()  # roots whose special-use folders exist
        self._root_locks = weakref.WeakValueDictionary()

    def user_root(self, address):
        return expand(self.path_template, address)

    # --- IMailStore --------------------------------------------------------------

    def deliver(self, address, source, folder=None, flags=()):
        try:
            root = self.user_root(address)
        except PermanentFailure:
            return defer.fail()

        def run():
            target = root
            if folder:
                # `alice+/@` (".", the domain directory) and the like land in INBOX.
                candidate = plain_folder_dir(root, folder) or folder_dir(root, folder)
                if candidate is not None and os.path.isdir(os.path.join(candidate, "cur")):
                    target = candidate
            if flags:
                # A Sieve script's flags (RFC 5232): the info letters, so into cur/ as APPEND does.
                return target, write_message(target, source, info_letters(target, flags, address), cur=True), True
            return target, write_message(target, source), False

        def published(result):
            target, key, flagged = result
            # IMAP sessions on this folder hear of it now, not at the next poll.
            self._changed(target, None if flagged else key)
            return key

        return threads.deferToThread(run).addCallback(published)

    def inbox(self, address):
        try:
            root = self.user_root(address)
        except PermanentFailure:
            return defer.fail()
        return defer.succeed(MaildirFolder(root, "INBOX", changed=lambda: self._changed(root)))

    # --- IFolderStore ----------------------------------------------------------------

    def account(self, address):
        try:
            root = self.user_root(address)
        except PermanentFailure:
            return defer.fail()
        if root in self._set_up:
            return defer.succeed(MaildirAccount(self, address, root))

        def ready(_):
            self._set_up.add(root)
            return MaildirAccount(self, address, root)

        return self._root_lock(root).run(threads.deferToThread, set_up, root).addCallback(ready)

    # --- the folder registry ----------------------------------------------------------

    def _open_folder(self, path, name, check=None):
        """
        The one folder object for `path`, synced once; KeyError if absent.

        @param check: run in a thread before a folder is first opened
            (layout.confine: the account boundary); it raises to refuse.
        """
        self._flush_held()
        existing = self._folders.get(path)
        if existing is not None and existing._loaded and not existing._gone:
            # Cheap when nothing changed (three stats); a folder nobody
            # watches may have changed since it was last looked at.
            return existing.sync().addCallback(lambda _: existing)
        if path in self._opening:
            waiter = defer.Deferred()
            self._opening[path].append(waiter)
            return waiter
        self._opening[path] = waiters = []

        def exists():
            if check is not None:
                check()
            if layout.is_inbox(name):
                ensure_maildir(path)
                return True
            if not os.path.isdir(path):
                return False
            ensure_maildir(path)
            return True

        def made(found):
            if not found:
                raise KeyError(name)
            folder = self._folders.get(path)
            if folder is None or folder._gone:
                folder = MaildirMailFolder(self, path, name)
                self._folders[path] = folder
            return folder.sync().addCallback(lambda _: folder)

        def done(result):
            self._opening.pop(path, None)
            for waiter in waiters:
                waiter.callback(result)
            return result

        return threads.deferToThread(exists).addCallback(made).addBoth(done)

    def _open_paths(self):
        return list(self._folders.keys())

    def _changed(self, path, delivered=None):
        """Something of ours wrote into `path`: sync its folder if open."""
        folder = self._folders.get(path)
        if folder is not None and folder._loaded and not folder._gone:
            d = folder.delivered(delivered) if delivered else folder.sync()
            d.addErrback(lambda f: log.failure("syncing {path}", f, path=path))

    def _root_lock(self, root):
        lock = self._root_locks.get(root)
        if lock is None:
            lock = self._root_locks[root] = defer.DeferredLock()
        return lock

    def _with_folder_locks(self, paths, f):
        """Run `f` holding the locks of the open folders among `paths`."""
        folders = sorted(
            {id(x): x for x in (self._folders.get(p) for p in paths) if x is not None}.values(), key=lambda x: x.path
        )

        def step(i):
            if i == len(folders):
                return defer.maybeDeferred(f)
            return folders[i]._lock.run(step, i + 1)

        return step(0)

    def _forget_folder(self, path):
        folder = self._folders.pop(path, None)
        if folder is not None:
            self._unwatch(folder)
            self._kept.pop(folder, None)
            folder._forget()

    def _relocate_folders(self, moves):
        """After a rename: the open folder objects follow their directories."""
        found = [(self._folders.pop(source, None), target, name) for source, target, name in moves]
        for folder, target, name in found:
            if folder is not None:
                folder._relocate(target, name)
                self._folders[target] = folder

    # --- watching the disk -------------------------------------------------------------

    def _watch(self, folder):
        self._watched.add(folder)
        if self._poller is None:
            self._poller = task.LoopingCall(self._poll)
            if self._clock is not None:
                self._poller.clock = self._clock
            self._poller.start(self.poll_interval, now=False).addErrback(
                lambda f: log.failure("folder poller stopped", f)
            )

    def _poll(self):
        """Sync the watched folders that changed on disk (outside writers)."""
        self._flush_held()
        folders = [f for f in self._watched if not f._gone]
        if len(folders) <= INLINE_CHECKS:
            self._sync_changed(folders, [f for f in folders if f.needs_scan()])
            return None
        d = threads.deferToThread(lambda: [f for f in folders if f.needs_scan()])
        d.addCallback(lambda changed: self._sync_changed(folders, changed))
        d.addErrback(lambda f: log.failure("polling folders", f))
        return d

    def _sync_changed(self, folders, changed):
        for folder in changed:
            folder.sync().addErrback(lambda f, path=folder.path: log.failure("syncing {path}", f, path=path))
        for folder in folders:
            if folder.flush_due():
                folder.flush()

    def close(self):
        """Stop watching and write every open folder's index (server stop)."""
        for folder in list(self._watched):
            self._unwatch(folder)
        folders = list(self._folders.values())
        self._held.clear()
        self._kept.clear()
        return defer.DeferredList([f.flush() for f in folders])
