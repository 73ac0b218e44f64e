"""
Checks that ship with mailplat: small SMTP-stage filters, and examples of
how to write one (see docs/plugins.md).

    [checks]
    enabled = ["size", "junk"]

    [checks.size]                 # refuse big mail from outside early
    max_size = 10485760           # bytes

    [checks.junk]                 # file mail a spam filter flagged into Junk
    plugin = "header"
    header = "X-Spam-Flag"
    match = "^yes$"               # a regular expression, case-insensitive
    action = "folder"             # folder, reject or tempfail
    folder = "Junk"
"""

import re
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from mailplat.checks import Check, Verdict
from mailplat.plugin import BackendPlugin, Key

HEADER_LIMIT = 64 * 1024


class SizeCheck(Check):
    """Refuse messages over `max_size` at MAIL (from SIZE=) and at end of data."""

    name = "size"

    def __init__(self, max_size):
        self.max_size = max_size

    def _too_big(self):
        return Verdict.reject(f"message larger than {self.max_size} octets is refused here", 552, "5.3.4")

    def mail(self, session, sender):
        if session.size_hint is not None and session.size_hint > self.max_size:
            return self._too_big()
        return None

    def data(self, session, envelope, source):
        if source.size > self.max_size:
            return self._too_big()
        return None


def _size(section, context):
    unknown = set(section) - {"max_size"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}; known: max_size")
    value = section.get("max_size")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"max_size: a positive number of bytes is required, not {value!r}")
    return SizeCheck(value)


class HeaderCheck(Check):
    """At end of data: when header `header` matches `match`, act (folder, reject, tempfail)."""

    name = "header"

    def __init__(self, header, pattern, action, folder=None, text=None):
        self.header = header
        self.pattern = pattern
        self.action = action
        self.folder = folder
        self.text = text or f"refused by header rule on {header}"

    def _header_section(self, source):
        # Sources may return short reads (a prefix, then the spool file).
        head = b""
        with source.open() as f:
            while len(head) < HEADER_LIMIT and b"\n\n" not in head:
                chunk = f.read(HEADER_LIMIT - len(head))
                if not chunk:
                    break
                head += chunk
        end = head.find(b"\n\n")
        return head if end < 0 else head[: end + 1]

    def data(self, session, envelope, source):
        message = BytesHeaderParser(policy=default_policy).parsebytes(self._header_section(source))
        values = message.get_all(self.header) or []
        if not any(self.pattern.search(str(v).strip()) for v in values):
            return None
        if self.action == "folder":
            return Verdict.folder(self.folder)
        if self.action == "reject":
            return Verdict.reject(self.text, 550, "5.7.1")
        return Verdict.tempfail(self.text, 451, "4.7.1")


def _header(section, context):
    known = {"header", "match", "action", "folder", "text"}
    unknown = set(section) - known
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(known))}")
    header = section.get("header")
    if not isinstance(header, str) or not header or ":" in header:
        raise ValueError(f"header: a header field name is required, e.g. 'X-Spam-Flag', not {header!r}")
    try:
        pattern = re.compile(section.get("match", ""), re.I)
    except (re.error, TypeError) as e:
        raise ValueError(f"match: not a regular expression: {e}")
    action = section.get("action", "folder")
    if action not in ("folder", "reject", "tempfail"):
        raise ValueError(f"action: must be folder, reject or tempfail, not {action!r}")
    folder = section.get("folder", "Junk")
    if action == "folder" and (not isinstance(folder, str) or not folder):
        raise ValueError(f"folder: a folder name is required, not {folder!r}")
    return HeaderCheck(header, pattern, action, folder, section.get("text"))


size = BackendPlugin("check", "size", "Refuse messages over max_size bytes (at MAIL SIZE= and end of data)", _size,
                    keys={"max_size": Key(int, required=True, doc="the largest message taken, in bytes")})
header = BackendPlugin(
    "check", "header", "Act on a header matching a pattern: file into a folder (Junk), reject or tempfail", _header,
    keys={
        "header": Key(str, required=True, doc="the header field to look at, e.g. 'X-Spam-Flag'"),
        "match": Key(str, doc="a regular expression (case-insensitive); empty matches any value"),
        "action": Key(str, default="folder", doc="folder, reject or tempfail"),
        "folder": Key(str, default="Junk", doc="the folder for action = \"folder\""),
        "text": Key(str, doc="the reply text for reject and tempfail"),
    },
)
