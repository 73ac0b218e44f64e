"""
Maildir file names, as the maildir spec and Dovecot write them:

    <seconds>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<vsize>:2,<flags>

The part before `:2,` is the message's stable key (POP3 UIDL, the uidlist);
`S=` is the file size and `W=` the size with CRLF line ends (what POP3 and
IMAP report), so listing a folder need not open the messages.
"""

import itertools
import os
import re
import socket
import time

# maildir spec: info flags, in ASCII order, mapped to IMAP system flags.
FLAG_LETTERS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
LETTER_FOR_FLAG = {v.lower(): k for k, v in FLAG_LETTERS.items()}

_counter = itertools.count(1)


def _safe_host():
    # maildir spec: '/' and ':' in the host name are written as octal escapes.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


HOST = _safe_host()


def unique_name(now=None):
    """A name no other delivery on any host will pick (time, usec, pid, counter, host)."""
    now = time.time() if now is None else now
    seconds = int(now)
    usec = int((now - seconds) * 1_000_000)
    return f"{seconds}.M{usec}P{os.getpid()}Q{next(_counter)}.{HOST}"


_SAVED_AT = re.compile(r"(\d{1,12})(?:\.M(\d{1,6})P|\.)")


def saved_at(key):
    """
    RFC 8514 save date of a maildir message: the time its unique name was
    made (L{unique_name}: seconds, M and microseconds), when this file was
    put in this folder. mailplat names a new file on every delivery,
    APPEND, COPY and MOVE (a MOVE renames to a new name too), so the name
    is the save date, kept with the file and never changed after: not the
    mtime (the INTERNALDATE, which COPY keeps) nor the ctime (changed by
    each rename a flag change makes). None for a name without a leading
    time (not a maildir unique name).
    """
    m = _SAVED_AT.match(key)
    if m is None:
        return None
    return int(m.group(1)) + (int(m.group(2)) / 1_000_000 if m.group(2) else 0)


def with_sizes(base, size, vsize):
    return f"{base},S={size},W={vsize}"


def split_info(filename):
    """'key:2,FS' -> ('key', 'FS'); a name without info -> (name, '')."""
    key, sep, info = filename.partition(":")
    if sep and info.startswith("2,"):
        return key, info[2:]
    return key, ""


def sizes_from_key(key):
    """(S, W) from the ,S= and ,W= fields of a key; None where absent."""
    size = vsize = None
    for field in key.split(",")[1:]:
        if field.startswith("S="):
            size = _int_or_none(field[2:])
        elif field.startswith("W="):
            vsize = _int_or_none(field[2:])
    return size, vsize


def _int_or_none(text):
    try:
        return int(text)
    except ValueError:
        return None


def flags_from_info(letters):
    return frozenset(FLAG_LETTERS[c] for c in letters if c in FLAG_LETTERS)


def info_from_flags(flags, keep=""):
    """Flags -> sorted info letters; `keep` carries letters we don't map (keywords)."""
    letters = {LETTER_FOR_FLAG[f.lower()] for f in flags if f.lower() in LETTER_FOR_FLAG}
    letters.update(c for c in keep if c not in FLAG_LETTERS)
    return "".join(sorted(letters))


def sort_key(key):
    """
    Arrival order: by the seconds prefix, then the rest of the name with its
    numbers compared as numbers, so that M95000 (microseconds) comes before
    M100000 and Q9 (the delivery counter) before Q10.
    """
    head, _, rest = key.partition(".")
    try:
        return (int(head), _natural(rest))
    except ValueError:
        return (0, _natural(key))


def sorted_keys(keys):
    """
    `keys` (distinct) sorted as by L{sort_key}, cheaply: most keys have a
    seconds prefix of their own, and only keys that share one need the
    natural comparison of the rest (a 20,000-file folder sorts several
    times faster).
    """
    keys = list(keys)
    heads = [_head(key) for key in keys]
    shared = set()
    seen = set()
    for value in heads:
        if value in seen:
            shared.add(value)
        seen.add(value)
    # Keys of different heads compare by the head alone; those of one head
    # that has company compare by their whole sort_key.
    decorated = [((value, ()) if value not in shared else sort_key(key)) for key, value in zip(keys, heads)]
    order = sorted(range(len(keys)), key=decorated.__getitem__)
    return [keys[i] for i in order]


def _head(key):
    """The first element of L{sort_key}."""
    try:
        return int(key.partition(".")[0])
    except ValueError:
        return 0


def _natural(text):
    # re.split with a group alternates text and digits: str, int, str, ...
    # so two keys always compare like with like.
    parts = _DIGITS.split(text)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


_DIGITS = re.compile(r"(\d+)")
