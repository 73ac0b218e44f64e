"""
A message's MIME tree as byte ranges, for FETCH BODY[section],
BODYSTRUCTURE and ENVELOPE (RFC 3501 6.4.5, 7.4.2).

Everything works on the message as IMAP sends it (CRLF line ends) and
keeps the bytes as they are: a header field is its raw lines, folding and
case included, so HEADER.FIELDS is byte-exact and 8-bit headers pass
through untouched.
"""

import base64
import binascii
import functools
import re

from mailplat.imap import address
from mailplat.imap.parser import quote

_HEADER_END = re.compile(rb"\r\n\r\n")

# Multipart / message/rfc822 levels parsed before a part stays opaque: a hostile
# message nests thousands deep to exhaust the stack (Dovecot's max_nested_mime_parts).
MAX_DEPTH = 100
# Parts parsed in one message, so that a million tiny parts cost no more time and
# memory than ten thousand (Dovecot's max_total_mime_parts).
MAX_PARTS = 10000


def canonical(data):
    """Stored bytes (LF or CRLF) -> CRLF line ends, as IMAP counts them."""
    if b"\n" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def header_fields(header):
    """[(lowercase name, raw lines incl. CRLF)] of a header block."""
    fields = []
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line + b"\r\n")
            continue
        name, colon, _ = line.partition(b":")
        if not colon:
            fields.append((b"", line + b"\r\n"))  # junk line; kept for HEADER
            continue
        fields.append((name.strip().lower(), line + b"\r\n"))
    return fields


def field_value(raw):
    """Unfolded value of a raw header field, as text (bytes kept via surrogates)."""
    value = raw.partition(b":")[2]
    value = re.sub(rb"\r\n([ \t])", rb"\1", value).strip()
    return value.decode("utf-8", "surrogateescape")


