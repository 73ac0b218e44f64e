"""
What SORT and THREAD (RFC 5256) compare of a message, computed once from
its header and kept in the folder's cache beside ENVELOPE.

- strings compare under i;unicode-casemap (RFC 5051), so each key is
  kept already mapped and plain `<` orders them;
- the base subject is extracted exactly as RFC 5256 2.1 says, and whether
  that took a reply or forward marker off (for THREAD=REFERENCES, 4);
- the sent date is the Date field in UTC, or None when it is missing or
  unreadable (RFC 5256 2.2: the INTERNALDATE is used then, which the
  index knows without opening the file);
- the Message-ID and the references THREAD=REFERENCES links by.

A folder's cache holds one list per message under L{FIELD}; the first
SORT or THREAD that needs a header reads the messages that lack it, a
batch at a time in the thread pool, and none after that.
"""

import base64
import binascii
import calendar
import email.utils
import json
import re
import unicodedata

from twisted.internet import defer, threads

from mailplat.imap import fetch, mime
from mailplat.imap.envelope_pool import elsewhere

# The cache field; a new layout of the list gets a new name.
FIELD = "sort1"
# Positions in the list.
DATE, SUBJECT, REPLY, FROM, TO, CC, DISPLAYFROM, DISPLAYTO, MESSAGE_ID, REFERENCES = range(10)
# For a message that can't be read now: it still sorts, by the index's data.
EMPTY = (None, "", 0, "", "", "", "", "", None, ())

BATCH = 200  # messages read per trip to the thread pool
POOL_BATCH = 1000  # messages asked of the envelope processes at once
IN_FLIGHT = 2  # batches read at once: one is parsed while the next is read
HEADER_CHUNK = 16384


# --- i;unicode-casemap (RFC 5051) --------------------------------------------


def collate(text):
    """
    RFC 5051 2: each character to its simple titlecase, then NFKD; the
    results compare as UTF-8 octets do, which is code point order, so
    Python's `<` on them is the collation.
    """
    if text.isascii():
        return text.upper()  # ASCII's titlecase is its upper case; NFKD changes nothing
    out = []
    for ch in text:
        t = ch.title()
        out.append(t if len(t) == 1 else ch)  # only the simple (one to one) mappings
    return unicodedata.normalize("NFKD", "".join(out))


# --- RFC 2047 encoded words ----------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?\s]*)\?=")
_SPACES = re.compile(r"[ \t\r\n]+")


def _decode_word(m):
    charset = m.group(1).split("*", 1)[0]  # RFC 2231 5: charset*language
    text = m.group(3).encode("ascii", "replace")
    try:
        if m.group(2) in "qQ":
            raw = binascii.a2b_qp(text, header=True)
        else:
            raw = base64.b64decode(text + b"=" * (-len(text) % 4))
        return raw.decode(charset, "replace")
    except (LookupError, ValueError, binascii.Error):
        return m.group(0)  # a charset we don't know: the word as it is


def decode_words(value):
    """
    RFC 2047 6.2: encoded words decoded, the white space between two
    adjacent ones dropped; raw 8-bit text taken as UTF-8.
    """
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if "=?" not in value:
        return value
    out, pos, after_word = [], 0, False
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos : m.start()]
        if not (after_word and not between.strip(" \t\r\n")):
            out.append(between)
        out.append(_decode_word(m))
        after_word, pos = True, m.end()
    out.append(value[pos:])
    return "".join(out)


# --- base subject (RFC 5256 2.1) -------------------------------------------------

# After step (1) the only white space left is single spaces.
_BLOB = r"\[[^\[\]]*\] *"  # subj-blob = "[" *BLOBCHAR "]" *WSP
_REFWD = r"(?:re|fwd?) *(?:" + _BLOB + r")?:"  # subj-refwd
_LEADER = re.compile(r"(?:" + _BLOB + r")*" + _REFWD, re.I)  # subj-leader but WSP
_BLOB_PREFIX = re.compile(_BLOB)


