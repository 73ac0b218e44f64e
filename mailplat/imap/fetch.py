"""
FETCH data items (RFC 3501 6.4.5, 7.4.2).

Twisted's `_FetchParser` reads the item list; the answers are built here,
because Twisted's own (`spew_*`) re-parse the message on every FETCH,
rebuild HEADER.FIELDS from a dict, ignore partial ranges (twisted#5613)
and never set \\Seen. ENVELOPE and BODYSTRUCTURE are computed once per
message and kept in the folder's index through `IMailFolder.cache`.
BINARY[...], BINARY.PEEK[...] and BINARY.SIZE[...] (RFC 3516) are handed
to Twisted's parser as BODY[...] and told apart again here.
"""

import functools
import re
import time

from twisted.internet import reactor
from twisted.logger import Logger, LogLevel
from twisted.mail import imap4
from twisted.python.failure import Failure

from mailplat.imap import mime
from mailplat.imap.parser import BadCommand

# RFC 3501 9: nz-number and number are 32-bit unsigned.
MAX_NUMBER = 0xFFFFFFFF
FP = imap4._FetchParser
log = Logger()
_FIELD_LISTS = re.compile(rb"HEADER\.FIELDS(?:\.NOT)?\s*\(([^)]*)\)", re.I)
# RFC 3516 4.1: BINARY[section-binary]<partial>, BINARY.PEEK[...], BINARY.SIZE[...];
# section-binary is part numbers only.
_BINARY = re.compile(rb"(?<![A-Za-z0-9.])BINARY(\.PEEK|\.SIZE)?\[([^\]]*)\]", re.I)
_BODY_SECTION = re.compile(rb"(?<![A-Za-z0-9.])BODY(?:\.PEEK)?\[", re.I)
_PART_NUMBERS = re.compile(rb"^(?:[1-9][0-9]*(?:\.[1-9][0-9]*)*)?$")
UnknownCTE = mime.UnknownCTE
_UNKNOWN = object()  # a section whose transfer encoding we cannot undo


class Item:
    """One requested data item, normalised."""

    __slots__ = ("kind", "part", "section", "fields", "negate", "peek", "start", "length")

    def __init__(self, kind, part=(), section="", fields=(), negate=False, peek=False, start=None, length=None):
        self.kind = kind  # uid flags internaldate rfc822.size envelope bodystructure body section rfc822 ...
        self.part = part  # 1-based part numbers
        self.section = section  # '', HEADER, HEADER.FIELDS, TEXT, MIME
        self.fields = fields
        self.negate = negate
        self.peek = peek
        self.start = start
        self.length = length

    @property
    def sets_seen(self):
        # RFC 3501 6.4.5: BODY[...] and RFC822 / RFC822.TEXT set \Seen, .PEEK does not;
        # RFC 3516 4.1: so does BINARY[...], not BINARY.PEEK or BINARY.SIZE.
        return (self.kind in ("section", "binary") and not self.peek) or self.kind in ("rfc822", "rfc822.text")

    @property
    def needs_file(self):
        return self.kind in ("section", "rfc822", "rfc822.header", "rfc822.text", "binary", "binary.size")

    def label(self):
        if self.kind not in ("section", "binary", "binary.size"):
            return self.kind.upper().encode("ascii")
        spec = ".".join(str(n) for n in self.part)
        if self.kind != "section":
            out = ("BINARY[%s]" if self.kind == "binary" else "BINARY.SIZE[%s]") % spec
            if self.start is not None:
                out += f"<{self.start}>"
            return out.encode("ascii")
        if self.section:
            text = self.section
            if self.fields:
                text += " (" + " ".join(f.decode("ascii") for f in self.fields) + ")"
            spec = f"{spec}.{text}" if spec else text
        out = f"BODY[{spec}]"
        if self.start is not None:
            # RFC 3501 7.4.2: the answer names only the origin octet.
            out += f"<{self.start}>"
        return out.encode("ascii")

    def wire(self, data):
        """The item and its value as FETCH sends it."""
        if data is _UNKNOWN:
            raise UnknownCTE()
        if self.kind == "binary.size":
            return self.label() + b" %d" % len(data)
        # RFC 3516 4.2: a BINARY answer that holds NUL goes as a literal8.
        binary = self.kind == "binary" and b"\0" in data
        return self.label() + (b" ~{%d}\r\n" if binary else b" {%d}\r\n") % len(data) + data


_SIMPLE = {
    FP.Envelope: "envelope",
    FP.Flags: "flags",
    FP.InternalDate: "internaldate",
    FP.RFC822Header: "rfc822.header",
    FP.RFC822Text: "rfc822.text",
    FP.RFC822Size: "rfc822.size",
    FP.RFC822: "rfc822",
    FP.UID: "uid",
    FP.BodyStructure: "bodystructure",
}


