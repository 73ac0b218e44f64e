"""
POP3's view of the mbox INBOX (L{IFolder}): the shared folder object,
with UID-based keys (Dovecot's UIDL), deletions at QUIT and \\Seen for
mail retrieved.
"""

from zope.interface import implementer

from mailplat.interfaces import IFolder


@implementer(IFolder)
class MboxPOP3Folder:
    """A POP3 maildrop over the shared INBOX folder object: keys are UID-based."""

    name = "INBOX"

    def __init__(self, opening):
        self._opening = opening  # a callable returning a Deferred of the MboxFolder

    def _folder(self):
        return self._opening()

    def _uids(self, folder, keys):
        by_key = {m.key: m.uid for m in folder.messages()}
        return [by_key[k] for k in keys if k in by_key]

    def messages(self):
        return self._folder().addCallback(lambda folder: list(folder.messages()))

    def open_message(self, key):
        def found(folder):
            uids = self._uids(folder, [key])
            if not uids:
                raise KeyError(key)
            return folder.open(uids[0])

        return self._folder().addCallback(found)

    def remove(self, keys):
        return self._folder().addCallback(lambda folder: folder.remove(self._uids(folder, keys)))

    def add_flags(self, keys, flags):
        """Mail read over POP3 is \\Seen over IMAP, as Dovecot does."""
        def mark(folder):
            d = folder.store_flags(self._uids(folder, keys), flags, "+")
            # Into the file before QUIT is answered: mutt reads it next.
            return d.addCallback(lambda _: folder.write_back())

        return self._folder().addCallback(mark)
