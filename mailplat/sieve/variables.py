"""
variables (RFC 5229): `set`, the `string` test, and `${...}` in string
arguments (substituted by L{engine.Run.x}); match variables `${0}`..`${9}`
come from the last `:matches` that matched (L{core.compare}).
"""

from mailplat.sieve import engine
from mailplat.sieve.core import MATCH_GROUP, MATCHING, _check_match, compare
from mailplat.sieve.engine import command, extension, test

extension("variables")

_MODIFIERS = {
    # RFC 5229 4.1: applied from the highest precedence to the lowest.
    "lower": (40, str.lower),
    "upper": (40, str.upper),
    "lowerfirst": (30, lambda s: s[:1].lower() + s[1:]),
    "upperfirst": (30, lambda s: s[:1].upper() + s[1:]),
    "quotewildcard": (20, lambda s: s.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")),
    "length": (10, lambda s: str(len(s))),
}


def _check_set(node, checker):
    name = node.args[0]
    if name.lower().startswith("global.") and "include" in checker.required:
        name = name[len("global."):]  # RFC 6609 5: the global namespace
    if not name or not (name[0].isalpha() or name[0] == "_") or not all(c.isalnum() or c == "_" for c in name):
        return f"set: {name!r} is not a variable name"
    for a, b in (("lower", "upper"), ("lowerfirst", "upperfirst")):
        if a in node.tags and b in node.tags:
            return f"set: only one of :{a} and :{b}"
    return None


@command("set", extension="variables", tags={m: None for m in _MODIFIERS}, positional=("string", "string"), check=_check_set)
def _set(run, node):
    value = run.x(node.args[1])
    for modifier in sorted((m for m in _MODIFIERS if m in node.tags), key=lambda m: -_MODIFIERS[m][0]):
        value = _MODIFIERS[modifier][1](value)
    run.set_variable(node.args[0], value[: engine.MAX_VARIABLE])


@test("string", extension="variables", tags=MATCHING, exclusive=(MATCH_GROUP,), positional=("string-list", "string-list"),
      check=_check_match)
def _string(run, node):
    # RFC 5229 5: an empty string counts as no value for :count.
    values = run.x(node.args[0])
    if "count" in node.tags:
        values = [v for v in values if v != ""]
    return compare(node, values, run.x(node.args[1]), run)
