"""
Reverse- and forward-path parsing (RFC 5321 4.1.2), with UTF-8 mailboxes
when the client asked for SMTPUTF8 (RFC 6531 3.3).

Twisted's Address class is ASCII-only and lenient in odd places; this is
the grammar, with two common leniencies: a path without angle brackets,
and a space after the colon (`MAIL FROM: <a@b>`).
"""

import re

# RFC 5321 4.1.2 atext, plus any non-ASCII character (UTF-8) under RFC 6531.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_UATEXT = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])"
_QTEXT = r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])'
_UQTEXT = r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e]|[^\x00-\x7f])'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ULABEL = r"(?:[A-Za-z0-9]|[^\x00-\x7f])(?:(?:[A-Za-z0-9-]|[^\x00-\x7f]){0,61}(?:[A-Za-z0-9]|[^\x00-\x7f]))?"
_LITERAL = r"\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9]{1,3}(?:\.[0-9]{1,3}){3})\]"


def _mailbox(atext, qtext, label):
    local = rf"(?:{atext}+(?:\.{atext}+)*|\"{qtext}*\")"
    domain = rf"(?:{label}(?:\.{label})*\.?|{_LITERAL})"
    return re.compile(rf"({local})@({domain})")


_ASCII = _mailbox(_ATEXT, _QTEXT, _LABEL)
_UTF8 = _mailbox(_UATEXT, _UQTEXT, _ULABEL)
# An optional source route (RFC 5321 4.1.2 A-d-l), which we ignore.
_ROUTE = re.compile(r"^@[^:,]+(?:,@[^:,]+)*:")


class PathError(ValueError):
    pass


def split_path(argument):
    """
    'FROM:<a@b> SIZE=10' -> ('<a@b>', 'SIZE=10'). `argument` is str (the
    text after MAIL / RCPT); the keyword is checked by the caller.
    """
    argument = argument.lstrip()
    if argument.startswith("<"):
        end = argument.find(">")
        if end < 0:
            raise PathError("missing '>'")
        return argument[: end + 1], argument[end + 1 :].strip()
    path, _, params = argument.partition(" ")
    return path, params.strip()


def parse_path(path, utf8=False, allow_null=False):
    """
    Parse a path; return the mailbox as 'local@domain' ('' for <>).

    @raise PathError: saying what is wrong.
    """
    if path.startswith("<"):
        if not path.endswith(">"):
            raise PathError("missing '>'")
        path = path[1:-1]
    if path == "":
        if allow_null:
            return ""
        raise PathError("empty address")
    route = _ROUTE.match(path)
    if route:
        path = path[route.end() :]
    if len(path.encode("utf-8")) > 256:  # RFC 5321 4.5.3.1.3
        raise PathError("address too long")
    if not path.isascii() and not utf8:
        raise PathError("non-ASCII address needs the SMTPUTF8 parameter")
    m = (_UTF8 if utf8 else _ASCII).fullmatch(path)
    if not m:
        raise PathError(f"not a valid address: {path}")
    local, domain = m.group(1), m.group(2).rstrip(".")
    if len(local.encode("utf-8")) > 64:  # RFC 5321 4.5.3.1.1
        raise PathError("local part too long")
    if local.startswith('"'):
        inner = re.sub(r"\\(.)", r"\1", local[1:-1])
        if re.fullmatch(_UATEXT + r"+(?:\." + _UATEXT + r"+)*", inner):
            local = inner  # quoting that was not needed (RFC 5321 4.1.2)
    return f"{local}@{domain.lower()}"
