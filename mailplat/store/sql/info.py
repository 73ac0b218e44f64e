"""
One message as a folder's view knows it (L{SQLMessageInfo}), made from a
row in a pool thread (mailbox.changes), so that a large folder's first load
does not hold the reactor; and its key, "UIDVALIDITY.UID".
"""

from zope.interface import implementer

from mailplat.interfaces import IMessageInfo
from mailplat.store.sql import flags as flagset


def message_key(uidvalidity, uid):
    """The stable name of a message (POP3's UIDL): its UIDVALIDITY and UID."""
    return f"{uidvalidity}.{uid}"


def parse_key(key):
    """(uidvalidity, uid), or None for a key this store never gave."""
    validity, dot, uid = str(key).partition(".")
    if not dot or not validity.isdigit() or not uid.isdigit():
        return None
    return int(validity), int(uid)


@implementer(IMessageInfo)
class SQLMessageInfo:
    """One message as the view knows it; replaced, never changed."""

    __slots__ = ("uid", "key", "size", "flags", "internaldate", "modseq", "savedate", "body")

    def __init__(self, uid, key, size, flags, internaldate, modseq, savedate, body):
        self.uid = uid
        self.key = key
        self.size = size
        self.flags = flags
        self.internaldate = internaldate
        self.modseq = modseq
        self.savedate = savedate  # RFC 8514
        self.body = body  # the body's hash (blobs.py)

    def __repr__(self):
        return f"<SQLMessageInfo {self.uid} modseq {self.modseq}>"


# Cached values read as text columns of their own when they are strings
# (mailbox.MESSAGE_COLUMNS): what FETCH ENVELOPE and BODYSTRUCTURE ask for.
STRING_FIELDS = ("envelope", "bodystructure", "body")


def from_row(row, uidvalidity):
    """
    (info, {field: string} or None, the other cached values as JSON text or
    None) of a row of mailbox.MESSAGE_COLUMNS.
    """
    uid, modseq, system, keywords, internaldate, savedate, size, body = row[:8]
    flags = flagset.joined(system, keywords)
    info = SQLMessageInfo(uid, message_key(uidvalidity, uid), size, flags, internaldate, modseq, savedate, bytes(body))
    strings = {f: v for f, v in zip(STRING_FIELDS, row[8:-1]) if v is not None} or None
    rest = row[-1]
    return info, strings, (None if rest == "{}" else rest)


def uid_of(info):
    return info.uid
