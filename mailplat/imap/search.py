"""
SEARCH (RFC 3501 6.4.4): the keys parsed into a tree of predicates, then
run over the selected folder's messages.

Twisted's search compares str with bytes for SUBJECT/FROM and re-reads
every message; here flag, size, date and UID keys need only the index,
and header/text keys read a message once, in a thread.
"""

import base64
import binascii
import email.header
import email.utils
import quopri
import time

from mailplat.imap import address, condstore, mime
from mailplat.imap.parser import BadCommand, in_ranges, parse_date, parse_sequence_set

MAX_DEPTH = 100  # nested search keys (Dovecot refuses deep nesting too)

CHARSETS = ("UTF-8", "US-ASCII")

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = ("BCC", "CC", "FROM", "SUBJECT", "TO")
_ADDRESS_KEYS = ("BCC", "CC", "FROM", "TO")


class Context:
    """What a predicate sees of one message."""

    __slots__ = ("seq", "uid", "info", "recent", "message", "largest_seq", "largest_uid")

    def __init__(self, seq, uid, info, recent, largest_seq, largest_uid):
        self.seq = seq
        self.uid = uid
        self.info = info
        self.recent = recent
        self.message = None  # a mime.Part when content keys need it
        self.largest_seq = largest_seq
        self.largest_uid = largest_uid


def decode_header(value):
    """A header value with RFC 2047 words decoded, casefolded for matching."""
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        parts = email.header.decode_header(value)
        value = "".join(
            p.decode(c or "utf-8", "replace") if isinstance(p, bytes) else p for p, c in parts
        )
    except (LookupError, ValueError):
        pass
    return value.casefold()


def _day(seconds):
    t = time.gmtime(seconds)
    return (t.tm_year, t.tm_mon, t.tm_mday)


def _sent_day(ctx):
    value = ctx.message.get("date")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
    except (TypeError, ValueError):
        return None
    if not parsed:
        return None
    return tuple(parsed[:3])


