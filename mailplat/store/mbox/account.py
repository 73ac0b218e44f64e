"""
One user's mbox folders as IMAP sees them (L{IMailAccount}), laid out as
Dovecot's mbox driver and mutt keep them:

- `<root>/INBOX` (or the file the `inbox` key names, e.g. a system spool),
  other folders are mbox files in the root, `Lists/twisted` is the file
  `<root>/Lists/twisted`: the hierarchy separator is '/', as Dovecot's mbox
  default. A directory is a parent that holds no mail (\\Noselect). A
  folder that holds mail and has children keeps them as Thunderbird does:
  the mbox file `Work` beside the directory `Work.sbd/` (so `Work/2024` is
  `<root>/Work.sbd/2024`); the children of a folder that holds no mail stay
  in a plain directory, as before. A level named `*.sbd` is not a folder.
  Names are modified UTF-7 on disk (RFC 3501 5.1.3), as Dovecot writes them.
- files and directories starting with '.' are not folders: `.imap/` holds
  the indexes (Dovecot's place for them), `.subscriptions` the
  subscriptions (Dovecot's mbox file name, one name a line),
  `.mailplat-special-use` the RFC 6154 attributes (`\\Sent Sent` lines);
  its presence says the account was set up, so a deleted Trash stays
  deleted. `*.lock` files are dotlocks, not folders.
"""

import os
import shutil

from twisted.internet import defer, threads
from zope.interface import implementer

from mailplat.interfaces import IMailAccount
from mailplat.store import boundary
from mailplat.store.maildir.layout import decode, encode
from mailplat.store.mbox import locking
from mailplat.store.specialuse import SPECIAL_USE, SPECIAL_USE_ATTRIBUTES

SEPARATOR = "/"
INBOX = "INBOX"
CHILDREN = ".sbd"  # Thunderbird: the directory of a mail folder's children
STATE = ".imap"
SUBSCRIPTIONS = ".subscriptions"
SPECIAL_USE_FILE = ".mailplat-special-use"


def canonical(name):
    """INBOX is case-insensitive (RFC 3501 5.1)."""
    return INBOX if name.upper() == INBOX else name


def check_spelling(name):
    """
    The spelling of a name that can be a folder (INBOX included), without
    looking at the disk.

    @raise boundary.RefusedName: see L{boundary.check_spelling}; and a
        level starting with '.' (`.imap/`, the subscriptions: not folders)
        or ending in `.lock` (a dotlock), and INBOX's "subfolders".
    """
    if isinstance(name, str) and name.upper() == INBOX:
        return
    boundary.check_spelling(name, SEPARATOR, encode=encode)
    if name.upper().startswith(INBOX + SEPARATOR):
        raise boundary.RefusedName("INBOX is an mbox file and can't have subfolders")
    for part in name.split(SEPARATOR):
        if part.startswith(".") or part.endswith(locking.LOCK_SUFFIX):
            raise boundary.RefusedName("folder name can't start with '.' or end in '.lock'")
        if part.endswith(CHILDREN):
            raise boundary.RefusedName("folder name can't end in '.sbd' (the directory of a folder's subfolders)")


def check_name(name):
    """@raise ValueError: a name CREATE or RENAME can't give a folder, saying why."""
    if isinstance(name, str) and name.upper() == INBOX:
        raise ValueError("INBOX always exists")
    check_spelling(name)


def spelled_path(root, inbox_path, name):
    """
    Where a folder name lives, from its spelling only (no I/O: safe in the
    reactor thread): exact for INBOX and top-level folders; below a folder
    that holds mail, L{locate} knows better. @raise boundary.RefusedName.
    """
    check_spelling(name)
    return inbox_path if canonical(name) == INBOX else os.path.join(root, relative(name))


def children_dir(path):
    """
    Blocking: the directory of the subfolders of the folder at `path`: the
    plain directory `path` when there is one (a parent without mail, as
    always), else `path.sbd` when the folder is a file or that directory
    exists (Thunderbird's layout), else `path` (a new parent without mail).
    """
    if os.path.isdir(path):
        return path
    if os.path.isfile(path) or os.path.isdir(path + CHILDREN):
        return path + CHILDREN
    return path


def locate(root, name):
    """Blocking: the file (or directory) of a folder other than INBOX, level by level."""
    parts = [encode(p) for p in name.split(SEPARATOR)]
    directory = root
    for part in parts[:-1]:
        directory = children_dir(os.path.join(directory, part))
    return os.path.join(directory, parts[-1])


