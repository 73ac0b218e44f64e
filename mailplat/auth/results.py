"""
The Authentication-Results header field (RFC 8601): writing ours, and
finding the ones that arrive claiming to be ours (RFC 8601 5: a message
must not reach the user with an Authentication-Results field of our
authserv-id that we did not write).

Every value that comes from the message or the DNS (addresses, domains,
reasons) goes through L{pvalue} or L{comment}, which keep printable ASCII
only: no CR or LF can end our field early and start a forged one.
"""

import re

_TOKEN_VALUE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@\-]+\Z")
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)", re.S)


def _printable(text):
    text = str(text)
    if text.isascii() and text.isprintable():  # the usual case: nothing to replace
        return text
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def pvalue(text):
    """A property value: as it is when it is a token/address, else a quoted-string (RFC 8601 2.2)."""
    text = _printable(text)[:255]
    if text and _TOKEN_VALUE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text):
    """A comment `(text)`, without anything that could end it early."""
    text = _printable(text)
    if "(" in text or ")" in text or "\\" in text:
        text = "".join(c for c in text if c not in "()\\")
    text = text[:120].strip()
    return f" ({text})" if text else ""


def result_clause(method, result, reason="", properties=()):
    """`method=result (reason) ptype.property=value ...`."""
    out = f"{method}={result}{comment(reason)}"
    for name, value in properties:
        if value:
            out += f" {name}={pvalue(value)}"
    return out


def header(authserv_id, clauses):
    """The whole field, folded one result per line, LF line ends (as the server stores mail)."""
    if not clauses:
        clauses = ["none"]  # RFC 8601 2.2: no method was applied
    return ("Authentication-Results: " + _printable(authserv_id) + ";\n\t" + ";\n\t".join(clauses) + "\n").encode("ascii")


def authserv_id(value):
    """The authserv-id an Authentication-Results field value names (comments and version left out)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    previous = None
    while previous != text:  # nested comments, innermost first
        previous, text = text, _COMMENT.sub(" ", text)
    first = text.split(";", 1)[0].strip()
    if first.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', first)
        return (m.group(1) if m else first.strip('"')).replace("\\", "")
    return first.split()[0] if first.split() else ""


def claiming(header_block, hostname):
    """
    The (start, end) byte ranges of the Authentication-Results fields in
    `header_block` (LF line ends, folded lines included) whose
    authserv-id is `hostname`, compared case-insensitively (RFC 8601 5).
    """
    ranges = []
    if b"authentication-results" not in header_block.lower():
        return ranges  # most messages: no such field at all
    hostname = hostname.lower().rstrip(".")
    pos = 0
    fields = []  # (start, end, raw field with its folded lines)
    for line in header_block.split(b"\n"):
        end = pos + len(line) + 1
        if line[:1] in (b" ", b"\t") and fields:
            s, _, raw = fields[-1]
            fields[-1] = (s, end, raw + b"\n" + line)
        elif line:
            fields.append((pos, end, line))
        pos = end
    for start, end, raw in fields:
        name, sep, value = raw.partition(b":")
        if sep and name.strip().lower() == b"authentication-results":
            if authserv_id(value).lower().rstrip(".") == hostname:
                ranges.append((start, min(end, len(header_block))))
    return ranges


def without(header_block, ranges):
    """`header_block` with the byte ranges taken out."""
    out, pos = [], 0
    for start, end in ranges:
        out.append(header_block[pos:start])
        pos = end
    out.append(header_block[pos:])
    return b"".join(out)
