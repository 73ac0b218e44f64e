"""
The mbox file format as mailplat reads and writes it: mboxrd.

Each message is a `From <sender> <asctime>` line, the message with every
line matching `>*From ` given one more `>` (so `From x` is stored `>From x`
and `>From x` is stored `>>From x`: reading removes one and gives the
bytes back exactly), and a blank line. Any line starting `From ` is a
separator, as Python's mailbox.mbox and the mboxrd description read it;
Content-Length is never trusted.

Flags live in headers, as mutt and Dovecot's mbox driver keep them:
`Status:` R = \\Seen, O = old (not new to mutt); `X-Status:` A = \\Answered,
F = \\Flagged, T = \\Draft, D = \\Deleted; `X-Keywords:` keyword names.
Those headers, with X-UID, X-IMAPbase, X-IMAP and Content-Length, are the
store's own: hidden from IMAP and POP3 (Dovecot's mbox_hide_headers) and
stripped from incoming mail, so a sender can't set a reader's flags.

Pure functions over bytes; no I/O.
"""

import calendar
import hashlib
import re
import time

SEPARATOR = b"From "
HIDDEN = frozenset({b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imapbase", b"x-imap", b"content-length"})
# Left out of the fingerprint too: mutt rewrites them when it syncs a file.
_UNSTABLE = HIDDEN | {b"lines"}
_QUOTE = re.compile(rb"^(>*From )", re.M)
_UNQUOTE = re.compile(rb"^>(>*From )", re.M)

# X-Status letters (Dovecot's mbox_xstatus_flags; mutt reads A, D, F).
XSTATUS = (("A", "\\Answered"), ("D", "\\Deleted"), ("F", "\\Flagged"), ("T", "\\Draft"))
_XSTATUS_FLAG = dict(XSTATUS)

_DATE = re.compile(
    rb"([A-Z][a-z]{2}) +([A-Z][a-z]{2}) +(\d{1,2}) +(\d{1,2}):(\d\d)(?::(\d\d))?"
    rb"(?: +([A-Z]{1,5}|[+-]\d{4}))? +(\d{4})(?: +([+-]\d{4}))?"
)
_MONTHS = {m: i + 1 for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())}


def quote(data):
    """mboxrd: one more '>' before every line matching '>*From '."""
    if b"From " not in data:
        return data
    return _QUOTE.sub(rb">\1", data)


def unquote(data):
    if b">From " not in data:
        return data
    return _UNQUOTE.sub(rb"\1", data)


def from_line(sender, when):
    """`From sender asctime` in local time, as mutt, procmail and Dovecot write it."""
    sender = "".join(c for c in (sender or "") if 0x21 <= ord(c) <= 0x7E) or "MAILER-DAEMON"
    return b"From %s %s\n" % (sender.encode("ascii"), time.asctime(time.localtime(when)).encode("ascii"))


def parse_date(line):
    """The date of a From_ line as seconds since the epoch, or None."""
    m = _DATE.search(line)
    if not m or m.group(2) not in _MONTHS:
        return None
    mon, day, hh, mm = _MONTHS[m.group(2)], int(m.group(3)), int(m.group(4)), int(m.group(5))
    ss, year = int(m.group(6) or 0), int(m.group(8))
    zone = m.group(9) or (m.group(7) if m.group(7) and m.group(7)[:1] in b"+-" else None)
    try:
        if zone:
            offset = (int(zone[1:3]) * 60 + int(zone[3:5])) * 60 * (-1 if zone[:1] == b"-" else 1)
            return calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0)) - offset
        return int(time.mktime((year, mon, day, hh, mm, ss, 0, 0, -1)))
    except (ValueError, OverflowError):
        return None


def sender_of(content):
    """The envelope sender from a leading Return-Path header (what delivery puts on top)."""
    if content[:12].lower() != b"return-path:":
        return "MAILER-DAEMON"
    line = content[12 : content.find(b"\n")].strip()
    address = line.strip(b"<>").decode("ascii", "replace")
    return address or "MAILER-DAEMON"


def _header_end(content):
    """Offset just past the header section's last line (before the blank line)."""
    if content.startswith(b"\n"):
        return 0
    end = content.find(b"\n\n")
    return len(content) if end < 0 else end + 1


def _fields(header):
    """[(lower-case name, raw lines)] of a header section; continuation lines join their field."""
    out = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line)
        else:
            out.append((line.split(b":", 1)[0].strip().lower() if b":" in line else b"", line))
    return out


def strip_hidden(content):
    """The message without the store's own headers (what a sender may not set)."""
    end = _header_end(content)
    header = content[:end]
    lower = header.lower()
    if not any(name + b":" in lower for name in HIDDEN):
        return content
    kept = b"".join(raw for name, raw in _fields(header) if name not in HIDDEN)
    return kept + content[end:]


