"""
Mailbox names in the sql store: '/' separates levels, INBOX is spelled
INBOX whatever the case (RFC 3501 5.1). A name is a row, never a path, so
the checks are those of the spelling only (mailplat.store.boundary).
"""

from mailplat.store import boundary

SEPARATOR = "/"
INBOX = "INBOX"
MAX_LENGTH = 250


def is_inbox(name):
    return name.upper() == INBOX


def canonical(name):
    """INBOX, and INBOX as the first level, in capitals; other names as given."""
    if is_inbox(name):
        return INBOX
    head, sep, rest = name.partition(SEPARATOR)
    if sep and is_inbox(head):
        return INBOX + SEPARATOR + rest
    return name


def check(name):
    """@raise boundary.RefusedName: (a KeyError and a ValueError) for a name no mailbox can have."""
    boundary.check_spelling(name, SEPARATOR, MAX_LENGTH, encode=lambda n: n.encode("utf-8"))
    if any(level.startswith(".") for level in name.split(SEPARATOR)):
        # As the mbox store: such names could not move to a maildir (where
        # '.' separates levels) or an mbox tree (hidden files).
        raise boundary.RefusedName("mailbox name has a level starting with '.'")
    if any(c in name for c in "*%"):
        # RFC 3501 6.3.8: LIST wildcards in a name could never be listed alone.
        raise boundary.RefusedName("mailbox name has a LIST wildcard")
    return canonical(name)


def parents(name):
    """'a/b/c' -> ['a', 'a/b']."""
    levels = name.split(SEPARATOR)
    return [SEPARATOR.join(levels[:i]) for i in range(1, len(levels))]
