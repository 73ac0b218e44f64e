"""
The Sieve base language (RFC 5228) and the small extensions every server
has: fileinto (RFC 5228 4.1), envelope (5.4), copy (RFC 3894), reject and
ereject (RFC 5429), imap4flags (RFC 5232), mailbox's `:create` (RFC 5490),
body (RFC 5173), relational (RFC 5231) and comparator-i;ascii-numeric
(RFC 4790 9.1).
"""

import functools
import re

from mailplat.sieve import engine
from mailplat.sieve.engine import COMPARING, MATCH_TYPES, command, extension, test

for _name in (
    "fileinto", "envelope", "copy", "reject", "ereject", "imap4flags", "mailbox", "body",
    "relational", "comparator-i;ascii-numeric", "subaddress", "encoded-character",
):
    extension(_name)


# --- actions -----------------------------------------------------------------------


class Action:
    """One action of a run; equal actions are taken once (RFC 5228 2.10.3)."""

    kind = None

    def key(self):
        return (self.kind,)

    def __eq__(self, other):
        return isinstance(other, Action) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        return f"<{' '.join(map(str, self.key()))}>"


class Keep(Action):
    kind = "keep"

    def __init__(self, flags=()):
        self.folder, self.flags = "INBOX", tuple(flags)

    def key(self):
        return ("fileinto", "INBOX")  # keep is a fileinto INBOX (RFC 5228 4.2)


class FileInto(Action):
    kind = "fileinto"

    def __init__(self, folder, flags=(), create=False):
        self.folder, self.flags, self.create = folder, tuple(flags), create

    def key(self):
        return ("fileinto", "INBOX" if self.folder.upper() == "INBOX" else self.folder)


class Redirect(Action):
    kind = "redirect"

    def __init__(self, address):
        self.address = address

    def key(self):
        return ("redirect", self.address.lower())


class Discard(Action):
    kind = "discard"


class Reject(Action):
    kind = "reject"

    def __init__(self, reason, smtp_only=False):
        self.reason, self.smtp_only = reason, smtp_only

    def key(self):
        return ("reject",)


# --- comparing (RFC 5228 2.7, RFC 4790, RFC 5231) ---------------------------------------


@functools.lru_cache(maxsize=512)
def _fold(text):
    # Cached: a run compares the same header or body text with many keys (a str keeps its hash).
    # i;ascii-casemap: ASCII letters compared without case, everything else as is
    # (lower() is the same on ASCII text, and isascii() costs nothing).
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _numeric(text):
    """i;ascii-numeric: the leading digits as a number; no digits is positive infinity."""
    m = re.match(r"[0-9]+", text)
    return int(m.group()) if m else None


@functools.lru_cache(maxsize=1024)
def _wildcard(pattern, fold):
    """A :matches pattern (`*`, `?`, `\\` escapes) as a compiled regex."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    # i;ascii-casemap folds ASCII letters only (re.A), never é to É.
    return re.compile("".join(out), re.S | (re.I | re.A if fold else 0))


RELATIONS = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b,
             "le": lambda a, b: a <= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b}


def compare(node, values, keys, run=None):
    """RFC 5228 2.7: true when any value matches any key under the test's comparator and match type."""
    if not values and "count" not in node.tags:
        return False  # nothing to compare (the header is absent: most tests of a long script)
    comparator = node.tags.get("comparator", "i;ascii-casemap")
    if "count" in node.tags:
        # RFC 5231 4.2: the number of values against each key.
        relation = RELATIONS[node.tags["count"]]
        n = len(values)
        return any((k := _numeric(key)) is not None and relation(n, k) for key in keys)
    if "value" in node.tags:
        relation = RELATIONS[node.tags["value"]]
        return any(_relate(comparator, relation, v, k) for v in values for k in keys)
    if comparator == "i;ascii-numeric":
        # RFC 4790 9.1: only equality is defined (no substring or wildcard).
        if "contains" in node.tags or "matches" in node.tags:
            return False
        return any(_numeric(v) == _numeric(k) for v in values for k in keys)
    fold = comparator == "i;ascii-casemap"
    if "contains" in node.tags:
        if fold:
            # Each value folded once, not once per key (a body test's value is the whole text).
            values, keys = [_fold(v) for v in values], _folded(keys)
        return any(k in v for v in values for k in keys)
    if "matches" in node.tags:
        patterns = [_wildcard(k, fold) for k in keys]
        for v in values:
            for p in patterns:
                m = p.fullmatch(v)
                if m is not None:
                    if run is not None:
                        run.matched([m.group(0)] + list(m.groups()))  # RFC 5229 3.2: ${0} .. ${9}
                    return True
        return False
    if fold:
        folded = _folded(keys, set)
        return any(_fold(v) in folded for v in values)
    return any(v in keys for v in values)