class Part:
    """
    One entity: header and body as offsets into the message bytes.

    `depth` is the part's nesting level (0 for the message). A multipart or
    message/rfc822 part at MAX_DEPTH - 1, or met once the message has
    MAX_PARTS parts, is not descended into: it is `truncated`, a leaf of
    type application/octet-stream over its unparsed bytes, as Dovecot shows
    a part past its limits. `budget` ([parts still allowed]) is shared by
    the whole tree of one message.
    """

    __slots__ = ("data", "start", "body", "end", "children", "ctype", "params", "default_type", "truncated", "_fields")

    def __init__(self, data, start, end, default_type=("text", "plain"), depth=0, budget=None):
        self.data = data
        self.start = start
        self.end = end
        self.default_type = default_type
        m = _HEADER_END.search(data, start, end)
        if data.startswith(b"\r\n", start, end):
            self.body = start + 2  # no header at all
        elif m is None:
            self.body = end  # header only
        else:
            self.body = m.end()
        self.children = []
        self._fields = None
        self.truncated = False
        if budget is None:
            budget = [MAX_PARTS]
        budget[0] -= 1
        self.ctype, self.params = self._content_type()
        nests = self.ctype[0] == "multipart" or self.ctype == ("message", "rfc822")
        if nests and (depth + 1 >= MAX_DEPTH or budget[0] <= 0):
            self.truncated = True
            self.ctype = ("application", "octet-stream")
        elif self.ctype[0] == "multipart":
            self._split_multipart(depth + 1, budget)  # the children's depth
        elif self.ctype == ("message", "rfc822"):
            self.children = [Part(data, self.body, end, depth=depth + 1, budget=budget)]

    @property
    def header(self):
        return self.data[self.start : self.body]

    @property
    def text(self):
        return self.data[self.body : self.end]

    def fields(self):
        if self._fields is None:
            self._fields = header_fields(self.header)
        return self._fields

    def get(self, name):
        """The first value of a header field, or None."""
        name = name.lower().encode("ascii")
        for n, raw in self.fields():
            if n == name:
                return field_value(raw)
        return None

    def _content_type(self):
        value = self.get("content-type")
        if not value:
            return self.default_type, {"charset": "us-ascii"} if self.default_type == ("text", "plain") else {}
        main, params = parse_params(value)
        kind, slash, sub = main.partition("/")
        if not slash or not kind.strip() or not sub.strip():
            # RFC 2045 5.2: a syntactically invalid Content-Type is text/plain.
            return ("text", "plain"), {"charset": "us-ascii"}
        kind, sub = kind.strip().lower(), sub.strip().lower()
        if kind == "text" and "charset" not in params:
            params["charset"] = "us-ascii"  # RFC 2045 5.2 default
        return (kind, sub), params

    def _split_multipart(self, depth, budget):
        boundary = self.params.get("boundary")
        if not boundary:
            return
        delim = b"--" + boundary.encode("utf-8", "surrogateescape")
        child_default = ("message", "rfc822") if self.ctype[1] == "digest" else ("text", "plain")
        data, end = self.data, self.end
        # RFC 2046 5.1.1: the CRLF before a delimiter belongs to it; the
        # first delimiter may follow the header's blank line directly.
        pos = max(self.body - 2, self.start)
        starts = []
        pattern = re.compile(rb"\r\n" + re.escape(delim) + rb"(--)?[ \t]*(?:\r\n|$)")
        for m in pattern.finditer(data, pos, end):
            starts.append((m.start(), m.end(), bool(m.group(1))))
            if m.group(1) or len(starts) > budget[0]:
                break
        for i, (s, e, final) in enumerate(starts):
            if final:
                break
            if budget[0] <= 1:
                # The last part the budget allows keeps the rest of the multipart.
                self.children.append(Part(data, e, end, child_default, depth, budget))
                break
            nxt = starts[i + 1][0] if i + 1 < len(starts) else end
            self.children.append(Part(data, e, nxt, child_default, depth, budget))

    def find(self, numbers):
        """
        The part named by a section's part numbers (1-based), or None.

        RFC 3501 6.4.5: the parts of a multipart are numbered 1, 2, ...; a
        message that is not multipart has one part, 1, its body (so BODY[1]
        of a message/rfc822 message is the whole attached message); the
        parts of an attached message/rfc822 are numbered as its own message's.
        """
        part = self
        for depth, n in enumerate(numbers):
            parts = part._numbered(depth == 0)
            if not 1 <= n <= len(parts):
                return None
            part = parts[n - 1]
        return part

    def _numbered(self, top):
        """The parts numbered 1, 2, ... below this one."""
        if self.ctype[0] == "multipart":
            return self.children
        if self.ctype == ("message", "rfc822") and self.children and not top:
            return self.children[0]._numbered(True)
        return [self]


_PARAM = re.compile(
    r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.S
)


def parse_params(value):
    """'text/plain; charset="x"' -> ('text/plain', {'charset': 'x'})."""
    main, _, rest = value.partition(";")
    params = {}
    for m in _PARAM.finditer(";" + rest):
        key = m.group(1).lower()
        v = m.group(2).strip()
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        params.setdefault(key, v)
    return main.strip(), params


def lines_of(data):
    return data.count(b"\r\n") + (1 if data and not data.endswith(b"\r\n") else 0)


def _body_lines(part):
    """lines_of(part.text) without copying the body: each nesting level counts in place."""
    data, start, end = part.data, part.body, part.end
    if start >= end:
        return 0
    return data.count(b"\r\n", start, end) + (0 if data.endswith(b"\r\n", start, end) else 1)


# --- wire formats -------------------------------------------------------