def confine(root, inbox_path, name, path):
    """
    Blocking: refuse a folder whose file (or directory), symlinks
    followed, is not inside the account's root, or is one of the files
    that are no folders there (`.imap/`, dot files, dotlocks, INBOX under
    another name). INBOX itself may live elsewhere (a system spool).

    @raise boundary.RefusedName: outside the account.
    """
    if canonical(name) == INBOX:
        return
    rel = boundary.inside(path, root)
    if (
        rel is None
        or any(p.startswith(".") or p.endswith(locking.LOCK_SUFFIX) for p in rel.split(os.sep))
        or os.path.realpath(path) == os.path.realpath(inbox_path)
    ):
        raise boundary.RefusedName("mailbox is outside the account")


def resolve(root, inbox_path, name):
    """
    The one way from a mailbox name to its file (blocking): the spelling,
    then the real path. @raise boundary.RefusedName.
    """
    path = spelled_path(root, inbox_path, name)
    if canonical(name) != INBOX and SEPARATOR in name:
        path = locate(root, name)
    confine(root, inbox_path, name, path)
    return path


def parents(name):
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def relative(name):
    return os.path.join(*[encode(p) for p in name.split(SEPARATOR)])


def index_dir(root, name):
    return os.path.join(root, STATE, relative(name))


def _write_lines(path, lines):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _decode(text):
    try:
        return decode(text)
    except ValueError:
        return text


def read_subscriptions(root):
    """Dovecot's subscriptions (a name a line; version 2: `V\\t2` and tab-separated levels)."""
    try:
        with open(os.path.join(root, SUBSCRIPTIONS), "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").split("\n")
    except FileNotFoundError:
        return []
    tabbed = bool(lines) and lines[0].startswith("V\t")
    out = []
    for line in lines[1:] if tabbed else lines:
        line = line.rstrip("\r")
        if not line:
            continue
        name = canonical(_decode(line.replace("\t", SEPARATOR) if tabbed else line))
        if name not in out:
            out.append(name)
    return out