def parse_items(raw):
    """FETCH's argument (atom, macro or list) -> [Item]; BadCommand if wrong."""
    raw = raw.strip()
    if not raw:
        raise BadCommand("FETCH needs data items")
    if raw.count(b"(") != raw.count(b")") or raw.count(b"[") != raw.count(b"]"):
        raise BadCommand("unbalanced parentheses in FETCH items")
    if raw.startswith(b"(") and not raw.endswith(b")"):
        raise BadCommand("unexpected text after FETCH items")
    if any(c < 0x20 or c > 0x7E for c in raw):
        # RFC 3501 9: every FETCH item, header field names included, is 7-bit text.
        raise BadCommand("FETCH items must be 7-bit text")
    raw, savedate = _take_savedate(raw)
    if savedate and raw.strip(b"() ") == b"":
        return [Item("savedate")]  # SAVEDATE alone, or in a list of its own
    binary_kinds = _binary_kinds(raw)
    if binary_kinds:
        raw = _BINARY.sub(_as_body, raw)
    upper = raw.upper()
    if upper == b"FAST":
        raw = b"(FLAGS INTERNALDATE RFC822.SIZE)"
    elif upper == b"ALL":
        raw = b"(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)"
    elif upper == b"FULL":
        raw = b"(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY)"
    parser = FP()
    try:
        parser.parseString(raw)
    except Exception:
        # The parser's own words (Python's int() errors among them) are not
        # for the client.
        raise BadCommand("bad FETCH items")
    if parser.state or parser.remaining:
        raise BadCommand("bad FETCH items")
    # Twisted's parser upper-cases HEADER.FIELDS names; answer with the
    # names as the client wrote them (RFC 3501 7.4.2 echoes the section).
    original = [m.group(1).split() for m in _FIELD_LISTS.finditer(raw)]
    items = [Item("savedate")] if savedate else []
    for r in parser.result:
        kind = _SIMPLE.get(type(r))
        if kind is not None:
            items.append(Item(kind))
            continue
        if not isinstance(r, FP.Body):
            raise BadCommand("bad FETCH items")
        part = tuple(n + 1 for n in r.part)
        if any(n > MAX_NUMBER for n in part):
            raise BadCommand("section part numbers are at most 32 bits")
        sectioned = not (r.header is None and r.text is None and r.mime is None and not r.empty)
        kind = binary_kinds.pop(0) if binary_kinds and sectioned else "section"
        if kind != "section":
            start = length = None
            if r.partialBegin is not None:
                if kind == "binary.size":
                    raise BadCommand("BINARY.SIZE takes no partial range")
                start, length = int(r.partialBegin), int(r.partialLength)
                if start > MAX_NUMBER or length > MAX_NUMBER or length == 0:
                    raise BadCommand("bad partial range")
            items.append(Item(kind, part, peek=bool(r.peek) or kind == "binary.size", start=start, length=length))
            continue
        if r.header is None and r.text is None and r.mime is None and not r.empty:
            items.append(Item("body"))  # BODY without a section: the non-extensible BODYSTRUCTURE
            continue
        section, fields, negate = "", (), False
        if r.header is not None:
            section = "HEADER"
            if r.header.fields:
                fields = tuple(r.header.fields)
                if original and len(original[0]) == len(fields):
                    fields = tuple(original[0])
                original = original[1:]
                negate = bool(r.header.negate)
                section = "HEADER.FIELDS.NOT" if negate else "HEADER.FIELDS"
        elif r.text is not None:
            section = "TEXT"
        elif r.mime is not None:
            if not part:
                raise BadCommand("MIME needs a part number")
            section = "MIME"
        start = length = None
        if r.partialBegin is not None:
            start, length = int(r.partialBegin), int(r.partialLength)
            if start > MAX_NUMBER or length > MAX_NUMBER:
                raise BadCommand("partial offsets are at most 32 bits")
            if length == 0:
                raise BadCommand("partial length must be positive")
        items.append(Item("section", part, section, fields, negate, bool(r.peek), start, length))
    # RFC 3501 6.4.8: UID FETCH always answers with UID; added by the caller.
    return items


_SAVEDATE = re.compile(rb"(?<![^ (])SAVEDATE(?![^ )])", re.IGNORECASE)


def _take_savedate(raw):
    """
    RFC 8514 3: the SAVEDATE item, which Twisted's parser does not know,
    taken out of the items text (not inside a section's brackets, where it
    would be a header field name) -> (the rest, whether it was there).
    """
    found = False
    out, last = [], 0
    for m in _SAVEDATE.finditer(raw):
        before = raw[: m.start()]
        if before.count(b"[") != before.count(b"]"):
            continue
        found = True
        out.append(raw[last : m.start()])
        last = m.end()
    if not found:
        return raw, False
    out.append(raw[last:])
    rest = b" ".join(b"".join(out).split()).replace(b"( ", b"(").replace(b" )", b")")
    return rest, True


