"""
RFC 5322 3.4 address lists as IMAP sees them: for ENVELOPE (RFC 3501
7.4.2) and for SEARCH FROM/TO/CC/BCC.

email.utils.getaddresses drops group syntax and routes and keeps comments
inside addresses; this parser keeps what ENVELOPE needs, and is as lenient
as Dovecot's with what real mail holds:

- a group is its start marker (NIL NIL "name" NIL), its members, and its
  end marker (NIL NIL NIL NIL), even when empty (`undisclosed:;`);
- a route (`<@route:user@domain>`) is kept, as RFC 3501 asks;
- comments are dropped, except that a mailbox with no display name takes
  the comment after it as its name (`user@domain (Real Name)`);
- a word with no `@` is a mailbox with no host.
"""

# One address: (name, route, mailbox, host); None where absent.
GROUP_END = (None, None, None, None)

_SPECIALS = "()<>[]:;@\\,.\""
_SPACE = " \t\r\n"


def _tokens(value):
    """[(kind, text)]: kind is 'atom', 'quoted', 'comment', 'literal' or the special character."""
    out = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in _SPACE:
            i += 1
        elif c == '"':
            i += 1
            text = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                text.append(value[i])
                i += 1
            i += 1
            out.append(("quoted", "".join(text)))
        elif c == "(":
            depth, i, text = 1, i + 1, []
            while i < n and depth:
                ch = value[i]
                if ch == "\\" and i + 1 < n:
                    i += 1
                    ch = value[i]
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if not depth:
                        i += 1
                        break
                text.append(ch)
                i += 1
            out.append(("comment", " ".join("".join(text).split())))
        elif c == "[":
            end = value.find("]", i)
            end = n if end < 0 else end + 1
            out.append(("literal", value[i:end]))
            i = end
        elif c in _SPECIALS:
            out.append((c, c))
            i += 1
        else:
            start = i
            while i < n and value[i] not in _SPECIALS and value[i] not in _SPACE:
                i += 1
            out.append(("atom", value[start:i]))
    return out


_WORDS = ("atom", "quoted", "literal", ".")


class _Parser:
    def __init__(self, value):
        self.toks = _tokens(value)
        self.pos = 0
        self.comment = None  # the last comment skipped

    def peek(self):
        while self.pos < len(self.toks) and self.toks[self.pos][0] == "comment":
            self.comment = self.toks[self.pos][1] or self.comment
            self.pos += 1
        return self.toks[self.pos][0] if self.pos < len(self.toks) else None

    def take(self):
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def words(self):
        """The words (and dots) up to a special: [(kind, text)]."""
        out = []
        while self.peek() in _WORDS:
            out.append(self.take())
        return out

    def until(self, stops):
        """Raw text of the tokens up to one of `stops` (not taken)."""
        out = []
        while self.peek() is not None and self.peek() not in stops:
            out.append(self.take()[1])
        return "".join(out)


def _phrase(words):
    """A display name: words joined by one space, a dot stuck to the word before."""
    out = ""
    for kind, text in words:
        if kind == "." or not out:
            out += text
        else:
            out += " " + text
    return out or None


def _dotted(words):
    return "".join(text for _, text in words) or None


def parse(value):
    """An address-list header value -> [(name, route, mailbox, host)] with group markers."""
    p = _Parser(value)
    out = []
    in_group = False
    while p.peek() is not None:
        p.comment = None
        words = p.words()
        kind = p.peek()
        if kind == ":" and not in_group:
            p.take()
            out.append((None, None, _phrase(words) or "", None))
            in_group = True
            continue
        if kind == "<":
            p.take()
            route = None
            if p.peek() == "@":
                route = p.until((":", ">")) or None
                if p.peek() == ":":
                    p.take()
            local = _dotted(p.words())
            host = None
            if p.peek() == "@":
                p.take()
                host = p.until((">", ",", ";"))
            if p.peek() == ">":
                p.take()
            p.comment = None
            p.peek()
            # RFC 5322 obs: with no phrase, a comment after the address names it.
            name = _phrase(words) or p.comment
            if local or host:
                out.append((name, route, local, host))
        elif kind == "@":
            p.take()
            p.comment = None
            host = _dotted(p.words())
            p.peek()
            out.append((p.comment, None, _dotted(words), host))  # `user@domain (Real Name)`
        elif words:
            out.append((p.comment, None, _dotted(words), None))
        kind = p.peek()
        if kind == ";":
            p.take()
            if in_group:
                out.append(GROUP_END)
                in_group = False
        elif kind is not None:
            p.take()  # the comma, or junk that starts no address
    if in_group:
        out.append(GROUP_END)
    return out


def search_text(value):
    """
    What SEARCH FROM/TO/CC/BCC match against besides the raw value: each
    address as `name <mailbox@host>` and each group's name, with the
    comments and spaces inside addresses gone (Dovecot matches the same).
    """
    out = []
    for name, _, local, host in parse(value):
        if local is None and host is None:
            continue
        address = f"{local or ''}@{host}" if host is not None else (local or "")
        out.append(f"{name} <{address}>" if name else address)
    return "\n".join(out)
