"""
Reading one IMAP command's arguments (RFC 3501 9, formal syntax).

The server's framing collects a whole command first, literals included
(RFC 3501 4.3, RFC 7888 LITERAL+), so parsing here never waits for the
network: a command is a list of text segments with the literal payloads
between them, and a L{Reader} walks it token by token.
"""

import re

from twisted.mail import imap4

# RFC 3501 9: atom-specials are ( ) { SP CTL % * " \ ]
_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x20)) | {0x7F}
# ASTRING-CHAR = ATOM-CHAR / resp-specials (']')
_ASTRING_SPECIALS = _ATOM_SPECIALS - {ord("]")}
_LITERAL_AT_END = re.compile(rb"\{(\d{1,12})(\+?)\}$")


class BadCommand(Exception):
    """The command's syntax is wrong: answered with a tagged BAD."""


class InvalidName(BadCommand):
    """
    A mailbox name that is a valid astring but not valid modified UTF-7
    (RFC 3501 5.1.3): no mailbox has it, so the command gets a NO, not a
    BAD, and a LIST pattern of it matches nothing (as Dovecot answers).
    """


def literal_announced(line):
    """(size, non_synchronizing) when `line` ends with a literal, else None."""
    m = _LITERAL_AT_END.search(line)
    if m is None:
        return None
    return int(m.group(1)), m.group(2) == b"+"


class Reader:
    """Tokens of one command: text segments with literals between them."""

    def __init__(self, segments):
        # segments: [text, literal, text, literal, ..., text]
        self.segments = segments
        self.i = 0
        self.pos = 0

    @property
    def text(self):
        return self.segments[self.i]

    def peek(self):
        return self.text[self.pos : self.pos + 1]

    def at_end(self):
        return self.pos >= len(self.text) and self.i == len(self.segments) - 1

    def end(self):
        if not self.at_end():
            raise BadCommand("unexpected extra arguments")

    def space(self):
        if self.peek() != b" ":
            raise BadCommand("expected a space")
        self.pos += 1

    def maybe_space(self):
        if self.peek() == b" ":
            self.pos += 1
            return True
        return False

    def _run(self, specials, what):
        text, start = self.text, self.pos
        end = start
        while end < len(text) and text[end] not in specials:
            end += 1
        if end == start:
            raise BadCommand(f"expected {what}")
        self.pos = end
        return text[start:end]

    def atom(self, what="an atom"):
        return self._run(_ATOM_SPECIALS, what)

    def _literal(self):
        m = _LITERAL_AT_END.match(self.text, self.pos)
        if m is None or self.i + 1 >= len(self.segments):
            raise BadCommand("malformed literal")
        data = self.segments[self.i + 1]
        self.i += 2
        self.pos = 0
        return data

    def _quoted(self):
        text = self.text
        out = bytearray()
        i = self.pos + 1
        while i < len(text):
            c = text[i]
            if c == 0x5C:  # backslash: only \" and \\ are allowed (RFC 3501 9)
                if i + 1 >= len(text) or text[i + 1] not in b'"\\':
                    raise BadCommand("bad escape in quoted string")
                out.append(text[i + 1])
                i += 2
            elif c == 0x22:
                self.pos = i + 1
                return bytes(out)
            elif c in (0x0D, 0x0A):
                break
            else:
                out.append(c)
                i += 1
        raise BadCommand("unterminated quoted string")

    def string(self, what="a string"):
        c = self.peek()
        if c == b'"':
            return self._quoted()
        if c == b"{":
            return self._literal()
        raise BadCommand(f"expected {what}")

    def astring(self, what="a string"):
        if self.peek() in (b'"', b"{"):
            return self.string(what)
        return self._run(_ASTRING_SPECIALS, what)

    def nstring(self):
        if self.text[self.pos : self.pos + 3].upper() == b"NIL":
            self.pos += 3
            return None
        return self.string()

    def mailbox(self):
        """A mailbox name, decoded from modified UTF-7 (RFC 3501 5.1.3)."""
        raw = self.astring("a mailbox name")
        return decode_mailbox(raw)

    def list_mailbox(self):
        """LIST's pattern: ATOM-CHARs plus % * ] (RFC 3501 9 list-mailbox)."""
        if self.peek() in (b'"', b"{"):
            raw = self.string()
        else:
            raw = self._run(_ATOM_SPECIALS - set(b"%*]"), "a mailbox pattern")
        return decode_mailbox(raw)

    def number(self, what="a number"):
        token = self.atom(what)
        if not token.isdigit() or len(token) > 10 or int(token) > 0xFFFFFFFF:
            raise BadCommand(f"expected {what}")
        return int(token)

    def open_paren(self):
        if self.peek() != b"(":
            raise BadCommand("expected (")
        self.pos += 1

    def close_paren(self):
        if self.peek() != b")":
            raise BadCommand("expected )")
        self.pos += 1

    def paren_list(self, item):
        """( item SP item ... ); an empty list is allowed."""
        self.open_paren()
        out = []
        while self.peek() != b")":
            if self.at_end() or (self.pos >= len(self.text)):
                raise BadCommand("unbalanced parentheses")
            if out:
                self.space()
            out.append(item())
        self.pos += 1
        return out

    def flag(self):
        system = self.peek() == b"\\"
        if system:
            self.pos += 1
        raw = self.atom("a flag")
        # RFC 3501 9: flag-keyword is an atom, and atoms are 7-bit.
        if not raw.isascii():
            raise BadCommand("a flag is an ASCII atom")
        return ("\\" if system else "") + raw.decode("ascii")

    def flag_list(self):
        if self.peek() == b"(":
            return self.paren_list(self.flag)
        # RFC 3501 6.4.6 allows STORE's flags without parentheses.
        flags = [self.flag()]
        while self.peek() == b" ":
            self.pos += 1
            flags.append(self.flag())
        return flags

    def sequence_set(self):
        """The raw sequence set; resolved by L{parse_sequence_set}."""
        token = self._run(_ATOM_SPECIALS - {ord("*")}, "a sequence set")
        if token == b"$":
            return token  # RFC 5182 3: seq-last-command, the saved search result
        if not re.fullmatch(rb"(\d+|\*)(:(\d+|\*))?(,(\d+|\*)(:(\d+|\*))?)*", token):
            raise BadCommand(f"bad sequence set {token.decode('ascii', 'replace')!r}")
        for n in re.findall(rb"\d+", token):
            # nz-number is 32 bits (RFC 3501 9): at most 10 digits.
            if len(n) > 10 or int(n) == 0 or int(n) > 0xFFFFFFFF:
                raise BadCommand("bad sequence set: numbers start at 1")
        return token

    def rest(self):
        """The rest of the current text segment (FETCH attributes)."""
        out = self.text[self.pos :]
        self.pos = len(self.text)
        return out