def base_subject(value):
    """
    RFC 5256 2.1: the base subject of a Subject field's value, and whether
    the extraction removed a subj-refwd, a "(fwd)" trailer or a
    subj-fwd-hdr and subj-fwd-trl (a reply or forward, RFC 5256 4).
    Not yet collated.
    """
    # (1) encoded words to UTF-8; tabs, continuations and runs of spaces to one space
    s = _SPACES.sub(" ", decode_words(value))
    reply = False
    while True:
        # (2) subj-trailer = "(fwd)" / WSP, removed until none is left
        while True:
            if s.endswith(" "):
                s = s.rstrip(" ")
            elif s[-5:].lower() == "(fwd)":
                s = s[:-5]
                reply = True
            else:
                break
        # (5) repeat (3) and (4) until neither matches
        while True:
            # (3) subj-leader = (*subj-blob subj-refwd) / WSP
            while True:
                if s.startswith(" "):
                    s = s.lstrip(" ")
                    continue
                m = _LEADER.match(s)
                if m is None:
                    break
                s = s[m.end() :]
                reply = True
            # (4) a leading subj-blob, when what follows is a non-empty subj-base
            m = _BLOB_PREFIX.match(s)
            if m is None or not s[m.end() :].strip(" "):
                break
            s = s[m.end() :]
        # (6) subj-fwd-hdr ... subj-fwd-trl: unwrapped, then again from (2)
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        # (7)
        return s, reply


# --- sent date (RFC 5256 2.2) ----------------------------------------------------


def sent_date(value):
    """The Date field's value as seconds since the epoch, UTC; None if missing or unreadable."""
    if not value:
        return None
    try:
        t = email.utils.parsedate_tz(value)
        if t is None:
            return None
        # No zone is -0000: the time is taken as UTC (RFC 5322 3.3).
        return calendar.timegm((t[0], t[1], t[2], t[3], t[4], t[5], 0, 1, 0)) - (t[9] or 0)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def sent(info, keys):
    """RFC 5256 2.2: the sent date, or the INTERNALDATE when it can't be determined."""
    date = keys[DATE]
    return info.internaldate if date is None else date


# --- addresses ---------------------------------------------------------------------


def first_address(value):
    """(name, route, mailbox, host) of a field's first address (a group's start marker too), or None."""
    if not value:
        return None
    addresses = mime._addresses(value)  # ENVELOPE's parser, with its fast path for the common forms
    return addresses[0] if addresses else None


def mailbox_key(first):
    """
    RFC 5256 3 FROM / TO / CC: the addr-mailbox of the first address (a
    group's name when the list starts with a group, as in its ENVELOPE
    address), collated; "" when there is none.
    """
    if first is None or first[2] is None:
        return ""
    return collate(decode_words(first[2]))


def display_key(first):
    """
    RFC 5957 2 DISPLAYFROM / DISPLAYTO: the first address's display name,
    RFC 2047 decoded, when it has a non-empty one, else its addr-spec
    (mailbox@host, or the group's name); collated; "" when there is none.
    """
    if first is None:
        return ""
    name, _, mailbox, host = first
    if name:
        name = _SPACES.sub(" ", decode_words(name)).strip(" ")
    if not name:
        name = f"{mailbox or ''}@{host}" if host else (mailbox or "")
    return collate(name)


# --- message IDs (RFC 5256 4, REFERENCES) -------------------------------------------

_MSG_ID = re.compile(r"<([^<>]*)>")


def message_ids(value):
    """The valid msg-ids of a field (`<left@right>`, folding taken out), in order."""
    if not value:
        return []
    out = []
    for m in _MSG_ID.finditer(value):
        ident = "".join(m.group(1).split())
        left, at, right = ident.rpartition("@")
        if at and left and right:
            out.append(ident)
    return out


# --- the cached list ------------------------------------------------------------------


