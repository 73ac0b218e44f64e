"""
Result options of SEARCH and SORT: ESEARCH (RFC 4731), ESORT (RFC 5267 3),
SEARCHRES (RFC 5182 `SAVE`), PARTIAL (RFC 5267 4.4, RFC 9394) and UPDATE
(RFC 5267 4.1; the updates themselves: L{mailplat.imap.context}).

`parse_return` reads `RETURN (...)` after SEARCH or SORT; `answer` builds
the `* ESEARCH` line from the matching messages (in sequence order for
SEARCH, in sort order for SORT) and says what SAVE keeps.
"""

import re

from mailplat.imap.parser import BadCommand, quote

_OPTIONS = (b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE", b"UPDATE")  # RFC 5267 4.1: UPDATE
# RFC 9394 3.1: partial-range-first = nz-number ":" nz-number,
# partial-range-last = "-" nz-number ":-" nz-number.
_RANGE = re.compile(rb"(-?)([1-9]\d{0,9}):(-?)([1-9]\d{0,9})")


class ReturnOptions:
    """What the client asked RETURN for; `partial` is (low, high) or None."""

    def __init__(self, options, partial=None, partial_text=None):
        self.options = options
        self.partial = partial
        self.partial_text = partial_text

    @property
    def save(self):
        return b"SAVE" in self.options

    @property
    def update(self):
        # RFC 5267 4.1: keep the result up to date (L{mailplat.imap.context}).
        return b"UPDATE" in self.options

    @property
    def silent(self):
        # RFC 5182 2.4: SAVE alone answers with no ESEARCH at all.
        return self.options == {b"SAVE"} and self.partial is None


def parse_return(reader):
    """
    `RETURN (opt ...)` when the command has it (RFC 4731 3.1), else None;
    the reader is left on the space before what follows. `RETURN ()` is
    `RETURN (ALL)`; `RETURN (UPDATE)` alone answers with the tag only, then
    ADDTO / REMOVEFROM as the result changes (RFC 5267 4.3.2).
    """
    if reader.text[reader.pos : reader.pos + 7].upper() != b"RETURN ":
        return None
    reader.pos += 7
    reader.open_paren()
    options, partial, text = set(), None, None
    first = True
    while reader.peek() != b")":
        if not first:
            reader.space()
        first = False
        name = reader.atom("a RETURN option").upper()
        if name in _OPTIONS:
            options.add(name)
        elif name == b"PARTIAL" and partial is None:
            reader.space()
            partial, text = _partial_range(reader.atom("a partial range"))
        elif name == b"CONTEXT":
            pass  # RFC 5267 4.2: a hint that updates or partials will follow; nothing to do
        else:
            raise BadCommand(f"unsupported RETURN option {name.decode('ascii', 'replace')}")
    reader.close_paren()
    if not options and partial is None:
        options = {b"ALL"}
    return ReturnOptions(options, partial, text)


def _partial_range(token):
    """RFC 9394 3.1: `4:2` is `2:4`; `-1:-5` the last five; no `*`, no mixing signs."""
    m = _RANGE.fullmatch(token)
    if m is None or m.group(1) != m.group(3):
        raise BadCommand("PARTIAL wants a range like 1:100 or -1:-100")
    low, high = sorted((int(m.group(2)), int(m.group(4))))
    if low > 0xFFFFFFFF or high > 0xFFFFFFFF:
        raise BadCommand("PARTIAL range too large")
    sign = m.group(1)
    text = b"%s%d:%s%d" % (sign, low, sign, high)
    return ((-low, -high) if sign else (low, high)), text


def compact(numbers):
    """[1,2,3,7,5] -> b'1:3,7,5': ascending runs become ranges, order is kept."""
    out = []
    i, n = 0, len(numbers)
    while i < n:
        j = i
        while j + 1 < n and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(out)


def _window(numbers, partial):
    low, high = partial
    if low > 0:
        return numbers[low - 1 : high]
    # RFC 9394 3.1: -1 is the last message; the answer keeps the result's order.
    start = max(len(numbers) + high, 0)
    end = len(numbers) + low + 1
    return numbers[start:end] if end > 0 else []


def answer(tag, uid, found, ret):
    """
    (the `ESEARCH ...` line or None, the UIDs SAVE keeps) for the matching
    Contexts `found`, in the order the command gives them.

    RFC 4731 3.1: MIN, MAX and ALL are left out when nothing matched;
    COUNT is always there. RFC 5182 2.4: SAVE with MIN or MAX keeps only
    those; RFC 9394 3.1: with PARTIAL only the window; otherwise the whole
    result.
    """
    opts = ret.options
    numbers = [c.uid if uid else c.seq for c in found]
    parts = [b"(TAG " + quote(tag) + b")"]
    if uid:
        parts.append(b"UID")
    if numbers:
        if b"MIN" in opts:
            parts.append(b"MIN %d" % numbers[0])
        if b"MAX" in opts:
            parts.append(b"MAX %d" % numbers[-1])
    if b"COUNT" in opts:
        parts.append(b"COUNT %d" % len(numbers))
    if numbers and b"ALL" in opts:
        parts.append(b"ALL " + compact(numbers))
    saved = found
    if ret.partial is not None:
        saved = _window(found, ret.partial)
        window = [c.uid if uid else c.seq for c in saved]
        # RFC 5267 4.4: the range asked for, then what it holds or NIL.
        parts.append(b"PARTIAL (" + ret.partial_text + b" " + (compact(window) if window else b"NIL") + b")")
    elif b"MIN" in opts or b"MAX" in opts:
        saved = (found[:1] if b"MIN" in opts else []) + (found[-1:] if b"MAX" in opts else [])
    if getattr(ret, "modseq", False):
        # RFC 7162 3.1.10: with a MODSEQ key, the highest
        # modseq of the messages the answer reports (all of them for COUNT).
        shown = saved if ret.partial is not None or (opts & {b"MIN", b"MAX"} and not opts & {b"ALL", b"COUNT"}) else found
        if shown:
            parts.append(b"MODSEQ %d" % max(getattr(c.info, "modseq", 0) for c in shown))
    line = None if ret.silent else b"ESEARCH " + b" ".join(parts)
    return line, frozenset(c.uid for c in saved)
