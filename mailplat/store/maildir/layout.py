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

SEPARATOR = "."
INBOX = "INBOX"
# The files written in every Maildir++ folder (maildir++ spec: marks a folder).
FOLDER_MARKER = "maildirfolder"
# A folder being deleted is first renamed to this prefix (ignored by list).
TRASHED_PREFIX = "..mailplat-deleted."


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


def check_name(name):
    """
    @raise ValueError: a name Maildir++ can't store, saying why.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("empty folder name")
    if is_inbox(name):
        raise ValueError("INBOX always exists")
    if any(c in name for c in "/\0\r\n") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"folder name has a character maildir can't store: {name!r}")
    parts = name.split(SEPARATOR)
    if any(not p for p in parts):
        raise ValueError(f"folder name has an empty level: {name!r}")
    if len(encode(name)) > 250:
        raise ValueError("folder name too long")


def parents(name):
    """'A.B.C' -> ['A', 'A.B']."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def folder_path(root, name):
    if is_inbox(name):
        return root
    return os.path.join(root, "." + encode(name))


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