def nstring(value):
    """NIL, a quoted string, or a literal for 8-bit text (RFC 3501 4.3):
    a raw UTF-8 header goes out as it is, where Twisted's server failed."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return quote(value)


# The common forms, `Name <a@b>`, `"Name" <a@b>` and `a@b`, parsed by one
# regex (five times faster); anything else (groups, routes, comments) goes
# through L{mailplat.imap.address}.
_SIMPLE_ADDRESS = re.compile(r'^\s*(?:"([^"\\]*)"|([^<>",;:()\\@]*?))\s*<([^<>@\s",;:()]+)@([^<>@\s",;:()]+)>\s*$|^\s*([^<>@\s",;:()]+)@([^<>@\s",;:()]+)\s*$')


_NOT_SIMPLE = re.compile(r'["():;\\\[]')


def _addresses(value):
    """[(name, route, mailbox, host)], group markers included (RFC 3501 7.4.2)."""
    m = _SIMPLE_ADDRESS.match(value)
    if m is None:
        if "," in value and _NOT_SIMPLE.search(value) is None:
            # A list of common forms (`a@b, Name <c@d>`): each by the regex.
            out = []
            for piece in value.split(","):
                one = _addresses(piece) if piece.strip() else None
                if not one or len(one) != 1 or _SIMPLE_ADDRESS.match(piece) is None:
                    return address.parse(value)
                out += one
            return out
        return address.parse(value)
    if m.group(3) is not None:
        name = m.group(1) if m.group(1) is not None else m.group(2).strip()
        return [(name or None, None, m.group(3), m.group(4))]
    return [(None, None, m.group(5), m.group(6))]


# The same two regexes over bytes, for values known to be printable ASCII
# (where str and bytes patterns match alike).
_SIMPLE_ADDRESS_BYTES = re.compile(_SIMPLE_ADDRESS.pattern.encode("ascii"))
_NOT_SIMPLE_BYTES = re.compile(_NOT_SIMPLE.pattern.encode("ascii"))
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash


def _simple_wire(m):
    """
    The ENVELOPE address of a _SIMPLE_ADDRESS_BYTES match in a _PLAIN
    value: every part quotes as it is (the regex lets no quote into any
    part), as nstring would quote it.
    """
    if m.group(3) is not None:
        name = m.group(1) if m.group(1) is not None else m.group(2).strip()
        return b'(%s NIL "%s" "%s")' % (b'"' + name + b'"' if name else b"NIL", m.group(3), m.group(4))
    return b'(NIL NIL "%s" "%s")' % (m.group(5), m.group(6))


def _simple_list(value):
    """
    _address_list of a header value (bytes) in the common forms, cheaply,
    or None for anything else: one address, or a list of them as
    _addresses takes it, in a printable ASCII value short enough to quote.
    """
    if len(value) >= 1024 or _PLAIN.fullmatch(value) is None:
        return None
    m = _SIMPLE_ADDRESS_BYTES.match(value)
    if m is not None:
        return b"(" + _simple_wire(m) + b")"
    if b"," not in value or _NOT_SIMPLE_BYTES.search(value) is not None:
        return None
    out = []
    for piece in value.split(b","):
        m = _SIMPLE_ADDRESS_BYTES.match(piece) if piece.strip() else None
        if m is None:
            return None
        out.append(_simple_wire(m))
    return b"(" + b"".join(out) + b")"


@functools.lru_cache(maxsize=8192)
def _address_list(value):
    # Cached: the same To, From and Cc values recur across a folder.
    if value is None:
        return b"NIL"
    fast = _simple_list(value.encode("ascii")) if value.isascii() else None
    if fast is not None:
        return fast
    return _parsed_list(value)


def _address_wire(value):
    """ENVELOPE's address list of a raw header value (bytes, None when absent or empty: NIL)."""
    if not value:
        return b"NIL"
    fast = _simple_list(value)
    if fast is not None:
        return fast
    return _address_list(value.decode("utf-8", "surrogateescape"))


def _parsed_list(value):
    """_address_list the long way: each address of L{_addresses}, each part through nstring."""
    out = []
    for name, route, local, host in _addresses(value):
        # RFC 3501 7.4.2: a group starts with (NIL NIL "name" NIL) and ends with (NIL NIL NIL NIL).
        out.append(b"(" + b" ".join((nstring(name), nstring(route), nstring(local), nstring(host))) + b")")
    if not out:
        return b"NIL"
    return b"(" + b"".join(out) + b")"