def read_special_use(root):
    """{name: attribute}, or None when the account was never set up."""
    try:
        with open(os.path.join(root, SPECIAL_USE_FILE), "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    out = {}
    for line in text.splitlines():
        attribute, _, encoded = line.partition(" ")
        if attribute and encoded:
            out[_decode(encoded)] = attribute
    return out


def _update(root, filename, read, write, change):
    path = os.path.join(root, filename)
    lock = locking.acquire_dotlock(path)
    try:
        value = read(root)
        new = change(value)
        if new != value:
            write(path, new)
    finally:
        locking.release_dotlock(lock)


def _write_special(path, mapping):
    _write_lines(path, [f"{a} {encode(n)}" for n, a in sorted(mapping.items())])


def _write_subscriptions(path, names):
    _write_lines(path, [encode(n) for n in names])


def make_folder(root, name):
    """Create an empty mbox file (and parent directories); False if it exists."""
    path = locate(root, name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.isdir(path):
        raise ValueError(f"{name} exists as a directory of folders")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


def set_up(root, inbox_path):
    """First use of an account: the root, INBOX and the special-use folders."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    try:
        os.makedirs(os.path.dirname(inbox_path), exist_ok=True)
        os.close(os.open(inbox_path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError:
        pass  # a system spool we may not create: an absent INBOX reads as empty
    if read_special_use(root) is not None:
        return
    path = os.path.join(root, SPECIAL_USE_FILE)
    lock = locking.acquire_dotlock(path)
    try:
        if read_special_use(root) is not None:
            return
        mapping = {}
        for name, attribute in SPECIAL_USE:
            try:
                make_folder(root, name)
                mapping[name] = attribute
            except ValueError:
                pass
        _update(root, SUBSCRIPTIONS, read_subscriptions, _write_subscriptions,
                lambda s: s + [n for n in [INBOX] + [n for n, _ in SPECIAL_USE] if n not in s])
        _write_special(path, mapping)
    finally:
        locking.release_dotlock(lock)


def list_folders(root, inbox_path):
    """[(name, frozenset of attributes)], INBOX first, then by name."""
    files, dirs = set(), set()
    own_inbox = os.path.join(root, INBOX)
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        rel = os.path.relpath(directory, root)
        prefix = "" if rel == "." else SEPARATOR.join(_decode(_level(p)) for p in rel.split(os.sep)) + SEPARATOR
        # os.walk does not descend into symlinked directories; a symlink
        # that leads out of the account is not listed at all.
        subdirs[:] = [d for d in subdirs if _listable(root, inbox_path, os.path.join(directory, d))]
        for d in subdirs:
            # `Work.sbd/` holds Work's subfolders: Work is \Noselect only without its file.
            dirs.add(prefix + _decode(_level(d)))
        for n in names:
            full = os.path.join(directory, n)
            if n.startswith(".") or n.endswith((locking.LOCK_SUFFIX, CHILDREN)) or full == own_inbox:
                continue
            if not _listable(root, inbox_path, full):
                continue
            files.add(prefix + _decode(n))
    dirs -= files
    special = read_special_use(root) or {}
    has_children = {p for n in files | dirs for p in parents(n)}
    out = [(INBOX, frozenset({"\\HasNoChildren"}))]
    for name in sorted(files | dirs):
        if name.upper() == INBOX:
            continue
        attributes = {"\\HasChildren" if name in has_children else "\\HasNoChildren"}
        if name in dirs:
            attributes.add("\\Noselect")
        if name in special:
            attributes.add(special[name])
        out.append((name, frozenset(attributes)))
    return out


def _level(entry):
    """A directory entry's folder level: `Work.sbd` is Work's subfolders."""
    return entry[: -len(CHILDREN)] if entry.endswith(CHILDREN) else entry


def _listable(root, inbox_path, path):
    if not os.path.islink(path):
        return True
    try:
        confine(root, inbox_path, os.path.basename(path), path)
    except boundary.RefusedName:
        return False
    return True


@implementer(IMailAccount)
class MboxAccount:
    """A user's mbox folders; made by L{MboxStore.account}."""

    separator = SEPARATOR

    def __init__(self, store, address, root, inbox_path):
        self.store = store
        self.address = address
        self.root = root
        self.inbox_path = inbox_path

    def __repr__(self):
        return f"<MboxAccount {self.address}>"

    def _serial(self, f, *args):
        return self.store._root_lock(self.root).run(f, *args)

    def path_of(self, name):
        """The spelled path of a name (no I/O). @raise boundary.RefusedName."""
        return spelled_path(self.root, self.inbox_path, name)

    def _confine(self, name, path):
        """Blocking: the real-path half of L{resolve}."""
        confine(self.root, self.inbox_path, name, path)

    def folders(self):
        return threads.deferToThread(list_folders, self.root, self.inbox_path)

    def folder(self, name):
        # Every command that names a mailbox comes through here or through
        # resolve (create, delete, rename): the account boundary.
        try:
            path = self.path_of(name)
        except boundary.RefusedName:
            return defer.fail()
        name = canonical(name)
        if SEPARATOR in name:
            # Below a folder that holds mail the file is in its `.sbd/`: look.
            d = threads.deferToThread(self._locate, name)
            return d.addCallback(
                lambda path: self.store._open_folder(path, name, index_dir(self.root, name), self.root)
            )
        return self.store._open_folder(
            path, name, index_dir(self.root, name), self.root, check=lambda: self._confine(name, path)
        )

    def _locate(self, name):
        """Blocking: the real path of a checked name, inside the account (L{resolve})."""
        return resolve(self.root, self.inbox_path, name)

    def special_use(self):
        return threads.deferToThread(lambda: read_special_use(self.root) or {})

    def create(self, name, special_use=None):
        try:
            check_name(name)
            attribute = None
            if special_use is not None:
                attribute = SPECIAL_USE_ATTRIBUTES.get(special_use.lower())
                if attribute is None:
                    raise ValueError(f"unknown special use {special_use!r}")
        except ValueError:
            return defer.fail()
        root = self.root

        def run():
            self._locate(name)
            if not make_folder(root, name):
                raise boundary.FolderExists(f"folder exists: {name}")
            if attribute:
                _update(root, SPECIAL_USE_FILE, lambda r: read_special_use(r) or {}, _write_special,
                        lambda m: dict(m, **{name: attribute}))

        return self._serial(threads.deferToThread, run)

    def delete(self, name):
        try:
            check_spelling(name)
        except boundary.RefusedName:
            return defer.fail()
        name = canonical(name)
        if name == INBOX:
            return defer.fail(ValueError("INBOX can't be deleted"))
        root = self.root

        def run(path):
            children = path + CHILDREN
            if os.path.islink(path):
                # A symlink (to another folder of the account) goes as a link.
                os.unlink(path)
            elif os.path.isdir(path) or (not os.path.exists(path) and os.path.isdir(children)):
                # RFC 3501 6.3.4: a \Noselect name with inferiors can't go.
                directory = path if os.path.isdir(path) else children
                if any(not n.startswith(".") for n in os.listdir(directory)):
                    raise ValueError(f"{name} has subfolders")
                os.rmdir(directory)
            elif os.path.isfile(path):
                lock = locking.acquire_dotlock(path, self.store.lock_timeout)
                try:
                    os.unlink(path)
                finally:
                    locking.release_dotlock(lock)
                # RFC 3501 6.3.4: its subfolders stay, under a \Noselect name.
                try:
                    os.rmdir(children)
                except OSError:
                    pass
            else:
                raise KeyError(name)
            shutil.rmtree(index_dir(root, name), ignore_errors=True)
            _update(root, SPECIAL_USE_FILE, lambda r: read_special_use(r) or {}, _write_special,
                    lambda m: {k: v for k, v in m.items() if k != name})

        def locked(path):
            d = self.store._with_folder_lock(path, lambda: threads.deferToThread(run, path))
            return d.addCallback(lambda _: self.store._forget_folder(path))

        return self._serial(lambda: threads.deferToThread(self._locate, name).addCallback(locked))

    def rename(self, old, new):
        try:
            check_spelling(old)
            check_name(new)
        except ValueError:
            return defer.fail()
        old = canonical(old)
        if old == INBOX:
            return self._serial(self._rename_inbox, new)
        root = self.root

        def paths():
            return self._locate(old), self._locate(new)

        def run(source, target):
            # A mail folder's subfolders (`name.sbd/`) move with it.
            children = source + CHILDREN if not os.path.isdir(source) and os.path.isdir(source + CHILDREN) else None
            if not os.path.exists(source) and children is None:
                raise KeyError(old)
            if new == old or new.startswith(old + SEPARATOR):
                raise ValueError(f"can't rename {old} into itself")
            if os.path.exists(target) or os.path.exists(target + CHILDREN):
                raise boundary.FolderExists(f"folder exists: {new}")
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            lock = locking.acquire_dotlock(source, self.store.lock_timeout) if os.path.isfile(source) else None
            try:
                if os.path.exists(source):
                    os.rename(source, target)
                if children is not None:
                    os.rename(children, target + CHILDREN)
            finally:
                locking.release_dotlock(lock)
            old_index, new_index = index_dir(root, old), index_dir(root, new)
            if os.path.isdir(old_index):
                os.makedirs(os.path.dirname(new_index), mode=0o700, exist_ok=True)
                os.rename(old_index, new_index)
            moves = {old: new}
            _update(root, SPECIAL_USE_FILE, lambda r: read_special_use(r) or {}, _write_special,
                    lambda m: {_moved(k, old, new): v for k, v in m.items()})
            # RFC 3501 6.3.5 leaves subscriptions alone; Dovecot moves them, and so do we.
            _update(root, SUBSCRIPTIONS, read_subscriptions, _write_subscriptions,
                    lambda s: [_moved(n, old, new) for n in s])
            return moves

        def locked(found):
            source, target = found

            def relocate(_):
                self.store._relocate_folders(source, target, old, new, root)
                self.store._relocate_folders(source + CHILDREN, target + CHILDREN, old, new, root)

            d = self.store._with_folder_lock(source, lambda: threads.deferToThread(run, source, target))
            return d.addCallback(relocate)

        return self._serial(lambda: threads.deferToThread(paths).addCallback(locked))

    @defer.inlineCallbacks
    def _rename_inbox(self, new):
        # RFC 3501 6.3.5: the messages move to the new folder; INBOX stays, empty.
        root = self.root

        def make():
            self._locate(new)
            if not make_folder(root, new):
                raise boundary.FolderExists(f"folder exists: {new}")

        yield threads.deferToThread(make)
        inbox = yield self.folder(INBOX)
        target = yield self.folder(new)
        messages = yield inbox.sync()
        if messages:
            yield inbox.move_to([m.uid for m in messages], target)

    def subscriptions(self):
        return threads.deferToThread(read_subscriptions, self.root)

    def subscribe(self, name):
        # RFC 3501 6.3.6: a name that does not exist may be subscribed, but
        # not one no folder can have.
        try:
            check_spelling(name)
        except boundary.RefusedName:
            return defer.fail()
        name = canonical(name)
        return self._serial(threads.deferToThread, _update, self.root, SUBSCRIPTIONS, read_subscriptions,
                            _write_subscriptions, lambda s: s if name in s else s + [name])

    def unsubscribe(self, name):
        name = canonical(name)
        return self._serial(threads.deferToThread, _update, self.root, SUBSCRIPTIONS, read_subscriptions,
                            _write_subscriptions, lambda s: [n for n in s if n != name])


def _moved(name, old, new):
    if name == old:
        return new
    if name.startswith(old + SEPARATOR):
        return new + name[len(old):]
    return name
