"""
Flags as the sql store keeps them: system flags (RFC 3501 2.3.2) in
`flags`, keywords in `keywords`, both text arrays; \\Recent is never stored.
"""

from mailplat.store.flags import normalise

__all__ = ["changed", "joined", "normalise", "split"]


def split(flags):
    """(sorted system flags, sorted keywords): the two columns."""
    system = sorted(f for f in flags if f.startswith("\\"))
    keywords = sorted(f for f in flags if not f.startswith("\\"))
    return system, keywords


# The few flag sets a mailbox's messages have, each made once: a 20,000
# message folder's load then makes no frozensets (the garbage collector
# visits every object made, and each set costs memory while the view lives).
_SETS = {}


def joined(system, keywords):
    """The flags of the two columns as one frozenset (shared: never mutated)."""
    key = (*system, None, *keywords) if keywords else tuple(system or ())
    found = _SETS.get(key)
    if found is None:
        found = frozenset(system or ()) | frozenset(keywords or ())
        if len(_SETS) > 10000:
            _SETS.clear()  # keywords vary without bound; the common sets come back at once
        _SETS[key] = found
    return found


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