class Query:
    """A parsed search program: `match(ctx)` and whether it needs the file."""

    def __init__(self, reader, charset=None):
        self.reader = reader
        self.needs_file = False
        self.charset = charset
        self.depth = 0
        self.saved = frozenset()  # the UIDs `$` stands for (RFC 5182), set by the session
        self.uses_modseq = False  # RFC 7162 3.1.5: a MODSEQ key (the answer ends with (MODSEQ n))
        # RFC 5032 (WITHIN): OLDER / YOUNGER count back from the time the
        # command came. A CONTEXT=SEARCH result updated later (RFC 5267 4)
        # keeps that time: a message is not dropped just for growing older.
        self.now = time.time()
        self.tree = self._keys()

    def _keys(self):
        keys = [self._key()]
        while self.reader.maybe_space():
            if self.reader.peek() == b")" or self.reader.at_end():
                break
            keys.append(self._key())
        return ("and", keys)

    def _string(self):
        self.reader.space()
        raw = self.reader.astring()
        try:
            return raw.decode("utf-8").casefold()
        except UnicodeDecodeError:
            raise BadCommand("search string is not UTF-8")

    def _number(self):
        self.reader.space()
        return self.reader.number()

    def _date(self):
        self.reader.space()
        if self.reader.peek() == b'"':
            return parse_date(self.reader.string())
        return parse_date(self.reader.atom("a date"))

    def _key(self):
        # Parentheses, NOT and OR nest: bound the depth, not Python's stack.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise BadCommand("search keys nested too deep")
        try:
            return self._one_key()
        finally:
            self.depth -= 1

    def _one_key(self):
        r = self.reader
        if r.peek() == b"(":
            r.pos += 1
            tree = self._keys()
            r.close_paren()
            return tree
        c = r.peek()
        if c.isdigit() or c in (b"*", b"$"):  # RFC 5182 3: `$` is a sequence set
            return ("seq", r.sequence_set())
        key = r.atom("a search key").upper().decode("ascii", "replace")
        if key == "ALL":
            return ("all",)
        if key in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[key]
            return ("flag", flag, present)
        if key in ("KEYWORD", "UNKEYWORD"):
            r.space()
            return ("flag", r.flag(), key == "KEYWORD")
        if key in ("NEW", "OLD", "RECENT"):
            return (key.lower(),)
        if key in _ADDRESS_KEYS:
            self.needs_file = True
            return ("address", key.lower(), self._string())
        if key in _HEADER_KEYS:
            self.needs_file = True
            return ("header", key.lower(), self._string())
        if key == "HEADER":
            r.space()
            name = r.astring("a header name").decode("ascii", "replace").lower()
            self.needs_file = True
            return ("header", name, self._string())
        if key in ("BODY", "TEXT"):
            self.needs_file = True
            return (key.lower(), self._string())
        if key in ("BEFORE", "ON", "SINCE"):
            return ("date", key, self._date())
        if key in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
            return ("saved", key[5:], self._date())  # RFC 8514 4
        if key == "SAVEDATESUPPORTED":
            return ("savedatesupported",)  # RFC 8514 4
        if key in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            self.needs_file = True
            return ("sent", key[4:], self._date())
        if key in ("OLDER", "YOUNGER"):
            # RFC 5032 3: OLDER / YOUNGER nz-number, seconds against INTERNALDATE.
            seconds = self._number()
            if seconds < 1:
                raise BadCommand(f"{key} needs a number of seconds above 0")
            return ("within", key, seconds)
        if key == "LARGER":
            return ("larger", self._number())
        if key == "SMALLER":
            return ("smaller", self._number())
        if key == "UID":
            r.space()
            return ("uid", r.sequence_set())
        if key == "MODSEQ":
            # RFC 7162 3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer;
            # one modseq per message here, whatever flag the entry names.
            r.space()
            if r.peek() == b'"':
                r.string()
                r.space()
                if r.atom("priv, shared or all").lower() not in (b"priv", b"shared", b"all"):
                    raise BadCommand("MODSEQ entry type is priv, shared or all")
                r.space()
            self.uses_modseq = True
            return ("modseq", condstore.number(r, zero=True))
        if key == "NOT":
            r.space()
            return ("not", self._key())
        if key == "OR":
            r.space()
            a = self._key()
            r.space()
            return ("or", a, self._key())
        raise BadCommand(f"unknown search key {key}")

    def match(self, ctx):
        return self._eval(self.tree, ctx)

    def _eval(self, node, ctx):
        kind = node[0]
        if kind == "and":
            return all(self._eval(n, ctx) for n in node[1])
        if kind == "all":
            return True
        if kind == "flag":
            return (node[1].lower() in {f.lower() for f in ctx.info.flags}) == node[2]
        if kind == "recent":
            return ctx.recent
        if kind == "new":
            return ctx.recent and "\\Seen" not in ctx.info.flags
        if kind == "old":
            return not ctx.recent
        if kind in ("seq", "uid") and node[1] == b"$":
            return ctx.uid in self.saved
        if kind == "seq":
            return in_ranges(ctx.seq, parse_sequence_set(node[1], ctx.largest_seq))
        if kind == "uid":
            return in_ranges(ctx.uid, parse_sequence_set(node[1], ctx.largest_uid))
        if kind == "not":
            return not self._eval(node[1], ctx)
        if kind == "or":
            return self._eval(node[1], ctx) or self._eval(node[2], ctx)
        if kind == "modseq":
            return getattr(ctx.info, "modseq", 0) >= node[1]
        if kind == "within":
            # RFC 5032 3, as Dovecot counts: at exactly n seconds old a
            # message is both OLDER n and YOUNGER n.
            age = self.now - ctx.info.internaldate
            return age >= node[2] if node[1] == "OLDER" else age <= node[2]
        if kind == "larger":
            return ctx.info.size > node[1]
        if kind == "smaller":
            return ctx.info.size < node[1]
        if kind == "date":
            return _compare(_day(ctx.info.internaldate), node[1], node[2])
        if kind == "saved":
            return _compare(_day(saved_date(ctx.info)), node[1], node[2])
        if kind == "savedatesupported":
            return getattr(ctx.info, "savedate", None) is not None
        if kind == "sent":
            day = _sent_day(ctx)
            return day is not None and _compare(day, node[1], node[2])
        if kind == "header":
            name = node[1].encode("ascii", "replace")
            for n, raw in ctx.message.fields():
                if n == name and node[2] in decode_header(mime.field_value(raw)):
                    return True
            return False
        if kind == "address":
            # The raw value, and each address with the comments and spaces
            # inside it gone (`<user (comment)@ domain>` is user@domain).
            name = node[1].encode("ascii")
            for n, raw in ctx.message.fields():
                if n == name:
                    value = mime.field_value(raw)
                    if node[2] in decode_header(value) or node[2] in decode_header(address.search_text(value)):
                        return True
            return False
        if kind == "body":
            return node[1] in _body_text(ctx.message)
        if kind == "text":
            return node[1] in _body_text(ctx.message) or node[1] in decode_header(
                ctx.message.header.decode("utf-8", "surrogateescape")
            )
        raise AssertionError(kind)


def saved_date(info):
    """
    RFC 8514 4: the save date for SAVEDBEFORE / SAVEDON / SAVEDSINCE; where
    the store keeps none (the mbox store: its IMessageInfo has no
    `savedate`; FETCH SAVEDATE is NIL there) the INTERNALDATE stands in.
    """
    saved = getattr(info, "savedate", None)
    return info.internaldate if saved is None else saved


def _compare(day, op, target):
    if op == "BEFORE":
        return day < target
    if op == "ON":
        return day == target
    return day >= target  # SINCE


def _body_text(message):
    """The body as text for BODY/TEXT: MIME parts' texts, base64/QP decoded where easy."""
    out = []
    # Depth first, in order, with a list for a stack: no recursion, however
    # deep the tree (mime.Part bounds it at mime.MAX_DEPTH anyway).
    stack = [message]
    while stack:
        part = stack.pop()
        if part.children and part.ctype[0] == "multipart":
            stack.extend(reversed(part.children))
            continue
        if part.ctype == ("message", "rfc822") and part.children:
            inner = part.children[0]
            out.append(inner.header.decode("utf-8", "replace"))
            stack.append(inner)
            continue
        data = part.text
        encoding = (part.get("content-transfer-encoding") or "").strip().lower()
        try:
            if encoding == "base64":
                data = base64.b64decode(data)
            elif encoding == "quoted-printable":
                data = quopri.decodestring(data)
        except (binascii.Error, ValueError):
            pass
        charset = part.params.get("charset", "utf-8")
        try:
            out.append(data.decode(charset, "replace"))
        except LookupError:
            out.append(data.decode("utf-8", "replace"))
    return "".join(out).casefold()
