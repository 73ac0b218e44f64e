"""
Flags as the sql store keeps them: system flags (RFC 3501 2.3.2) in
`flags`, keywords in `keywords`, both text arrays; \\Recent is never stored.
"""

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


def split(flags):
    """(sorted system flags, sorted keywords): the two columns."""
    system = sorted(f for f in flags if f.startswith("\\"))
    keywords = sorted(f for f in flags if not f.startswith("\\"))
    return system, keywords


def joined(system, keywords):
    return frozenset(system or ()) | frozenset(keywords or ())


def changed(current, flags, mode):
    """The flags a STORE with `mode` ('+', '-', '=') leaves on a message that has `current`."""
    if mode == "+":
        return current | flags
    if mode == "-":
        lowered = {f.lower() for f in flags}
        return frozenset(f for f in current if f.lower() not in lowered)
    if mode == "=":
        return flags
    raise ValueError(f"bad flag mode {mode!r}")