def _folded(keys, kind=list):
    """The keys folded; a script's constant list (engine.Literals) keeps them, folded once per compile."""
    if keys.__class__ is not engine.Literals:
        return kind(_fold(k) for k in keys)
    memo = keys.__dict__.setdefault("folded", {})
    folded = memo.get(kind)
    if folded is None:
        folded = memo[kind] = kind(_fold(k) for k in keys)
    return folded


def _relate(comparator, relation, value, key):
    if comparator == "i;ascii-numeric":
        a, b = _numeric(value), _numeric(key)
        # No digits sorts after every number (RFC 4790 9.1.1).
        a = float("inf") if a is None else a
        b = float("inf") if b is None else b
        return relation(a, b)
    if comparator == "i;ascii-casemap":
        return relation(_fold(value), _fold(key))
    return relation(value, key)


MATCHING = dict(COMPARING, count="string", value="string")
MATCH_GROUP = MATCH_TYPES + ("count", "value")


def _check_match(node, checker):
    for tag in ("count", "value"):
        if tag in node.tags:
            if "relational" not in checker.required:
                return f":{tag} needs require \"relational\""
            if node.tags[tag] not in RELATIONS:
                return f":{tag} takes one of {', '.join(sorted(RELATIONS))}"
    return None


# --- control (RFC 5228 3) -------------------------------------------------------------------


@command("require", positional=("string-list",))
def _require(run, node):
    return None


@command("if", tests=1, block=True)
def _if(run, node):
    if run.evaluate(node.tests[0]):
        run.block(node.block)
        return True
    return False


@command("elsif", tests=1, block=True)
def _elsif(run, node):
    return _if(run, node)


@command("else", block=True)
def _else(run, node):
    run.block(node.block)
    return True


@command("stop")
def _stop(run, node):
    run.stop()


# --- actions (RFC 5228 4) ------------------------------------------------------------------


def _flags_of(run, node):
    """The flags a keep or fileinto stores with (RFC 5232 5: :flags, else the internal variable)."""
    if "flags" in node.tags:
        return normalise_flags(run.x(node.tags["flags"]))
    return tuple(run.flags)


def _check_store(node, checker):
    if "copy" in node.tags and "copy" not in checker.required:
        return ":copy needs require \"copy\""
    if "flags" in node.tags and "imap4flags" not in checker.required:
        return ":flags needs require \"imap4flags\""
    if "create" in node.tags and "mailbox" not in checker.required:
        return ":create needs require \"mailbox\""
    return None


@command("keep", tags={"flags": "string-list"}, check=_check_store)
def _keep(run, node):
    run.add(Keep(_flags_of(run, node)), node)


@command("discard")
def _discard(run, node):
    run.add(Discard(), node)


@command("fileinto", extension="fileinto", tags={"copy": None, "flags": "string-list", "create": None},
         positional=("string",), check=_check_store)
def _fileinto(run, node):
    run.add(FileInto(run.x(node.args[0]), _flags_of(run, node), "create" in node.tags), node, cancels_keep="copy" not in node.tags)


def _check_redirect(node, checker):
    if "copy" in node.tags and "copy" not in checker.required:
        return ":copy needs require \"copy\""
    address = node.args[0]
    if "${" in address and "variables" in checker.required:
        return None  # known only when the script runs (checked then, L{_redirect})
    if "@" not in address or address.startswith("@") or address.endswith("@") or any(c in address for c in " <>,\r\n"):
        return f"redirect to {address!r}: not a valid address"
    return None


@command("redirect", tags={"copy": None}, positional=("string",), check=_check_redirect)
def _redirect(run, node):
    address = run.x(node.args[0])
    if "@" not in address.strip("@") or any(c in address for c in " <>,\r\n"):
        raise engine.SieveRuntimeError(f"redirect to {address!r}: not a valid address", node.line)
    run.add(Redirect(address), node, cancels_keep="copy" not in node.tags)


@command("reject", extension="reject", positional=("string",))
def _reject(run, node):
    run.add(Reject(run.x(node.args[0])), node)


@command("ereject", extension="ereject", positional=("string",))
def _ereject(run, node):
    run.add(Reject(run.x(node.args[0]), smtp_only=True), node)


# --- imap4flags (RFC 5232) ------------------------------------------------------------------


def normalise_flags(values):
    """A flag list as RFC 5232 3 keeps it: split on spaces, system flags case-folded, no repeats."""
    out = []
    seen = set()
    for value in values:
        for flag in value.split():
            if flag.startswith("\\"):
                flag = "\\" + flag[1:].capitalize()
            if flag.lower() not in seen:
                seen.add(flag.lower())
                out.append(flag)
    return tuple(out)


