"""
A user's INBOX as POP3 reads it (L{IFolder}): the messages by UID, keys
"UIDVALIDITY.UID" (so UIDL is the same on every node), bodies from the
blob store; DELE's removals and RETR's \\Seen are transactions like
IMAP's, so sessions on every node hear of them.
"""

import io

from zope.interface import implementer

from mailplat.interfaces import IFolder, IStoredMessage
from mailplat.store.sql import account as accounts
from mailplat.store.sql import flags as flagset
from mailplat.store.sql import mailbox, names
from mailplat.store.sql.info import message_key, parse_key


@implementer(IStoredMessage)
class StoredMessage:
    __slots__ = ("key", "size", "flags")

    def __init__(self, key, size, flags):
        self.key = key
        self.size = size
        self.flags = flags


def _inbox(cursor, address):
    account = accounts.account_id(cursor, address)
    cursor.execute(
        "SELECT id, uidvalidity FROM mailplat_mailboxes WHERE account = %s AND name = %s", (account, names.INBOX)
    )
    return cursor.fetchone()


def _list(cursor, address):
    mailbox_id, validity = _inbox(cursor, address)
    cursor.execute(
        "SELECT uid, size, flags, keywords FROM mailplat_messages WHERE mailbox = %s ORDER BY uid", (mailbox_id,)
    )
    rows = cursor.fetchall()
    return mailbox_id, [StoredMessage(message_key(validity, u), s, flagset.joined(f, k)) for u, s, f, k in rows]


def _uids(cursor, address, keys):
    mailbox_id, validity = _inbox(cursor, address)
    uids = [p[1] for p in map(parse_key, keys) if p is not None and p[0] == validity]
    return mailbox_id, uids


@implementer(IFolder)
class SQLInbox:
    name = names.INBOX

    def __init__(self, store, address):
        self.store = store
        self.address = address

    def messages(self):
        d = self.store.db.run("listing the inbox", _list, self.address)
        return d.addCallback(lambda result: result[1])

    def open_message(self, key):
        store = self.store

        def read(cursor):
            mailbox_id, uids = _uids(cursor, self.address, [key])
            found = mailbox.bodies_of(cursor, store.blobs, mailbox_id, uids)
            if not found:
                raise KeyError(key)
            return io.BytesIO(found[uids[0]])

        return store.db.run("reading a message", read)

    def _change(self, what, function, keys):
        def run(cursor):
            mailbox_id, uids = _uids(cursor, self.address, keys)
            if uids:
                function(cursor, mailbox_id, uids)
            return mailbox_id

        d = self.store.db.run(what, run)
        return d.addCallback(self.store._changed).addCallback(lambda _: None)

    def remove(self, keys):
        return self._change(
            "removing messages", lambda c, m, uids: mailbox.expunge(c, m, uids, only_deleted=False), keys
        )

    def add_flags(self, keys, flags):
        """As Dovecot does: mail read over POP3 is \\Seen over IMAP."""
        flags = flagset.normalise(flags)
        return self._change("flagging messages", lambda c, m, uids: mailbox.store_flags(c, m, uids, flags, "+"), keys)