_ENVELOPE_FIELDS = frozenset(
    (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to", b"message-id")
)


def first_values(data, wanted):
    """
    {lowercase name: unfolded value} of the first occurrence of each wanted
    header field of a stored message (LF or CRLF), reading only its header:
    the same values as C{Part(canonical(data)).get(name)} (as bytes), for
    one pass over the header instead of a parse of the whole message.
    """
    # Cut at the raw blank line first (LF LF or LF CR LF), so only the header is copied.
    end = data.find(b"\n\n")
    crlf = data.find(b"\n\r\n", 0, end + 2 if end >= 0 else len(data))
    if crlf >= 0 or end >= 0:
        data = data[: (crlf if crlf >= 0 else end) + 3]
    lines = data.replace(b"\r\n", b"\n")
    if lines[:1] == b"\n":
        return {}  # no header at all
    end = lines.find(b"\n\n")
    if end >= 0:
        lines = lines[:end]
    found = {}
    current = None  # the pieces of a wanted field being unfolded
    started = False
    for line in lines.split(b"\n"):
        if not line:
            continue
        if started and line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)  # RFC 5322 2.2.3 unfolding keeps the WSP
            continue
        started = True
        name, colon, rest = line.partition(b":")
        name = name.strip().lower() if colon else None
        if name in wanted and name not in found:
            current = found[name] = [rest]
        else:
            current = None
    return {name: b"".join(pieces).strip() for name, pieces in found.items()}


def message_envelope(data):
    """ENVELOPE (RFC 3501 7.4.2) straight from a stored message's bytes (see L{first_values})."""
    values = first_values(data, _ENVELOPE_FIELDS)
    get = values.get
    # Sender and Reply-To default to From when absent or empty (as envelope()).
    author = _address_wire(get(b"from"))
    sender, reply_to = get(b"sender"), get(b"reply-to")
    return b"(" + b" ".join(
        (
            quote(get(b"date")),
            quote(get(b"subject")),
            author,
            _address_wire(sender) if sender else author,
            _address_wire(reply_to) if reply_to else author,
            _address_wire(get(b"to")),
            _address_wire(get(b"cc")),
            _address_wire(get(b"bcc")),
            quote(get(b"in-reply-to")),
            quote(get(b"message-id")),
        )
    ) + b")"


def envelope(part):
    """ENVELOPE (RFC 3501 7.4.2) of a message part."""
    get = part.get
    sender_default = get("from")
    items = [
        nstring(get("date")),
        nstring(get("subject")),
        _address_list(get("from")),
        _address_list(get("sender") or sender_default),
        _address_list(get("reply-to") or sender_default),
        _address_list(get("to")),
        _address_list(get("cc")),
        _address_list(get("bcc")),
        nstring(get("in-reply-to")),
        nstring(get("message-id")),
    ]
    return b"(" + b" ".join(items) + b")"


def _param_list(params):
    if not params:
        return b"NIL"
    return b"(" + b" ".join(nstring(k.upper()) + b" " + nstring(v) for k, v in params.items()) + b")"


def _disposition(part):
    value = part.get("content-disposition")
    if not value:
        return b"NIL"
    kind, params = parse_params(value)
    return b"(" + nstring(kind.upper()) + b" " + _param_list(params) + b")"


def _language(part):
    value = part.get("content-language")
    if not value:
        return b"NIL"
    tags = [t.strip() for t in value.split(",") if t.strip()]
    return b"(" + b" ".join(nstring(t) for t in tags) + b")"


def bodystructure(part, extended=True):
    """
    BODYSTRUCTURE (extended) or BODY (RFC 3501 7.4.2) of a part.

    Recursion follows the part tree, which Part bounds at MAX_DEPTH.
    """
    kind, sub = part.ctype
    if kind == "multipart":
        if not part.children:
            # A multipart without parts cannot be expressed; show it as text.
            return _single(part, ("text", "plain"), {"charset": "us-ascii"}, extended)
        inner = b"".join(bodystructure(c, extended) for c in part.children)
        out = inner + b" " + nstring(sub.upper())
        if extended:
            out += b" " + b" ".join(
                (_param_list(part.params), _disposition(part), _language(part), nstring(part.get("content-location")))
            )
        return b"(" + out + b")"
    return _single(part, part.ctype, part.params, extended)


