"""
One maildir folder as the protocols see it: a scan of new/ and cur/, the
messages' sizes and flags from their names, removal and flag changes.

Other programs (mutt, mbsync, Dovecot, Python's mailbox) may rename, flag
or delete files at any time; every operation copes with a file that has
moved since the last scan.
"""

import os

from twisted.internet import threads
from zope.interface import implementer

from mailplat.interfaces import IFolder, IStoredMessage
from mailplat.store.maildir import names
from mailplat.store.maildir.deliver import fsync_dir


@implementer(IStoredMessage)
class MaildirMessage:
    __slots__ = ("key", "subdir", "filename", "size", "flags", "info")

    def __init__(self, key, subdir, filename, size, info):
        self.key = key
        self.subdir = subdir
        self.filename = filename
        self.size = size
        self.info = info
        self.flags = names.flags_from_info(info)

    def __repr__(self):
        return f"<MaildirMessage {self.key} {self.subdir} {self.info!r}>"


def _crlf_size(path):
    """
    Size with CRLF line ends, for files without a W= field (read once).
    A message whose last line has no line end is sent by POP3 with one
    added (RFC 1939 3: the multi-line response ends CRLF "." CRLF), so
    LIST counts it too.
    """
    with open(path, "rb") as f:
        data = f.read()
    size = len(data) + data.count(b"\n") - data.count(b"\r\n")
    if data and not data.endswith(b"\n"):
        size += 2
    return size


@implementer(IFolder)
class MaildirFolder:
    """A maildir folder (INBOX is the maildir root, others `.Name`)."""

    def __init__(self, path, name="INBOX", changed=None):
        self.path = path
        self.name = name
        # Called (reactor thread) after we removed or flagged messages, so
        # the store can tell IMAP sessions at once.
        self._changed = changed
        self._vsizes = {}  # key -> CRLF size, for names without W=
        self._paths = {}  # key -> path at the last scan

    # blocking primitives (run in a thread)

    def scan(self):
        """List the folder now, oldest first."""
        found = {}
        for subdir in ("new", "cur"):
            directory = os.path.join(self.path, subdir)
            try:
                entries = os.listdir(directory)
            except FileNotFoundError:
                continue
            for filename in entries:
                if filename.startswith("."):
                    continue
                key, info = names.split_info(filename)
                if key in found:
                    continue  # caught mid-rename by another program
                size = self._size_of(key, os.path.join(directory, filename))
                if size is None:
                    continue  # vanished
                found[key] = MaildirMessage(key, subdir, filename, size, info)
        self._paths = {k: os.path.join(self.path, m.subdir, m.filename) for k, m in found.items()}
        return sorted(found.values(), key=lambda m: names.sort_key(m.key))

    def _size_of(self, key, path):
        _, vsize = names.sizes_from_key(key)
        if vsize is not None:
            return vsize
        if key not in self._vsizes:
            try:
                self._vsizes[key] = _crlf_size(path)
            except FileNotFoundError:
                return None
        return self._vsizes[key]

    def locate(self, key):
        """Current path of a message, looking again if it has moved; None if gone."""
        known = self._paths.get(key)
        if known is not None and os.path.exists(known):
            return known
        for subdir in ("cur", "new"):
            directory = os.path.join(self.path, subdir)
            try:
                entries = os.listdir(directory)
            except FileNotFoundError:
                continue
            for filename in entries:
                if filename == key or filename.startswith(key + ":"):
                    return os.path.join(directory, filename)
        return None

    def open_path(self, message):
        """Open a scanned message, following it if another program renamed it."""
        path = os.path.join(self.path, message.subdir, message.filename)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            moved = self.locate(message.key)
            if moved is None:
                raise KeyError(message.key)
            return open(moved, "rb")

    def remove_now(self, keys):
        changed = set()
        for key in keys:
            path = self.locate(key)
            if path is None:
                continue
            try:
                os.unlink(path)
                changed.add(os.path.dirname(path))
            except FileNotFoundError:
                pass
        for directory in changed:
            fsync_dir(directory)

    def set_flags_now(self, key, flags):
        """Rename a message into cur/ with the info for `flags`."""
        path = self.locate(key)
        if path is None:
            return None
        _, old_info = names.split_info(os.path.basename(path))
        info = names.info_from_flags(flags, keep=old_info)
        target = os.path.join(self.path, "cur", f"{key}:2,{info}")
        if target != path:
            try:
                os.rename(path, target)
            except FileNotFoundError:
                return None
            self._paths[key] = target
        return target

    # IFolder

    def messages(self):
        return threads.deferToThread(self.scan)

    def open_message(self, key):
        def find():
            path = self.locate(key)
            if path is None:
                raise KeyError(key)
            return open(path, "rb")

        return threads.deferToThread(find)

    def remove(self, keys):
        return threads.deferToThread(self.remove_now, list(keys)).addCallback(self._notify)

    def _notify(self, result):
        if self._changed is not None:
            self._changed()
        return result

    def add_flags(self, keys, flags):
        """Add flags to messages (POP3 marks retrieved mail \\Seen, as Dovecot does)."""

        def run():
            for key in keys:
                path = self.locate(key)
                if path is None:
                    continue
                _, info = names.split_info(os.path.basename(path))
                self.set_flags_now(key, names.flags_from_info(info) | set(flags))

        return threads.deferToThread(run).addCallback(self._notify)
