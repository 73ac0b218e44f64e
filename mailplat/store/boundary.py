"""
The account boundary for mailbox names, shared by the stores.

An IMAP mailbox name (RFC 3501 5.1) and a plus tag of a recipient are data
from the network. A store turns one into a place on disk with its own
layout (maildir/layout.py `resolve`, mbox/account.py `resolve`), and both
use the checks here: the spelling first (no I/O, so it can run in the
reactor thread), then the real path, symlinks followed, which must lie
inside the account's own root (blocking: run in a thread).

A name refused here names no mailbox of the account: L{RefusedName} is a
KeyError (no such mailbox: SELECT, STATUS, DELETE answer NONEXISTENT) and a
ValueError (a name that can't be made: CREATE and RENAME answer CANNOT),
and its text never holds a path.
"""

import os


class RefusedName(KeyError, ValueError):
    """A mailbox name outside the account, or one the layout can't hold."""

    def __init__(self, why="mailbox name not allowed"):
        super().__init__(why)
        self.why = why

    def __str__(self):
        # KeyError's str() is the repr of its argument; say it plainly.
        return self.why


class FolderExists(ValueError):
    """
    CREATE or RENAME onto a name that is already a folder: a ValueError (the
    stores' old contract), told apart so that IMAP answers [ALREADYEXISTS]
    (RFC 5530 3) rather than [CANNOT].
    """


# RFC 3501 9: a mailbox name is an astring, CR and LF only in a literal; a
# name that holds them, NUL or another control can't be a file name or a
# line of the subscriptions file.
def _has_control(name):
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def check_spelling(name, separator, max_encoded=250, encode=None):
    """
    The checks every layout shares, on the spelling only.

    @param separator: the store's hierarchy separator (RFC 3501 5.1.1).
    @raise RefusedName: empty, a control character, '/' at the start,
        an empty level (`a..b`, `a//b`, a leading or trailing separator),
        a level `.` or `..`, or too long once encoded.
    """
    if not isinstance(name, str) or not name:
        raise RefusedName("empty mailbox name")
    if _has_control(name):
        raise RefusedName("mailbox name has a control character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from bad modified UTF-7) can't be a file name.
        raise RefusedName("mailbox name is not valid Unicode")
    if name.startswith("/"):
        raise RefusedName("mailbox name can't start with '/'")
    for level in name.split(separator):
        if not level:
            raise RefusedName("mailbox name has an empty level")
        if level in (".", ".."):
            raise RefusedName("mailbox name has a '.' or '..' level")
    if len(encode(name) if encode else name) > max_encoded:
        raise RefusedName("mailbox name too long")


def inside(path, root):
    """
    The real path of `path` (symlinks followed, blocking), relative to the
    real `root`; None when it is the root itself or lies outside it.
    """
    top = os.path.realpath(root)
    real = os.path.realpath(path)
    if real == top or not real.startswith(top.rstrip(os.sep) + os.sep):
        return None
    return os.path.relpath(real, top)


def tag_folder(tag):
    """
    A plus tag (`alice+lists@`) as a folder name, or None for one that
    can name no folder: the same spelling rules as IMAP names, with either
    separator ('/' and '.'), so `alice+/@` and `alice+..@` go to INBOX.
    """
    if not tag:
        return None
    try:
        check_spelling(tag, "/")
        check_spelling(tag, ".")
    except RefusedName:
        return None
    return tag
