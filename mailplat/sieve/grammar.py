"""
The Sieve grammar (RFC 5228 8): a script's text to a tree of L{Command}s.

Our own parser rather than sievelib's: sievelib validates arguments per
command against its own table (which lacks editheader, duplicate,
spamtest, include, ...) and reports errors without a column, while
ManageSieve must say where a script is wrong (RFC 5804 1.3). Checking a
command's arguments is the job of the extension that defines it
(L{mailplat.sieve.commands}); this module only knows the syntax:

    command   = identifier arguments (";" / block)
    arguments = *argument [test / test-list]
    argument  = string-list / number / tag
    test      = identifier arguments
    test-list = "(" test *("," test) ")"
    block     = "{" *command "}"

Limits keep a hostile script cheap to refuse: its size, the nesting of
blocks and tests, and the number of commands.
"""

import re

MAX_SCRIPT = 1024 * 1024  # octets (ManageSieve's HAVESPACE refuses more first)
MAX_NESTING = 32  # blocks and test lists inside each other
MAX_COMMANDS = 10000


class SieveSyntaxError(ValueError):
    """A script that does not parse; `line` and `column` start at 1."""

    def __init__(self, message, line, column):
        super().__init__(f"line {line}, column {column}: {message}")
        self.message, self.line, self.column = message, line, column


class Tag(str):
    """A tagged argument, `:name` (kept lowercase, without the colon)."""