def decode_mailbox(raw):
    try:
        return raw.decode("imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        raise InvalidName("mailbox name is not valid modified UTF-7")


def canonical_name(name, separator="."):
    """INBOX is case-insensitive (RFC 3501 5.1), and so is it as a parent."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX" + separator):
        name = "INBOX" + name[5:]
    return name


def encode_mailbox(name):
    return quote(name.encode("imap4-utf-7"))


def parse_sequence_set(token, largest):
    """
    Ranges of a checked sequence set, `*` standing for `largest`
    (RFC 3501 9 seq-number: `*` in an empty mailbox matches nothing).

    @return: a list of (low, high) with low <= high.
    """
    out = []
    for part in token.split(b","):
        low, _, high = part.partition(b":")
        a = largest if low == b"*" else int(low)
        b = a if not high else (largest if high == b"*" else int(high))
        if a > b:
            a, b = b, a
        out.append((a, b))
    return out


def in_ranges(n, ranges):
    return any(a <= n <= b for a, b in ranges)


_QUOTABLE = re.compile(rb"[\x20-\x7e]*")


def quote(value):
    """A string as IMAP sends it: quoted when it can be, a literal otherwise."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8")
    if len(value) < 1024 and _QUOTABLE.fullmatch(value):
        if b"\\" in value or b'"' in value:
            value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + value + b'"'
    return b"{%d}\r\n%s" % (len(value), value)


def parse_date(token):
    """SEARCH date (RFC 3501 9 date): d-Mon-yyyy -> (y, m, d)."""
    try:
        t = imap4.parseTime(token.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise BadCommand(f"bad date {token.decode('ascii', 'replace')!r}")
    return (t.tm_year, t.tm_mon, t.tm_mday)
