"""
One user's maildir as IMAP sees it (L{IMailAccount}): the folder list,
create / delete / rename, subscriptions and special-use folders.

On disk, as Dovecot keeps them:
- folders: Maildir++ directories `.Name` in the root (see layout.py), each
  with tmp/, new/, cur/ and an empty `maildirfolder` file;
- subscriptions: `subscriptions` in the root, one folder name a line
  (modified UTF-7), written under a dotlock;
- special use (RFC 6154): `mailplat-special-use` in the root, lines
  `\\Sent Sent`. Its presence also says the account was set up, so a user
  who deletes Trash does not get it back at the next login.
"""

import os
import shutil

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import IMailAccount
from mailplat.store import boundary
from mailplat.store.maildir import layout, names
from mailplat.store.maildir.deliver import ensure_maildir, fsync_dir
from mailplat.store.maildir.uidlist import dotlock
from mailplat.store.specialuse import SPECIAL_USE, SPECIAL_USE_ATTRIBUTES

log = Logger()

SUBSCRIPTIONS = "subscriptions"
SPECIAL_USE_FILE = "mailplat-special-use"
# Names other clients and servers gave these folders: a tree that already
# has one gets the attribute there instead of a second folder.
SPECIAL_USE_ALIASES = {
    "\\Drafts": ("Draft",),
    "\\Sent": ("Sent Messages", "Sent Items", "Sent Mail"),
    "\\Trash": ("Deleted Messages", "Deleted Items", "Bin"),
    "\\Junk": ("Spam", "Junk E-mail", "Junk Mail"),
    "\\Archive": ("Archives",),
}


# --- blocking helpers ---------------------------------------------------------


def _write_lines(path, lines):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path))


def read_subscriptions(root):
    """Dovecot's `subscriptions` (version 1: a name a line; version 2:
    a `V\\t2` header and tab as the hierarchy separator)."""
    try:
        with open(os.path.join(root, SUBSCRIPTIONS), "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").split("\n")
    except FileNotFoundError:
        return []
    tabbed = bool(lines) and lines[0].startswith("V\t")
    if tabbed:
        lines = lines[1:]
    out = []
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            continue
        if tabbed:
            line = line.replace("\t", layout.SEPARATOR)
        try:
            name = layout.decode(line)
        except ValueError:
            name = line
        name = layout.canonical(name)
        if name not in out:
            out.append(name)
    return out


def write_subscriptions(root, subscribed):
    _write_lines(os.path.join(root, SUBSCRIPTIONS), [layout.encode(n) for n in subscribed])


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
            try:
                out[layout.decode(encoded)] = attribute
            except ValueError:
                out[encoded] = attribute
    return out


def write_special_use(root, mapping):
    _write_lines(
        os.path.join(root, SPECIAL_USE_FILE),
        [f"{attribute} {layout.encode(name)}" for name, attribute in sorted(mapping.items())],
    )