_FIELDS = frozenset((b"date", b"subject", b"from", b"to", b"cc", b"message-id", b"references", b"in-reply-to"))


def keys_of_header(header):
    """The list kept under FIELD for a message whose header (bytes, any line ends) is given."""
    # The first of each, as ENVELOPE takes (mime.first_values: one pass over the header).
    values = {name: v.decode("utf-8", "surrogateescape") for name, v in mime.first_values(header, _FIELDS).items()}
    get = values.get
    subject, reply = base_subject(get(b"subject") or "")
    ids = message_ids(get(b"message-id"))
    # RFC 5256 4: the References field's IDs, or else the first of In-Reply-To's.
    references = message_ids(get(b"references")) or message_ids(get(b"in-reply-to"))[:1]
    sender, recipient = first_address(get(b"from")), first_address(get(b"to"))
    return [
        sent_date(get(b"date")),
        collate(subject),
        1 if reply else 0,
        mailbox_key(sender),
        mailbox_key(recipient),
        mailbox_key(first_address(get(b"cc"))),
        display_key(sender),
        display_key(recipient),
        ids[0] if ids else None,
        references,
    ]


def _read_header(f):
    """The header of an open message file (LF or CRLF), read only as far as it goes."""
    data = bytearray()
    while True:
        start = max(len(data) - 2, 0)  # the blank line may straddle two reads
        chunk = f.read(HEADER_CHUNK)
        if not chunk:
            return bytes(data)
        data += chunk
        if data[:1] == b"\n" or data[:2] == b"\r\n":
            return b""  # no header at all
        ends = [e for e in (data.find(b"\n\n", start), data.find(b"\n\r\n", start)) if e >= 0]
        if ends:
            return bytes(data[: min(ends) + 1])


def _read_keys(files):
    """In a thread: the keys of each open file (closed after), None where it failed."""
    out = []
    for f in files:
        if f is None:
            out.append(None)
            continue
        try:
            with f:
                header = _read_header(f)
            out.append(keys_of_header(header))
        except OSError:
            out.append(None)  # gone meanwhile (expunged by another writer)
        except Exception:
            fetch.report_broken(f)  # this message sorts as if it had no header
            out.append(None)
    return out


def message_keys(folder, uids, open_batch, pool=None):
    """
    The sort keys of `uids`: Deferred firing with {uid: list}, from the
    folder's cache where it has them, else read from the messages (and
    cached). `open_batch(uids)` opens files as the session does for FETCH;
    `pool`, the envelope processes (L{mailplat.imap.envelope_pool}), read
    them on other cores when the folder's files have paths.
    """
    found, missing = {}, []
    for u in uids:
        keys = folder.cached(u, FIELD)
        if keys is None:
            missing.append(u)
        else:
            found[u] = keys
    if not missing:
        return defer.succeed(found)

    def in_threads(chunk):
        return open_batch(chunk).addCallback(lambda files: threads.deferToThread(_read_keys, files))

    paths_of = getattr(folder, "message_paths", None) if pool is not None else None
    size = BATCH
    if paths_of is not None and pool.available and len(missing) >= 2 * BATCH:
        size = POOL_BATCH
    else:
        paths_of = None

    def read(chunk):
        if paths_of is not None and pool.available:
            d = elsewhere(pool.sort_keys, paths_of, chunk, in_threads, json.loads)
        else:
            d = in_threads(chunk)

        def got(results):
            for u, keys in zip(chunk, results):
                if keys is None:
                    found[u] = EMPTY  # unreadable now: not cached, tried again next time
                else:
                    folder.cache(u, FIELD, keys)
                    found[u] = keys

        return d.addCallback(got)

    limit = defer.DeferredSemaphore(IN_FLIGHT)
    reads = [limit.run(read, missing[i : i + size]) for i in range(0, len(missing), size)]
    d = defer.gatherResults(reads, consumeErrors=True)
    d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
    return d.addCallback(lambda _: found)
