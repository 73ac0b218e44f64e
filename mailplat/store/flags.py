"""IMAP flags as every store keeps them: the one canonical spelling (RFC 3501 2.3.2)."""

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}


def normalise(flags):
    """
    Canonical spelling: system flags as RFC 3501 writes them (they are
    case-insensitive), \\Recent and unknown backslash flags dropped,
    keywords kept as given.
    """
    out = set()
    for flag in flags:
        if isinstance(flag, bytes):
            flag = flag.decode("utf-8", "replace")
        if flag.startswith("\\"):
            system = SYSTEM_FLAGS.get(flag.lower())
            if system:
                out.add(system)
        elif flag:
            out.add(flag)
    return frozenset(out)
