"""
Folder names and where they live: Dovecot's default Maildir++ layout.

INBOX is the maildir root; every other folder is a directory `.Name` in the
root, with the hierarchy separator '.' (`Archive.2025` is `.Archive.2025`).
Names are Unicode in the API and modified UTF-7 on disk (RFC 3501 5.1.3),
as Dovecot stores them unless told to use UTF-8, so a tree moves between
Dovecot and mailplat unchanged.
"""

import base64
import os

from mailplat.store import boundary

SEPARATOR = "."
INBOX = "INBOX"
# The files written in every Maildir++ folder (maildir++ spec: marks a folder).
FOLDER_MARKER = "maildirfolder"
# A folder being deleted is first renamed to this prefix (ignored by list).
TRASHED_PREFIX = "..mailplat-deleted."
# A maildir's own directories (maildir spec); deliver.py writes the same.
MAILDIR_SUBDIRS = ("tmp", "new", "cur")


def is_inbox(name):
    # RFC 3501 5.1: INBOX is case-insensitive.
    return name.upper() == INBOX


def canonical(name):
    """'inbox' -> 'INBOX', 'inbox.x' -> 'INBOX.x' (as Dovecot does);
    other names are kept as they are."""
    if is_inbox(name):
        return INBOX
    if name[: len(INBOX) + 1].upper() == INBOX + SEPARATOR:
        return INBOX + name[len(INBOX) :]
    return name


def root_of(path, name):
    """The account root of a folder directory."""
    return path if is_inbox(name) else os.path.dirname(path)


def check_spelling(name):
    """
    The spelling of a name that can be a folder of this layout (INBOX
    included), without looking at the disk.

    @raise RefusedName: see L{boundary.check_spelling}; and '/', which is no
        separator here: `.` + `/tmp` would be the maildir's own tmp/.
    """
    if isinstance(name, str) and is_inbox(name):
        return
    boundary.check_spelling(name, SEPARATOR, encode=encode)
    if "/" in name:
        raise boundary.RefusedName("mailbox name has a character maildir can't store ('/')")


def check_name(name):
    """
    A name CREATE and RENAME may give a new folder.

    @raise ValueError: a name Maildir++ can't store, saying why.
    """
    if isinstance(name, str) and is_inbox(name):
        raise ValueError("INBOX always exists")
    check_spelling(name)


def parents(name):
    """'A.B.C' -> ['A', 'A.B']."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def folder_path(root, name):
    if is_inbox(name):
        return root
    return os.path.join(root, "." + encode(name))


def spelled_path(root, name):
    """
    Where a folder name lives, from its spelling only (no I/O: safe in the
    reactor thread). @raise RefusedName: a name no folder can have.
    """
    check_spelling(name)
    return folder_path(root, canonical(name))


def confine(root, path, name):
    """
    Blocking: refuse a folder whose directory, symlinks followed, is not a
    folder of the account at `root`: INBOX is the root itself, any other
    folder a `.Name` entry right in it (a symlink to a sibling folder is
    fine, one to another account, to the root or its cur/ is not); and
    the tmp/ new/ cur/ in it are its own (maildir spec).

    @raise RefusedName: outside the account.
    """
    if not is_inbox(name):
        rel = boundary.inside(path, root)
        if rel is None or os.sep in rel or name_from_entry(rel) is None:
            raise boundary.RefusedName("mailbox is outside the account")
    real = os.path.realpath(path)
    for sub in MAILDIR_SUBDIRS:
        inner = os.path.join(path, sub)
        if os.path.lexists(inner) and os.path.realpath(inner) != os.path.join(real, sub):
            raise boundary.RefusedName("mailbox is outside the account")


def resolve(root, name):
    """
    The one way from a mailbox name to its directory (blocking): the
    spelling, then the real path. @raise RefusedName.
    """
    path = spelled_path(root, name)
    confine(root, path, name)
    return path


def name_from_entry(entry):
    """'.Sent' -> 'Sent'; None for entries that are not folders."""
    if not entry.startswith(".") or entry in (".", "..") or entry.startswith(".."):
        return None
    try:
        return decode(entry[1:])
    except ValueError:
        return entry[1:]


# --- modified UTF-7 (RFC 3501 5.1.3) -----------------------------------------


def _b64(text):
    raw = text.encode("utf-16-be")
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def encode(name):
    """Unicode -> modified UTF-7."""
    out, pending = [], []
    for c in name:
        if 0x20 <= ord(c) <= 0x7E:
            if pending:
                out.append("&" + _b64("".join(pending)) + "-")
                pending = []
            out.append("&-" if c == "&" else c)
        else:
            pending.append(c)
    if pending:
        out.append("&" + _b64("".join(pending)) + "-")
    return "".join(out)


def decode(text):
    """Modified UTF-7 -> Unicode. @raise ValueError: on a malformed name."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError(f"unterminated modified UTF-7 in {text!r}")
        chunk = text[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                out.append(base64.b64decode(b64, validate=True).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"bad modified UTF-7 in {text!r}")
        i = end + 1
    return "".join(out)
