"""
What a Sieve script sees of a message: its header fields decoded (RFC
5228 2.7.2: RFC 2047 encoded words taken out before comparing), the
addresses of its address fields, its size and its envelope.
"""

import re
import email.header
import email.parser
import email.policy
import email.utils

# RFC 5228 5.1: the address test works on these (and other structured address fields).
ADDRESS_FIELDS = frozenset(
    "from to cc bcc sender resent-from resent-to resent-cc resent-bcc resent-sender reply-to "
    "delivered-to return-path envelope-to x-original-to disposition-notification-to".split()
)


def decode_words(value):
    """RFC 2047 encoded words to text; undecodable parts kept as they are."""
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError):
        return value
    out = []
    for text, charset in parts:
        if isinstance(text, bytes):
            try:
                text = text.decode(charset or "ascii", "replace")
            except LookupError:
                text = text.decode("ascii", "replace")
        out.append(text)
    return "".join(out)


_SPECIALS = re.compile(r'[ \t"(),:;<>\[\]\\]')  # an address with one of these needs the full parser


class SieveMessage:
    """One message for one run: header fields, size, envelope and the body on demand."""

    def __init__(self, data, envelope_from="", envelope_to="", size=None):
        self.data = data
        end = data.find(b"\n\n")
        crlf = data.find(b"\r\n\r\n", 0, end + 1 if end >= 0 else len(data))  # only before the LF one
        if crlf >= 0 and (end < 0 or crlf < end):
            head, self._body_at = data[:crlf], crlf + 4
        elif end >= 0:
            head, self._body_at = data[:end], end + 2
        else:
            head, self._body_at = data, len(data)
        self.header_complete = end >= 0 or crlf >= 0
        self._fields = _fields(head)  # [(lowercase name, unfolded text, raw lines)]
        self.size = len(data) if size is None else size
        self.envelope_from = envelope_from or ""
        self.envelope_to = envelope_to or ""
        self._parsed = None
        self.edited = False  # editheader changed the header (L{mailplat.sieve.editheader})
        self._decoded = {}  # name -> decoded values, until the header changes
        self._texts = None

    def headers(self, name):
        """The decoded values of every `name` field, in order (RFC 5228 5.7)."""
        name = name.lower()
        cached = self._decoded.get(name)
        if cached is None:
            cached = self._decoded[name] = [decode_words(v) for n, v, _ in self._fields if n == name]
        return cached

    def raw_headers(self, name):
        name = name.lower()
        return [v for n, v, _ in self._fields if n == name]

    def has(self, name):
        name = name.lower()
        return any(n == name for n, _, _ in self._fields)

    def addresses(self, name):
        """The addr-specs of every `name` field (RFC 5228 5.1); a group's members are its addresses."""
        key = "\0" + name.lower()  # beside the decoded values: cleared with them when the header changes
        cached = self._decoded.get(key)
        if cached is None:
            cached = []
            for value in self.raw_headers(name):
                cached += self.addresses_of(value)
            self._decoded[key] = cached
        return list(cached)

    @staticmethod
    def addresses_of(value):
        """The addr-specs of one field's value."""
        bare = value.strip()
        if bare.count("@") == 1 and _SPECIALS.search(bare) is None:
            return [bare]  # the common `user@domain`, without the full parser
        return [address for display, address in email.utils.getaddresses([value]) if address or display]

    # --- editheader (RFC 5293) ---------------------------------------------

    def add_field(self, name, value, last=False):
        raw = _folded(name, value)
        entry = (name.lower(), " ".join(value.split()), raw)
        if last:
            self._fields.append(entry)
        else:
            self._fields.insert(0, entry)
        self.edited = True
        self._decoded.clear()

    def delete_fields(self, name, keep):
        """Remove the `name` fields for which keep(index from 1, index from the end, decoded value) is False."""
        name = name.lower()
        positions = [i for i, (n, _, _) in enumerate(self._fields) if n == name]
        doomed = set()
        for k, i in enumerate(positions):
            if not keep(k + 1, len(positions) - k, decode_words(self._fields[i][1])):
                doomed.add(i)
        if doomed:
            self._fields = [f for i, f in enumerate(self._fields) if i not in doomed]
            self.edited = True
            self._decoded.clear()

    def header_bytes(self, without=()):
        """The header as it now is, with the blank line that ends it (LF line ends), less the `without` fields."""
        return b"".join(raw for name, _, raw in self._fields if name not in without) + b"\n"

    @property
    def body_offset(self):
        """Where the body starts in the original bytes (after the blank line)."""
        return self._body_at

    def body_text(self):
        """The message as text/plain parts for the body test (decoded transfer encodings)."""
        if self._texts is None:
            self._texts = self._body_texts()
        return self._texts

    def _body_texts(self):
        ctype = (self.raw_headers("content-type") or ["text/plain"])[0].lower()
        encoding = (self.raw_headers("content-transfer-encoding") or ["7bit"])[0].strip().lower()
        if ctype.split(";")[0].strip() in ("text/plain", "") and encoding in ("7bit", "8bit", "binary"):
            # Not MIME-structured: the body is the text (no parser needed).
            charset = "utf-8"
            for param in ctype.split(";")[1:]:
                key, _, value = param.partition("=")
                if key.strip() == "charset":
                    charset = value.strip().strip('"') or "utf-8"
            try:
                return [self.data[self._body_at :].decode(charset, "replace")]
            except LookupError:
                return [self.data[self._body_at :].decode("utf-8", "replace")]
        if self._parsed is None:
            self._parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(self.data)
        texts = []
        for part in self._parsed.walk():
            if part.get_content_maintype() == "text":
                payload = part.get_payload(decode=True) or b""
                charset = part.get_content_charset() or "us-ascii"
                try:
                    texts.append(payload.decode(charset, "replace"))
                except LookupError:
                    texts.append(payload.decode("ascii", "replace"))
        return texts


def _fields(head):
    """[(lowercase name, unfolded value as text, raw lines with LF ends)] of a header block."""
    out = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1][1].append(line)
            out[-1][2].append(line)
            continue
        name, colon, value = line.partition(b":")
        if colon:
            out.append((name.strip().lower(), [value], [line]))
        elif line:
            out.append((b"", [b""], [line]))  # not a field: kept as it is, matched by no test
    return [
        (name.decode("ascii", "replace"), b"".join(value).strip().decode("utf-8", "replace"),
         b"".join(r + b"\n" for r in raw))
        for name, value, raw in out
    ]


def _folded(name, value):
    """A new field's line(s): RFC 2047 words for non-ASCII text, folded near 78 characters (RFC 5293 4)."""
    import email.header

    value = " ".join(value.split())
    if not value.isascii():
        value = email.header.Header(value, "utf-8", header_name=name).encode()
    words, lines, line = value.split(" "), [], f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > 78 and line != f"{name}:":
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    return ("\n".join(lines) + "\n").encode("utf-8")
