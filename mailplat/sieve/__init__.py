"""
Sieve (RFC 5228): server-side filtering at local delivery.

    script = compile_script(text)          # SieveSyntaxError with line and column
    run = script.run(SieveMessage(data, envelope_from, envelope_to))
    for action in outcome(run): ...        # Keep / FileInto / Redirect / Discard / Reject

L{grammar} parses, L{engine} checks and runs, each extension registers its
commands and tests (L{core}: the base language and the common extensions).
A run that fails (L{SieveRuntimeError}) keeps the message in INBOX.
"""

from mailplat.sieve.engine import EXTENSIONS, SieveRuntimeError, compile_script
from mailplat.sieve.grammar import SieveSyntaxError
from mailplat.sieve.message import SieveMessage


def outcome(run):
    """The run's actions with the implicit keep (RFC 5228 2.10.2) added when it still holds."""
    from mailplat.sieve.core import Keep

    actions = list(run.actions)
    if run.implicit_keep:
        keep = Keep(run.flags)
        if keep not in actions:
            actions.append(keep)
    return actions


def extensions():
    """The `require` names this interpreter supports (ManageSieve's SIEVE capability)."""
    compile_script("")  # registers the extension modules
    return list(EXTENSIONS)


__all__ = ["SieveMessage", "SieveRuntimeError", "SieveSyntaxError", "compile_script", "extensions", "outcome"]