def flags_from_fields(fields):
    """(IMAP flags, old) from the Status / X-Status / X-Keywords of a message."""
    flags, old = set(), False
    for name, raw in fields:
        if name not in (b"status", b"x-status", b"x-keywords"):
            continue
        value = raw.split(b":", 1)[1].decode("utf-8", "replace")
        if name == b"status":
            if "R" in value:
                flags.add("\\Seen")
            if "O" in value:
                old = True
        elif name == b"x-status":
            flags.update(_XSTATUS_FLAG[c] for c in value if c in _XSTATUS_FLAG)
        else:
            flags.update(w for w in value.replace(",", " ").split() if not w.startswith("\\"))
    return frozenset(flags), old


def flag_lines(flags, old=False):
    """Status / X-Status / X-Keywords lines for `flags` (none for a new unflagged message)."""
    out = []
    status = ("R" if "\\Seen" in flags else "") + ("O" if old or "\\Seen" in flags else "")
    if status:
        out.append(b"Status: " + status.encode() + b"\n")
    x = "".join(letter for letter, flag in XSTATUS if flag in flags)
    if x:
        out.append(b"X-Status: " + x.encode() + b"\n")
    keywords = sorted(f for f in flags if not f.startswith("\\"))
    if keywords:
        out.append(b"X-Keywords: " + " ".join(keywords).encode("utf-8") + b"\n")
    return b"".join(out)


def render(content, sender, when, flags=()):
    """
    One message as it goes into the file: From_ line, the message (store
    headers removed, ours added at the end of the header), quoted, and the
    blank separator line. A message is made to end with a line end.
    """
    content = strip_hidden(content)
    if not content.endswith(b"\n"):
        content += b"\n"
    extra = flag_lines(flags)
    if extra:
        end = _header_end(content)
        content = content[:end] + extra + content[end:]
    return from_line(sender, when) + quote(content) + b"\n"


def with_flags(region, flags, old):
    """A stored message (From_ line to separator) with its flag headers replaced."""
    nl = region.find(b"\n") + 1
    head, content = region[:nl], region[nl:]
    end = _header_end(content)
    kept = b"".join(raw for name, raw in _fields(content[:end]) if name not in (b"status", b"x-status", b"x-keywords"))
    return head + kept + flag_lines(flags, old) + content[end:]


class Parsed:
    """What a scan learns about one stored message."""

    __slots__ = ("offset", "end", "size", "flags", "old", "date", "fingerprint", "xuid", "imapbase")

    def __init__(self, offset, end, size, flags, old, date, fingerprint, xuid=None, imapbase=None):
        self.offset = offset
        self.end = end
        self.size = size
        self.flags = flags
        self.old = old
        self.date = date
        self.fingerprint = fingerprint
        self.xuid = xuid
        self.imapbase = imapbase


def _content(region):
    """(From_ line, the message as stored) of a region: the separator's blank line removed."""
    nl = region.find(b"\n") + 1 or len(region)
    content = region[nl:]
    if content.endswith(b"\n\n"):
        content = content[:-1]
    return region[:nl], content


def view(region):
    """The message as IMAP and POP3 serve it (LF line ends): store headers hidden, unquoted."""
    _, content = _content(region)
    end = _header_end(content)
    header = content[:end]
    lower = header.lower()
    if any(name + b":" in lower for name in HIDDEN):
        header = b"".join(raw for name, raw in _fields(header) if name not in HIDDEN)
    return unquote(header + content[end:])


def crlf_size(data):
    """RFC822.SIZE: octets with CRLF line ends."""
    n = data.count(b"\n")
    if b"\r" in data:
        n -= data.count(b"\r\n")
    return len(data) + n


def parse(region, offset):
    """A L{Parsed} for one region (From_ line to the next one)."""
    head, content = _content(region)
    end = _header_end(content)
    fields = _fields(content[:end])
    flags, old = flags_from_fields(fields)
    xuid = imapbase = None
    visible = []
    for name, raw in fields:
        if name == b"x-uid":
            value = raw.split(b":", 1)[1].strip()
            xuid = int(value) if value.isdigit() else None
        elif name == b"x-imapbase":
            imapbase = raw.split(b":", 1)[1].split()
        if name not in _UNSTABLE:
            visible.append(raw)
    body = content[end:]
    header = b"".join(raw for name, raw in fields if name not in HIDDEN)
    size = crlf_size(unquote(header + body))
    digest = hashlib.blake2b(digest_size=10)
    digest.update(head)
    digest.update(b"".join(visible))
    digest.update(b"%d|" % len(body))
    digest.update(body[:512])
    digest.update(body[-512:])
    return Parsed(offset, offset + len(region), size, flags, old, parse_date(head), digest.hexdigest(), xuid, imapbase)


def split(data, start=0):
    """
    [(offset, end)] of the messages in `data` (bytes or mmap) from `start`,
    which must be at a From_ line or before the first one (leading junk,
    such as blank lines, is skipped).
    """
    size = len(data)
    if data[start : start + 5] == SEPARATOR:
        pos = start
    else:
        hit = data.find(b"\nFrom ", start)
        if hit < 0:
            return []
        pos = hit + 1
    out = []
    while pos < size:
        hit = data.find(b"\nFrom ", pos + 1)
        nxt = size if hit < 0 else hit + 1
        out.append((pos, nxt))
        pos = nxt
    return out