def _binary_kinds(raw):
    """
    The kind of each sectioned BODY/BINARY item in order ("section" for
    BODY[...]), or [] when there is no BINARY item; BadCommand for a
    BINARY section that is not part numbers (RFC 3516 4.1).
    """
    if not _BINARY.search(raw):
        return []
    for m in _BINARY.finditer(raw):
        if not _PART_NUMBERS.match(m.group(2)):
            raise BadCommand("a BINARY section is part numbers only")
    kinds = []
    for m in re.finditer(_BINARY.pattern + b"|" + _BODY_SECTION.pattern, raw, re.I):
        if m.group(0).upper().startswith(b"BODY"):
            kinds.append("section")
        elif (m.group(1) or b"").upper() == b".SIZE":
            kinds.append("binary.size")
        else:
            kinds.append("binary")
    return kinds


def _as_body(m):
    # Twisted's parser knows BODY[...]; the kinds are kept by _binary_kinds.
    peek = b".PEEK" if m.group(1) else b""
    return b"BODY" + peek + b"[" + m.group(2) + b"]"


def binary_bytes(item, message):
    """RFC 3516 4.2: a BINARY[...] section, its transfer encoding undone."""
    if not item.part:
        data = message.data
    else:
        part = message.find(item.part)
        if part is None:
            return b""
        try:
            data = mime.decoded_body(part)
        except mime.UnknownCTE:
            return _UNKNOWN
    if item.start is not None:
        data = data[item.start : item.start + item.length]
    return data


def section_bytes(item, message):
    """The bytes of a BODY[...] item from the parsed message (a mime.Part)."""
    if item.kind in ("binary", "binary.size"):
        return binary_bytes(item, message)
    if item.kind == "rfc822":
        data = message.data
    elif item.kind == "rfc822.header":
        data = message.header
    elif item.kind == "rfc822.text":
        data = message.text
    else:
        part = message.find(item.part) if item.part else message
        if part is None:
            data = b""
        else:
            target = part
            if item.section in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT") and item.part:
                # RFC 3501 6.4.5: HEADER/TEXT of a part apply to an encapsulated message.
                if part.ctype == ("message", "rfc822") and part.children:
                    target = part.children[0]
                else:
                    target = None
            if target is None:
                data = b""
            elif item.section == "":
                data = part.text if item.part else part.data[part.start : part.end]
            elif item.section == "HEADER" or item.section == "MIME":
                data = target.header
            elif item.section == "TEXT":
                data = target.text
            else:
                data = mime.header_subset(target, [f.decode("ascii", "replace").lower().encode("ascii") for f in item.fields], item.negate)
    if item.start is not None:
        data = data[item.start : item.start + item.length]
    return data


def compute(data, items, want_envelope, want_structure):
    """
    Run in a thread: everything the items need from a message's bytes.

    @return: (sections by item index, envelope, bodystructure, body) with
        the last three as wire bytes or None when not wanted.
    """
    if want_envelope and not want_structure:
        for item in items:
            if item.needs_file:
                break
        else:
            # ENVELOPE alone needs only the header: one pass over it, no MIME tree.
            return {}, mime.message_envelope(data), None, None
    message = parse_message(data)
    sections = {i: section_bytes(item, message) for i, item in enumerate(items) if item.needs_file}
    env = bs = body = None
    if want_envelope:
        env = mime.envelope(message)
    if want_structure:
        bs = mime.bodystructure(message, True)
        body = mime.bodystructure(message, False)
    return sections, env, bs, body


def parse_message(data):
    """The mime.Part of a whole stored message."""
    canon = mime.canonical(data)
    return mime.Part(canon, 0, len(canon))


def report_broken(f):
    """
    Called in a worker thread, inside `except`, for a message that could not
    be read or parsed: log the exception once, naming the message's file,
    from the reactor thread. The client only misses that message's answer.
    """
    failure = Failure()
    name = getattr(f, "name", None)
    reactor.callFromThread(
        log.failure, "message {file!r} could not be read or parsed; left out of the answer", failure, LogLevel.error, file=name
    )


def internaldate(seconds):
    """RFC 3501 9 date-time, in UTC."""
    return time.strftime("%d-%b-%Y %H:%M:%S +0000", time.gmtime(seconds)).encode("ascii")


def flag_list(flags):
    """(\\Flag ...) for any iterable of flags; the same sets recur, so cache them."""
    return _flag_list(flags if isinstance(flags, frozenset) else frozenset(flags))


@functools.lru_cache(maxsize=4096)
def _flag_list(flags):
    return b"(" + b" ".join(f.encode("utf-8") for f in sorted(flags)) + b")"
