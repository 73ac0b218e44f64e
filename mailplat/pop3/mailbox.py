"""
A POP3 maildrop over any IFolder (RFC 1939): a snapshot of INBOX taken at
login, deletions marked during the session and applied only at QUIT.
"""

import hashlib

from twisted.mail import pop3
from zope.interface import implementer

from mailplat.calls import call_backend, calling

# IFolder.open_message fails with KeyError for a message that has gone.
open_message = calling(KeyError, FileNotFoundError)


def uidl_for(key):
    """RFC 1939 7: 1-70 printable ASCII characters, stable forever."""
    base = key.split(",", 1)[0]
    if len(base) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in base):
        return base
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()


@implementer(pop3.IMailbox)
class POP3Mailbox:
    """Twisted's pop3.IMailbox, plus the extras our server uses."""

    loginDelay = 0
    messageExpiration = None

    def __init__(self, folder, messages):
        self.folder = folder
        self.messages = list(messages)
        self.deleted = set()
        self.retrieved = set()

    @classmethod
    def open(cls, store, address):
        d = call_backend(store.inbox, address)
        return d.addCallback(lambda folder: call_backend(folder.messages).addCallback(lambda msgs: cls(folder, msgs)))

    def _index(self, i):
        if not isinstance(i, int) or i < 0 or i >= len(self.messages):
            raise ValueError("no such message")
        return i

    def listMessages(self, i=None):
        if i is None:
            return [0 if n in self.deleted else m.size for n, m in enumerate(self.messages)]
        i = self._index(i)
        return 0 if i in self.deleted else self.messages[i].size

    def live(self):
        """(number, message) for the messages not marked deleted, 1-based."""
        return [(n + 1, m) for n, m in enumerate(self.messages) if n not in self.deleted]

    def is_deleted(self, i):
        return self._index(i) in self.deleted

    def getMessage(self, i):
        i = self._index(i)
        self.retrieved.add(i)
        return open_message(self.folder.open_message, self.messages[i].key)

    def getUidl(self, i):
        return uidl_for(self.messages[self._index(i)].key)

    def deleteMessage(self, i):
        self.deleted.add(self._index(i))

    def undeleteMessages(self):
        self.deleted.clear()

    def sync(self):
        """Apply the session's changes (QUIT in the UPDATE state)."""
        keys = [self.messages[i].key for i in sorted(self.deleted)]
        seen = [self.messages[i].key for i in sorted(self.retrieved - self.deleted)]
        d = call_backend(self.folder.remove, keys)
        if seen and hasattr(self.folder, "add_flags"):
            # As Dovecot does: mail read over POP3 is \Seen over IMAP.
            d.addCallback(lambda _: call_backend(self.folder.add_flags, seen, {"\\Seen"}))
        return d

    def logout(self):
        pass
