"""
What a Sieve script sees of a message: its header fields decoded (RFC
5228 2.7.2: RFC 2047 encoded words taken out before comparing), the
addresses of its address fields, its size and its envelope.
"""

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


class SieveMessage:
    """One message for one run: header fields, size, envelope and the body on demand."""

    def __init__(self, data, envelope_from="", envelope_to="", size=None):
        self.data = data
        end = data.find(b"\n\n")
        crlf = data.find(b"\r\n\r\n")
        if crlf >= 0 and (end < 0 or crlf < end):
            head, self._body_at = data[:crlf], crlf + 4
        elif end >= 0:
            head, self._body_at = data[:end], end + 2
        else:
            head, self._body_at = data, len(data)
        self._fields = _fields(head)
        self.size = len(data) if size is None else size
        self.envelope_from = envelope_from or ""
        self.envelope_to = envelope_to or ""
        self._parsed = None

    def headers(self, name):
        """The decoded values of every `name` field, in order (RFC 5228 5.7)."""
        name = name.lower()
        return [decode_words(v) for n, v in self._fields if n == name]

    def raw_headers(self, name):
        name = name.lower()
        return [v for n, v in self._fields if n == name]

    def has(self, name):
        name = name.lower()
        return any(n == name for n, _ in self._fields)

    def addresses(self, name):
        """The addr-specs of every `name` field (RFC 5228 5.1); a group's members are its addresses."""
        out = []
        for value in self.raw_headers(name):
            out += self.addresses_of(value)
        return out

    @staticmethod
    def addresses_of(value):
        """The addr-specs of one field's value."""
        return [address for display, address in email.utils.getaddresses([value]) if address or display]

    def body_text(self):
        """The message as text/plain parts for the body test (decoded transfer encodings)."""
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
    """[(lowercase name, unfolded value as text)] of a header block."""
    out = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and out:
            name, value = out[-1]
            out[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(b":")
        if colon:
            out.append((name.strip().lower(), value))
    return [
        (name.decode("ascii", "replace"), value.strip().decode("utf-8", "replace"))
        for name, value in out
    ]