def _single(part, ctype, params, extended):
    kind, sub = ctype
    encoding = (part.get("content-transfer-encoding") or "7bit").strip().upper()
    fields = [
        nstring(kind.upper()),
        nstring(sub.upper()),
        _param_list(params),
        nstring(part.get("content-id")),
        nstring(part.get("content-description")),
        nstring(encoding),
        b"%d" % (part.end - part.body),
    ]
    if (kind, sub) == ("message", "rfc822") and part.children:
        inner = part.children[0]
        fields += [envelope(inner), bodystructure(inner, extended), b"%d" % _body_lines(part)]
    elif kind == "text":
        fields.append(b"%d" % _body_lines(part))
    if extended:
        fields += [
            nstring(part.get("content-md5")),
            _disposition(part),
            _language(part),
            nstring(part.get("content-location")),
        ]
    return b"(" + b" ".join(fields) + b")"


def header_subset(part, names, negate):
    """HEADER.FIELDS[.NOT]: the matching raw lines in order, then CRLF (byte-exact)."""
    wanted = {n.lower() for n in names}
    out = [raw for name, raw in part.fields() if (name in wanted) != negate and name]
    return b"".join(out) + b"\r\n"


# --- content-transfer-encodings (RFC 3516 BINARY, RFC 2045 6) ----------------

IDENTITY_CTES = ("7bit", "8bit", "binary")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


class UnknownCTE(Exception):
    """RFC 3516 4.3: a Content-Transfer-Encoding the server cannot decode."""


def transfer_encoding(part):
    return (part.get("content-transfer-encoding") or "7bit").strip().lower()


def decoded_body(part):
    """
    RFC 3516 4.2: a leaf part's body with its transfer encoding removed.
    Multiparts and attached messages are never encoded (RFC 2045 6.4), so
    they come back as they are.
    """
    body = part.text
    if part.ctype[0] == "multipart" or part.ctype == ("message", "rfc822"):
        return body
    cte = transfer_encoding(part)
    if cte in IDENTITY_CTES:
        return body
    if cte == "base64":
        return decode_base64(body)
    if cte == "quoted-printable":
        return decode_qp(body)
    raise UnknownCTE(cte)


def decode_base64(body):
    """RFC 2045 6.8: characters outside the alphabet are ignored; so is a broken tail."""
    clean = _NOT_BASE64.sub(b"", body.partition(b"=")[0])
    clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
    try:
        return base64.b64decode(clean + b"=" * (-len(clean) % 4))
    except binascii.Error:
        return b""


def decode_qp(body):
    """
    RFC 2045 6.7: trailing white space of a line is dropped, "=" at its end
    (white space after it allowed) is a soft break, =XX an octet; any other
    "=" is kept as it is (the robust reading the RFC recommends).
    """
    out = []
    lines = body.split(b"\r\n")
    for i, line in enumerate(lines):
        line = line.rstrip(b" \t")
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        out.append(_QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), line))
        if not soft and i < len(lines) - 1:
            out.append(b"\r\n")
    return b"".join(out)


def base64_lines(data):
    """Base64 in lines of 76 characters with CRLF (RFC 2045 6.8)."""
    text = base64.b64encode(data)
    return b"".join(text[i : i + 76] + b"\r\n" for i in range(0, len(text), 76))


def without_nul(data):
    """
    RFC 3516 4.4: a message APPENDed as a literal8 may hold NUL, which no
    BODY[] answer may carry (RFC 3501 4.3): every leaf part whose body has
    one is stored base64-encoded instead, so BODY[] shows it encoded and
    BINARY[] gives the octets back. `data` is CRLF text; so is the result.
    """
    top = Part(data, 0, len(data))
    edits = []

    def walk(part):
        if part.children:
            for child in part.children:
                walk(child)
        elif b"\0" in data[part.body : part.end]:
            edits.append(part)

    walk(top)
    out, pos = [], 0
    for part in sorted(edits, key=lambda p: p.start):
        header = b"".join(raw for name, raw in part.fields() if name != b"content-transfer-encoding")
        body = data[part.body : part.end]
        tail = b""
        # The last line break stays outside the encoding: it ends the body
        # as the line break before a boundary ends a part (RFC 2046 5.1.1).
        if body.endswith(b"\r\n"):
            body, tail = body[:-2], b"\r\n"
        out += [data[pos : part.start], header, b"Content-Transfer-Encoding: base64\r\n\r\n", base64_lines(body), tail]
        pos = part.end
    out.append(data[pos:])
    return b"".join(out)
