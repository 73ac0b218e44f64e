"""
editheader (RFC 5293): `addheader [:last] NAME VALUE` and
`deleteheader [:index N [:last]] [COMPARATOR] [MATCH-TYPE] NAME [PATTERNS]`.

The change is seen by the tests that follow and by every copy the run
keeps, files or redirects (the filter gives the store the new header in
front of the original body). Received and Auto-Submitted are protected,
as in Pigeonhole: changing them is ignored (RFC 5293 7 lets a server
refuse), so trace and loop information stays true.
"""

from mailplat.sieve.core import MATCH_GROUP, MATCHING, _check_match, compare
from mailplat.sieve.engine import command, extension

extension("editheader")

PROTECTED = frozenset(("received", "auto-submitted"))


def _check_name(node, checker):
    name = node.args[0]
    if not name or any(ord(c) <= 32 or ord(c) >= 127 or c == ":" for c in name):
        return f"{node.spec.name}: {name!r} is not a header field name"
    return None


def _check_add(node, checker):
    problem = _check_name(node, checker)
    if problem:
        return problem
    if any(c in node.args[1] for c in "\r\n") and "variables" not in checker.required:
        return "addheader: the value may not hold line ends"
    return None


@command("addheader", extension="editheader", tags={"last": None}, positional=("string", "string"), check=_check_add)
def _addheader(run, node):
    name = run.x(node.args[0])
    if name.lower() in PROTECTED:
        return
    value = run.x(node.args[1]).replace("\r", " ").replace("\n", " ")  # never a line end: no header injection
    run.message.add_field(name, value, last="last" in node.tags)


def _check_delete(node, checker):
    if "last" in node.tags and "index" not in node.tags:
        return ":last needs :index"
    return _check_name(node, checker) or _check_match(node, checker)


@command("deleteheader", extension="editheader", tags=dict(MATCHING, index="number", last=None),
         exclusive=(MATCH_GROUP,), positional=("string", "string-list"), optional=1, check=_check_delete)
def _deleteheader(run, node):
    name = run.x(node.args[0])
    if name.lower() in PROTECTED:
        return
    patterns = run.x(node.args[1]) if len(node.args) > 1 else None
    index = node.tags.get("index")

    def keep(position, from_end, value):
        if index is not None and index != (from_end if "last" in node.tags else position):
            return True
        if patterns is None:
            return False
        return not compare(node, [value], patterns, run)

    run.message.delete_fields(name, keep)