def make_folder(root, name):
    """Create one Maildir++ folder; False if it already exists."""
    path = layout.folder_path(root, name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    ensure_maildir(path)
    # Maildir++: the empty `maildirfolder` file marks a sub-folder.
    open(os.path.join(path, layout.FOLDER_MARKER), "ab").close()
    fsync_dir(root)
    return True


def set_up(root):
    """First use of an account: the maildir and the special-use folders."""
    ensure_maildir(root)
    if read_special_use(root) is not None:
        return
    with dotlock(os.path.join(root, SPECIAL_USE_FILE)):
        if read_special_use(root) is not None:
            return
        mapping = {}
        for name, attribute in SPECIAL_USE:
            for candidate in (name,) + SPECIAL_USE_ALIASES.get(attribute, ()):
                if os.path.isdir(layout.folder_path(root, candidate)):
                    name = candidate
                    break
            else:
                make_folder(root, name)
            mapping[name] = attribute
        with dotlock(os.path.join(root, SUBSCRIPTIONS)):
            subscribed = read_subscriptions(root)
            for name in [layout.INBOX] + sorted(mapping):
                if name not in subscribed:
                    subscribed.append(name)
            write_subscriptions(root, subscribed)
        write_special_use(root, mapping)


def list_folders(root):
    """[(name, frozenset of attributes)], INBOX first, then by name."""
    real = {layout.INBOX}
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        name = layout.name_from_entry(entry)
        path = os.path.join(root, entry)
        if name and os.path.isdir(path) and _listable(root, path, name):
            real.add(name)
    special = read_special_use(root) or {}
    has_children = {p for n in real for p in layout.parents(n)}
    out = []
    for name in sorted(real | has_children, key=lambda n: (n != layout.INBOX, n)):
        attributes = {"\\HasChildren" if name in has_children else "\\HasNoChildren"}
        if name not in real:
            # Maildir++ parent with no directory of its own (RFC 3501 7.2.2).
            attributes.add("\\Noselect")
        if name in special:
            attributes.add(special[name])
        out.append((name, frozenset(attributes)))
    return out


def _listable(root, path, name):
    """A folder LIST may show: none that leads out of the account (a symlink, its own or its cur/'s)."""
    try:
        layout.confine(root, path, name)
    except boundary.RefusedName:
        return False
    return True


def _remove_tree(path):
    # A folder that is a symlink (to a sibling) goes as a link: rmtree
    # refuses links, and must never follow one.
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


# --- the account ----------------------------------------------------------------


@implementer(IMailAccount)
class MaildirAccount:
    """A user's maildir; made by L{MaildirStore.account}."""

    separator = layout.SEPARATOR

    def __init__(self, store, address, root):
        self.store = store
        self.address = address
        self.root = root

    def __repr__(self):
        return f"<MaildirAccount {self.address}>"

    def _serial(self, f, *args):
        """Run an account-wide change after the ones before it (per root)."""
        return self.store._root_lock(self.root).run(f, *args)

    def folders(self):
        return threads.deferToThread(list_folders, self.root)

    def folder(self, name):
        # Every command that names a mailbox comes through here or through
        # layout.resolve (create, delete, rename): the account boundary.
        try:
            path = layout.spelled_path(self.root, name)
        except boundary.RefusedName:
            return defer.fail()
        name = layout.canonical(name)
        root = self.root
        return self.store._open_folder(path, name, check=lambda: layout.confine(root, path, name))

    def special_use(self):
        """@return: Deferred firing with {name: attribute} (RFC 6154)."""
        return threads.deferToThread(lambda: read_special_use(self.root) or {})

    # --- create / delete / rename ---------------------------------------------------

    def create(self, name, special_use=None):
        try:
            layout.check_name(name)
            name = layout.canonical(name)
            attribute = None
            if special_use is not None:
                attribute = SPECIAL_USE_ATTRIBUTES.get(special_use.lower())
                if attribute is None:
                    raise ValueError(f"unknown special use {special_use!r}")
        except ValueError:
            return defer.fail()
        root = self.root

        def run():
            if os.path.isdir(layout.resolve(root, name)):
                raise boundary.FolderExists(f"folder exists: {name}")
            # RFC 3501 6.3.3: create the superiors a name needs.
            for parent in layout.parents(name):
                if not layout.is_inbox(parent):
                    make_folder(root, parent)
            if not make_folder(root, name):
                raise boundary.FolderExists(f"folder exists: {name}")
            if attribute:
                self._update_special(lambda m: m.__setitem__(name, attribute))

        return self._serial(threads.deferToThread, run)

    def _update_special(self, change):
        with dotlock(os.path.join(self.root, SPECIAL_USE_FILE)):
            mapping = read_special_use(self.root) or {}
            before = dict(mapping)
            change(mapping)
            if mapping != before:
                write_special_use(self.root, mapping)

    def _update_subscriptions(self, change):
        with dotlock(os.path.join(self.root, SUBSCRIPTIONS)):
            subscribed = read_subscriptions(self.root)
            before = list(subscribed)
            subscribed = change(subscribed)
            if subscribed != before:
                write_subscriptions(self.root, subscribed)

    def delete(self, name):
        try:
            path = layout.spelled_path(self.root, name)
        except boundary.RefusedName:
            return defer.fail()
        name = layout.canonical(name)
        if layout.is_inbox(name):
            return defer.fail(ValueError("INBOX can't be deleted"))
        root = self.root

        def run():
            layout.confine(root, path, name)
            if not os.path.isdir(path):
                raise KeyError(name)
            # Out of sight at once (one rename), then removed at leisure.
            trash = os.path.join(root, layout.TRASHED_PREFIX + names.unique_name())
            os.rename(path, trash)
            fsync_dir(root)
            _remove_tree(trash)
            self._update_special(lambda m: m.pop(name, None))

        def locked():
            return self.store._with_folder_locks([path], lambda: threads.deferToThread(run)).addCallback(
                lambda _: self.store._forget_folder(path)
            )

        return self._serial(locked)

    def rename(self, old, new):
        try:
            old_path = layout.spelled_path(self.root, old)
            layout.check_name(new)
            new = layout.canonical(new)
        except ValueError:
            return defer.fail()
        old = layout.canonical(old)
        if layout.is_inbox(old):
            return self._serial(self._rename_inbox, new)
        root = self.root
        prefix = "." + layout.encode(old) + layout.SEPARATOR

        def plan():
            """[(old name, new name, old path, new path)]: the folder and its inferiors."""
            moves = [(old, new, old_path, layout.folder_path(root, new))]
            for entry in sorted(os.listdir(root)):
                child = layout.name_from_entry(entry)
                if entry.startswith(prefix) and child is not None:
                    renamed = new + child[len(old) :]
                    moves.append((child, renamed, os.path.join(root, entry), layout.folder_path(root, renamed)))
            return moves

        def run():
            layout.confine(root, old_path, old)
            if not os.path.isdir(old_path):
                raise KeyError(old)
            layout.resolve(root, new)
            if new == old or new.startswith(old + layout.SEPARATOR):
                raise ValueError(f"can't rename {old} into itself")
            moves = plan()
            for _, renamed, _, target in moves:
                if os.path.exists(target):
                    raise boundary.FolderExists(f"folder exists: {renamed}")
            for parent in layout.parents(new):
                if not layout.is_inbox(parent):
                    make_folder(root, parent)
            for _, _, source, target in moves:
                os.rename(source, target)
            fsync_dir(root)
            mapping = {a: b for a, b, _, _ in moves}
            # RFC 3501 6.3.5 leaves subscriptions alone; Dovecot moves them,
            # and so do we, with the special-use attributes.
            self._update_special(lambda m: m.update({mapping.get(n, n): m.pop(n) for n in list(m) if n in mapping}))
            self._update_subscriptions(lambda s: [mapping.get(n, n) for n in s])
            return [(source, target, renamed) for _, renamed, source, target in moves]

        def locked():
            paths = [old_path] + [
                p for p in self.store._open_paths() if p.startswith(os.path.join(root, prefix))
            ]
            d = self.store._with_folder_locks(paths, lambda: threads.deferToThread(run))
            return d.addCallback(self.store._relocate_folders)

        return self._serial(locked)

    @defer.inlineCallbacks
    def _rename_inbox(self, new):
        # RFC 3501 6.3.5: renaming INBOX moves its messages to the new
        # folder and leaves INBOX, empty, in place; inferiors stay.
        root = self.root

        def make():
            if os.path.isdir(layout.resolve(root, new)):
                raise boundary.FolderExists(f"folder exists: {new}")
            for parent in layout.parents(new):
                if not layout.is_inbox(parent):
                    make_folder(root, parent)
            make_folder(root, new)

        yield threads.deferToThread(make)
        inbox = yield self.folder(layout.INBOX)
        target = yield self.folder(new)
        messages = yield inbox.sync()
        if messages:
            yield inbox.move_to([m.uid for m in messages], target)

    # --- subscriptions ----------------------------------------------------------------

    def subscriptions(self):
        return threads.deferToThread(read_subscriptions, self.root)

    def subscribe(self, name):
        # RFC 3501 6.3.6: a name that does not exist may be subscribed,
        # but not one no folder can have (nor one that doesn't fit on a
        # line of the file).
        try:
            layout.check_spelling(name)
        except boundary.RefusedName:
            return defer.fail()
        name = layout.canonical(name)
        return self._serial(
            threads.deferToThread, self._update_subscriptions, lambda s: s if name in s else s + [name]
        )

    def unsubscribe(self, name):
        name = layout.canonical(name)
        return self._serial(
            threads.deferToThread, self._update_subscriptions, lambda s: [n for n in s if n != name]
        )