class Command:
    """One command or test: its name, arguments, tests and block, and where it starts."""

    __slots__ = ("name", "arguments", "tests", "block", "line", "column")

    def __init__(self, name, line, column):
        self.name = name
        self.arguments = []  # str, [str], int, Tag
        self.tests = []  # Commands (a test, or a test list)
        self.block = None  # [Command] or None
        self.line, self.column = line, column

    def __repr__(self):
        return f"<{self.name} {self.arguments!r} {self.tests!r}{' {...}' if self.block is not None else ''}>"


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<hash>\#[^\n]*)
  | (?P<bracket>/\*.*?\*/)
  | (?P<multiline>text:[ \t]*(?:\#[^\n]*)?\r?\n)
  | (?P<quoted>"(?:[^"\\]|\\.)*")
  | (?P<number>[0-9]+[KkMmGg]?(?![A-Za-z0-9_]))
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<identifier>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<special>[;,()\[\]{}])
    """,
    re.X | re.S,
)
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_MULTILINE_END = re.compile(r"\r?\n\.\r?\n")


def tokens(text):
    """[(kind, value, line, column)] of a script; comments and white space dropped."""
    out = []
    pos, line, line_start = 0, 1, 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        column = pos - line_start + 1
        if m is None:
            if text.startswith("/*", pos):
                raise SieveSyntaxError("comment not closed", line, column)
            if text[pos] == '"':
                raise SieveSyntaxError("string not closed", line, column)
            raise SieveSyntaxError(f"unexpected character {text[pos]!r}", line, column)
        kind = m.lastgroup
        end = m.end()
        if kind == "multiline":
            # RFC 5228 2.4.2: lines up to one holding only ".", dot-stuffed.
            close = _MULTILINE_END.search(text, end - 1)
            if close is None:
                raise SieveSyntaxError("text: block not closed with a line holding only '.'", line, column)
            body = text[end : close.start() + 1] if close.start() >= end else ""
            body = "".join(x[1:] if x.startswith("..") else x for x in body.splitlines(True))
            out.append(("string", body, line, column))
            end = close.end()
        elif kind == "quoted":
            value = re.sub(r"\\(.)", r"\1", m.group(kind)[1:-1], flags=re.S)  # RFC 5228 2.4.2
            out.append(("string", value, line, column))
        elif kind == "number":
            digits = m.group(kind)
            unit = _UNITS.get(digits[-1].lower(), 1)
            out.append(("number", int(digits.rstrip("KkMmGg")) * unit, line, column))
        elif kind == "tag":
            out.append(("tag", Tag(m.group(kind)[1:].lower()), line, column))
        elif kind == "identifier":
            out.append(("identifier", m.group(kind).lower(), line, column))
        elif kind == "special":
            out.append((m.group(kind), m.group(kind), line, column))
        chunk = text[pos:end]
        newlines = chunk.count("\n")
        if newlines:
            line += newlines
            line_start = pos + chunk.rindex("\n") + 1
        pos = end
    out.append(("end", None, line, pos - line_start + 1))
    return out


class _Parser:
    def __init__(self, toks):
        self.toks = toks
        self.i = 0
        self.count = 0

    def peek(self):
        return self.toks[self.i]

    def take(self, kind=None, what=None):
        tok = self.toks[self.i]
        if kind is not None and tok[0] != kind:
            raise self.error(f"expected {what or kind}, found {self.describe(tok)}", tok)
        self.i += 1
        return tok

    @staticmethod
    def describe(tok):
        kind, value = tok[0], tok[1]
        if kind == "end":
            return "the end of the script"
        if kind == "string":
            return "a string"
        if kind == "number":
            return f"the number {value}"
        if kind == "tag":
            return f"the tag :{value}"
        if kind == "identifier":
            return f"'{value}'"
        return f"'{value}'"

    @staticmethod
    def error(message, tok):
        return SieveSyntaxError(message, tok[2], tok[3])

    def commands(self, depth, closing):
        out = []
        while True:
            tok = self.peek()
            if tok[0] == closing:
                return out
            if tok[0] != "identifier":
                raise self.error(f"expected a command, found {self.describe(tok)}", tok)
            out.append(self.command(depth))

    def command(self, depth):
        name = self.take("identifier")
        self.count += 1
        if self.count > MAX_COMMANDS:
            raise self.error(f"more than {MAX_COMMANDS} commands", name)
        cmd = Command(name[1], name[2], name[3])
        self.arguments(cmd, depth)
        tok = self.peek()
        if tok[0] == ";":
            self.take()
        elif tok[0] == "{":
            if depth + 1 > MAX_NESTING:
                raise self.error(f"blocks nested deeper than {MAX_NESTING}", tok)
            self.take()
            cmd.block = self.commands(depth + 1, "}")
            self.take("}", "'}'")
        else:
            raise self.error(f"expected ';' or a block after '{cmd.name}', found {self.describe(tok)}", tok)
        return cmd

    def arguments(self, cmd, depth):
        while True:
            tok = self.peek()
            kind = tok[0]
            if kind == "string":
                cmd.arguments.append(self.take()[1])
            elif kind == "number":
                cmd.arguments.append(self.take()[1])
            elif kind == "tag":
                cmd.arguments.append(self.take()[1])
            elif kind == "[":
                cmd.arguments.append(self.string_list())
            else:
                break
        tok = self.peek()
        if tok[0] == "identifier":
            cmd.tests.append(self.test(depth + 1))
        elif tok[0] == "(":
            if depth + 1 > MAX_NESTING:
                raise self.error(f"tests nested deeper than {MAX_NESTING}", tok)
            self.take()
            cmd.tests.append(self.test(depth + 1))
            while self.peek()[0] == ",":
                self.take()
                cmd.tests.append(self.test(depth + 1))
            self.take(")", "')' or ','")

    def test(self, depth):
        if depth > MAX_NESTING:
            raise self.error(f"tests nested deeper than {MAX_NESTING}", self.peek())
        name = self.take("identifier", "a test")
        self.count += 1
        if self.count > MAX_COMMANDS:
            raise self.error(f"more than {MAX_COMMANDS} commands", name)
        test = Command(name[1], name[2], name[3])
        self.arguments(test, depth)
        return test

    def string_list(self):
        self.take("[")
        out = [self.take("string", "a string")[1]]
        while self.peek()[0] == ",":
            self.take()
            out.append(self.take("string", "a string")[1])
        self.take("]", "']' or ','")
        return out


def parse(text):
    """
    The commands of a script (str, or UTF-8 bytes).

    @raise SieveSyntaxError: with the line and column of the first error.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_SCRIPT:
            raise SieveSyntaxError(f"script larger than {MAX_SCRIPT} octets", 1, 1)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            before = text[: e.start]
            line = before.count(b"\n") + 1
            raise SieveSyntaxError("not valid UTF-8", line, e.start - (before.rfind(b"\n") + 1) + 1) from None
    elif len(text) > MAX_SCRIPT:
        raise SieveSyntaxError(f"script larger than {MAX_SCRIPT} octets", 1, 1)
    p = _Parser(tokens(text))
    out = p.commands(0, "end")
    return out
