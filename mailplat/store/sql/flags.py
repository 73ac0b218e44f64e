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