@command("setflag", extension="imap4flags", positional=("string-list",))
def _setflag(run, node):
    run.flags = list(normalise_flags(run.x(node.args[0])))


@command("addflag", extension="imap4flags", positional=("string-list",))
def _addflag(run, node):
    run.flags = list(normalise_flags(run.flags + list(normalise_flags(run.x(node.args[0])))))


@command("removeflag", extension="imap4flags", positional=("string-list",))
def _removeflag(run, node):
    gone = {f.lower() for f in normalise_flags(run.x(node.args[0]))}
    run.flags = [f for f in run.flags if f.lower() not in gone]


@test("hasflag", extension="imap4flags", tags=MATCHING, exclusive=(MATCH_GROUP,), positional=("string-list",),
      check=_check_match)
def _hasflag(run, node):
    return compare(node, list(run.flags), run.x(node.args[0]), run)


# --- tests (RFC 5228 5) ------------------------------------------------------------------------

ADDRESS_PARTS = ("all", "localpart", "domain", "user", "detail")
ADDRESSING = dict(MATCHING, all=None, localpart=None, domain=None, user=None, detail=None)
DELIMITER = "+"  # RFC 5233's separator; the filter sets [delivery] recipient_delimiter


def _part(address, node):
    """The part of an address the test compares; None when it has none (a :detail with no separator)."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if "localpart" in node.tags:
        return local
    if "domain" in node.tags:
        return domain
    if "user" in node.tags or "detail" in node.tags:
        # RFC 5233 4: user and detail either side of the first separator.
        user, sep, detail = local.partition(DELIMITER)
        if "user" in node.tags:
            return user
        return detail if sep else None
    return address


def _check_address(node, checker):
    if ("user" in node.tags or "detail" in node.tags) and "subaddress" not in checker.required:
        return ":user and :detail need require \"subaddress\""
    return _check_match(node, checker)


@test("address", tags=ADDRESSING, exclusive=(MATCH_GROUP, ADDRESS_PARTS), positional=("string-list", "string-list"),
      check=_check_address)
def _address(run, node):
    values = []
    for name in run.x(node.args[0]):
        values += [_part(a, node) for a in run.message.addresses(name)]
    return compare(node, [v for v in values if v is not None], run.x(node.args[1]), run)


@test("envelope", extension="envelope", tags=ADDRESSING, exclusive=(MATCH_GROUP, ADDRESS_PARTS),
      positional=("string-list", "string-list"), check=_check_address)
def _envelope(run, node):
    values = []
    for part in run.x(node.args[0]):
        part = part.lower()
        if part == "from":
            values.append(_part(run.message.envelope_from, node) if run.message.envelope_from else "")
        elif part == "to":
            values.append(_part(run.message.envelope_to, node))
    return compare(node, [v for v in values if v is not None], run.x(node.args[1]), run)


@test("header", tags=MATCHING, exclusive=(MATCH_GROUP,), positional=("string-list", "string-list"), check=_check_match)
def _header(run, node):
    values = []
    for name in run.x(node.args[0]):
        values += run.message.headers(name)
    return compare(node, values, run.x(node.args[1]), run)


@test("exists", positional=("string-list",))
def _exists(run, node):
    return all(run.message.has(name) for name in run.x(node.args[0]))


def _check_size(node, checker):
    if ("over" in node.tags) == ("under" in node.tags):
        return "size needs :over or :under"
    return None


@test("size", tags={"over": None, "under": None}, positional=("number",), check=_check_size)
def _size(run, node):
    limit = run.x(node.args[0])
    return run.message.size > limit if "over" in node.tags else run.message.size < limit


@test("allof", tests="list")
def _allof(run, node):
    return all(run.evaluate(t) for t in node.tests)


@test("anyof", tests="list")
def _anyof(run, node):
    return any(run.evaluate(t) for t in node.tests)


@test("not", tests=1)
def _not(run, node):
    return not run.evaluate(node.tests[0])


@test("true")
def _true(run, node):
    return True


@test("false")
def _false(run, node):
    return False


@test("body", extension="body", tags=dict(MATCHING, raw=None, text=None, content="string-list"),
      exclusive=(MATCH_GROUP, ("raw", "text", "content")), positional=("string-list",), check=_check_match)
def _body(run, node):
    # RFC 5173 5: :text (the default) compares the text parts, decoded.
    if "raw" in node.tags:
        data = run.message.data
        values = [data[run.message._body_at :].decode("utf-8", "replace")]
    else:
        values = run.message.body_text()
    if "matches" not in node.tags and "is" not in node.tags:
        node.tags.setdefault("contains", True)  # RFC 5173 5: :contains is the default here
    return compare(node, values, run.x(node.args[0]), run)


engine.Keep = Keep  # the implicit keep's action, for the callers
