"""
Fuzzing the three protocols (issue 17, "Done when"): valid IMAP, SMTP and
POP3 commands, mutated with random bytes, each get their answer; none
leaves a traceback in the log or a path or exception in a reply; and the
server still serves a normal session afterwards.

Every run is seeded and bounded by a number of cases, never by time. A
case is exactly one line ending in CRLF. Nothing generated changes the
framing or waits for more input: no IMAP literal at a line's end, no
AUTHENTICATE, IDLE, APPEND, STARTTLS or LOGOUT; no SMTP DATA, BDAT, AUTH,
STARTTLS or QUIT; no POP3 STLS, AUTH or QUIT. A few lines are over the
line limit on purpose and must get the documented "too long" error.

The server may close a session after too many errors (RFC 5321 4.5.3.2's
"hard error limit", IMAP's and POP3's own), but only once it has answered:
a close is accepted only right after an error answer, and the command
that met the close is sent again on a new session.

A failure names the seed, store, protocol, session state and the exact
bytes of each line that went wrong (and, for a logged failure, the line
being answered when it was logged): each is a one-line reproducer.
"""

import poplib
import random
import re
import smtplib
import socket

from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.helpers import LineClient, MailServer, in_thread

USER, PASSWORD = "alice@example.test", "pw"
LISTENERS = ("smtp", "submission", "imap", "pop3")
# Fuzzed logins fail by the hundred: no tarpit, no lock-out, no connection cap
# to wait for, so that no answer depends on time.
EXTRA = """
[tls]
allow_plaintext_auth = true

[limits]
auth_failure_delay = 0
auth_failures = 1000000
connections_per_ip = 1000
"""

ANSWER_TIMEOUT = 15  # seconds for one answer: generous, never reached when all is well
MAX_SILENT = 3  # unanswered commands before a run gives up (each costs ANSWER_TIMEOUT)

# Line limits: mailplat.config LIMIT_KEYS line_length (SMTP, IMAP) and
# mailplat.pop3.server.MAX_LINE; generated lines stay well under them.
SMTP_LINE, IMAP_LINE, POP3_LINE = 16 * 1024, 16 * 1024, 1024
OVER_LONG = 40 * 1024

# Text no reply may carry: a traceback, a source file, a filesystem path,
# an exception's class name.
LEAKS = [b"Traceback", b'File "', b"/work", b"/tmp/", b"/home/", b".py\"", b"site-packages"]
EXCEPTION_NAME = re.compile(rb"\b[A-Z][A-Za-z]*(Error|Exception)\b")

MESSAGES = [
    b"From: Bob <bob@elsewhere.test>\r\nTo: alice@example.test\r\nSubject: plain\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nline one\r\n.dot line\r\nline three\r\n",
    b"From: bob@elsewhere.test\r\nTo: alice@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
    b"--outer\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n"
    b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
    b"--inner\r\nContent-Type: text/plain\r\n\r\nalt one\r\n"
    b"--inner\r\nContent-Type: text/html\r\n\r\n<p>alt two</p>\r\n--inner--\r\n"
    b"--outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--outer--\r\n",
    b"From: bob@elsewhere.test\r\nTo: alice@example.test\r\nSubject: 8bit \xc3\xa9t\xc3\xa9\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"caf\xc3\xa9\r\n" + b"long line " * 50 + b"\r\n",
]


# --- mutation ----------------------------------------------------------------

HOSTILE = [
    b"\x00", b"\xff", b"\xfe\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\x7f", b"\x1b[0m", b"\t",
    b"(", b")", b"((", b"))", b"[", b"]", b"<", b">", b'"', b'\\"', b"\\", b"{", b"}", b"{5}",
    b"{0+}", b"*", b"%", b":", b",", b".", b"-", b"+", b"=", b"@", b" ", b"  ", b"NIL", b"0",
    b"-1", b"4294967295", b"4294967296", b"18446744073709551616", b"\\Seen", b"\\Deleted",
    b"%s%n%x", b"../", b"&", b"&AMk-", b"&-", b"&Jjo", b"~{", b"\xe2\x80\xae", b"1e99",
]


def huge(rng):
    return rng.choice([b"9" * 19, b"9" * 20, b"1" + b"0" * 20, b"9" * 300, b"9" * 5000, b"0" * 40 + b"1"])


def deep(rng, inner=b""):
    n = rng.choice([8, 60, 400, 2000])
    return b"(" * n + inner + (b")" * n if rng.random() < 0.7 else b"")


def random_bytes(rng, n):
    return bytes(rng.randrange(256) for _ in range(n))


def mutate(rng, text):
    """
    `text` with one to three random edits; a third of the cases stay valid,
    and half of the others keep their command word, to reach the parsers
    of the arguments.
    """
    r = rng.random()
    if r < 0.35:
        return text
    verb, space, rest = text.partition(b" ")
    if r < 0.65 and rest:
        return verb + space + _edit(rng, rest)
    return _edit(rng, text)


def _edit(rng, text):
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        pos = rng.randint(0, len(text))
        op = rng.randrange(8)
        if op == 0:
            text = text[:pos] + random_bytes(rng, rng.randint(1, 8)) + text[pos:]
        elif op == 1:
            end = min(len(text), pos + rng.randint(1, 6))
            text = text[:pos] + random_bytes(rng, end - pos or 1) + text[end:]
        elif op == 2:
            text = text[:pos]
        elif op == 3:
            text = text[:pos] + rng.choice(HOSTILE) + text[pos:]
        elif op == 4:
            text = text[:pos] + huge(rng) + text[pos:]
        elif op == 5:
            text = text[:pos] + deep(rng, rng.choice((b"", b"ALL", b"FLAGS", b"x"))) + text[pos:]
        elif op == 6:
            end = min(len(text), pos + rng.randint(1, 10))
            text = text[:pos] + text[end:]
        else:
            end = min(len(text), pos + rng.randint(1, 12))
            text = text[:end] + text[pos:end] * rng.randint(1, 20) + text[end:]
    return text


def one_line(text, limit):
    """One line: no CR or LF inside, and under `limit` octets."""
    return text.replace(b"\r", b"").replace(b"\n", b"")[: limit - 100]


def pick(rng, weighted):
    """A generator from [(weight, function)] pairs."""
    total = sum(w for w, _ in weighted)
    r = rng.uniform(0, total)
    for w, f in weighted:
        r -= w
        if r <= 0:
            return f
    return weighted[-1][1]


# --- IMAP grammar ---------------------------------------------------------------

# SELECT targets and COPY targets never overlap: a COPY into the selected
# folder would double it at every case.
SELECTABLE = [b"INBOX", b'"INBOX"', b"inbox", b"Sent", b'"Sent"', b"Drafts", b"Nope", b'"a b"',
              b"&AMk-t&AOk-", b'"../../etc/passwd"', b"INBOX.x", b'""', b"%", b"*", b"~alice", b"/"]
COPY_TARGETS = [b"Trash", b'"Trash"', b"Junk", b"Missing", b'"Trash/x"', b"&Jjo-", b'"Archive"']
FETCH_ATTS = [b"FLAGS", b"UID", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE",
              b"BODY", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT", b"FLAGS", b"UID", b"X-JUNK"]
SECTIONS = [b"", b"HEADER", b"TEXT", b"1", b"2", b"3", b"1.1", b"2.1", b"2.2", b"3.TEXT", b"1.2.3",
            b"1.MIME", b"2.MIME", b"3.HEADER", b"999", b"0", b"1.0", b"MIME", b"TEXT.1", b"2.2.1",
            b"3.1", b"4294967296"]
HEADER_FIELDS = [b"SUBJECT", b"FROM", b"TO", b"DATE", b"Content-Type", b"X-NONE", b'"Subject"', b'""',
                 b"NIL", b"a:b", b"X-caf\xc3\xa9", b"\xff", b"\x00"]
PARTIALS = [b"", b"", b"", b"<0.10>", b"<5.100>", b"<0.0>", b"<4294967295.1>", b"<1.4294967296>", b"<10>"]
SIMPLE_KEYS = [b"ALL", b"ANSWERED", b"DELETED", b"FLAGGED", b"NEW", b"OLD", b"RECENT", b"SEEN",
               b"UNSEEN", b"DRAFT", b"UNDRAFT", b"UNANSWERED", b"UNDELETED", b"UNFLAGGED"]
STRING_KEYS = [b"BCC", b"BODY", b"CC", b"FROM", b"SUBJECT", b"TEXT", b"TO", b"KEYWORD", b"UNKEYWORD"]
DATE_KEYS = [b"BEFORE", b"ON", b"SINCE", b"SENTBEFORE", b"SENTON", b"SENTSINCE"]
STRINGS = [b"x", b'"line one"', b'""', b"plain", b'"\\"q\\""', b"\xc3\xa9", b"NIL", b'"caf\xc3\xa9"',
           b"alt", b'"%"', b"*"]
DATES = [b"1-Jan-2020", b"31-Dec-1999", b'"2-Feb-2024"', b"30-Feb-2020", b"1-Foo-2020",
         b"99-Jan-99999", b"01-Jan-2024", b"1-jan-1900"]
FLAGS = [b"\\Seen", b"\\Flagged", b"\\Answered", b"\\Draft", b"\\Deleted", b"\\Recent", b"$Junk",
         b"kw", b"\\Bogus", b"NonJunk"]


def imap_seqset(rng):
    """A sequence set: mostly within the folder, sometimes out of it or out of 32 bits."""
    def item():
        r = rng.random()
        if r < 0.85:
            return rng.choice((b"1", b"2", b"3", b"*", b"1:*", b"2:3", b"3:1", b"*:1", b"1,2,3", b"2:*"))
        if r < 0.97:
            return rng.choice((b"0", b"4", b"4294967295", b"4294967296", b"1:4294967295", b"0:*"))
        return huge(rng)

    return b",".join(item() for _ in range(rng.choice((1, 1, 1, 2, 3))))


def imap_fetch_att(rng):
    if rng.random() < 0.5:
        return rng.choice(FETCH_ATTS)
    body = rng.choice((b"BODY", b"BODY.PEEK", b"BODY", b"BODY.PEEK", b"BINARY.PEEK"))  # no BINARY: BAD
    if rng.random() < 0.3:
        fields = b" ".join(rng.sample(HEADER_FIELDS, rng.randint(0, 3)))
        part = rng.choice((b"", b"", b"2.", b"3.", b"1."))
        section = part + rng.choice((b"HEADER.FIELDS (", b"HEADER.FIELDS.NOT (")) + fields + b")"
    else:
        section = rng.choice(SECTIONS)
    return body + b"[" + section + b"]" + rng.choice(PARTIALS)


def imap_fetch_items(rng):
    if rng.random() < 0.15:
        return rng.choice((b"ALL", b"FAST", b"FULL"))
    items = [imap_fetch_att(rng) for _ in range(rng.randint(1, 6))]
    if len(items) == 1 and rng.random() < 0.5:
        return items[0]
    return b"(" + b" ".join(items) + b")"


def imap_search_key(rng, depth=0):
    r = rng.random()
    if depth > 4 or r < 0.35:
        return rng.choice(SIMPLE_KEYS)
    if r < 0.55:
        return rng.choice(STRING_KEYS) + b" " + rng.choice(STRINGS)
    if r < 0.62:
        return rng.choice(DATE_KEYS) + b" " + rng.choice(DATES)
    if r < 0.66:
        return rng.choice((b"LARGER ", b"SMALLER ")) + rng.choice((b"10", b"0", b"4294967296", huge(rng)))
    if r < 0.70:
        return b"HEADER " + rng.choice(HEADER_FIELDS) + b" " + rng.choice(STRINGS)
    if r < 0.76:
        return rng.choice((b"UID ", b"")) + imap_seqset(rng)
    if r < 0.84:
        return b"NOT " + imap_search_key(rng, depth + 1)
    if r < 0.92:
        return b"OR " + imap_search_key(rng, depth + 1) + b" " + imap_search_key(rng, depth + 1)
    keys = [imap_search_key(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    return b"(" + b" ".join(keys) + b")"


def imap_search(rng):
    charset = rng.choice((b"", b"", b"", b"CHARSET UTF-8 ", b"CHARSET US-ASCII ", b"CHARSET X-NONE "))
    keys = b" ".join(imap_search_key(rng) for _ in range(rng.randint(1, 3)))
    return b"SEARCH " + charset + keys


def imap_store(rng):
    item = rng.choice((b"FLAGS", b"+FLAGS", b"-FLAGS", b"FLAGS.SILENT", b"+FLAGS.SILENT", b"-FLAGS.SILENT"))
    flags = rng.sample(FLAGS, rng.randint(0, 3))
    value = b"(" + b" ".join(flags) + b")" if rng.random() < 0.8 or not flags else flags[0]
    return b"STORE " + imap_seqset(rng) + b" " + item + b" " + value


def imap_login(rng):
    return b"LOGIN " + rng.choice((
        b"alice@example.test pw", b'"alice@example.test" "pw"', b"alice@example.test wrong",
        b"bob@example.test pw", b"alice@example.test", b'"" ""', b'alice@example.test "p\\"w"',
        b"ALICE@EXAMPLE.TEST pw", b"alice pw",
    ))


def imap_status(rng):
    items = rng.sample([b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"SIZE", b"X"],
                       rng.randint(0, 4))
    return b"STATUS " + rng.choice(SELECTABLE + COPY_TARGETS) + b" (" + b" ".join(items) + b")"


def imap_list(rng):
    verb = rng.choice((b"LIST", b"LIST", b"LSUB"))
    ref = rng.choice((b'""', b"INBOX", b'"."', b"~"))
    pattern = rng.choice((b"*", b"%", b'"*"', b"INBOX", b"INBOX.%", b"*%*%*%*", b"&AMk-*", b'""'))
    tail = rng.choice((b"", b"", b" RETURN (STATUS (MESSAGES UNSEEN))", b" RETURN (SPECIAL-USE)"))
    select = rng.choice((b"", b"", b"", b"(SPECIAL-USE) ", b"(SUBSCRIBED) "))
    if verb == b"LSUB":
        select = tail = b""
    return verb + b" " + select + ref + b" " + pattern + tail


def imap_id(rng):
    return b"ID " + rng.choice((b"NIL", b'("name" "fuzz" "version" "1")', b'("name" NIL)', b"()", b'("a")'))


def imap_uid(f):
    return lambda rng: b"UID " + f(rng)


def _imap_fetch(rng):
    return b"FETCH " + imap_seqset(rng) + b" " + imap_fetch_items(rng)


def _imap_copy(rng):
    return b"COPY " + imap_seqset(rng) + b" " + rng.choice(COPY_TARGETS)


def _const(text):
    return lambda rng: text


IMAP_SELECTED = [
    (25, _imap_fetch), (10, imap_uid(_imap_fetch)), (15, imap_search), (5, imap_uid(imap_search)),
    (8, imap_store), (4, imap_uid(imap_store)), (4, _imap_copy), (2, imap_uid(_imap_copy)),
    (3, lambda rng: b"SELECT " + rng.choice(SELECTABLE)), (3, lambda rng: b"EXAMINE " + rng.choice(SELECTABLE)),
    (5, imap_status), (5, imap_list), (2, _const(b"NOOP")), (2, _const(b"CAPABILITY")), (2, imap_id),
    (1, _const(b"CHECK")), (1, _const(b"NAMESPACE")), (1, imap_login), (1, _const(b"ENABLE UTF8=ACCEPT")),
]
IMAP_BEFORE_LOGIN = [
    (10, imap_login), (3, _const(b"CAPABILITY")), (3, _const(b"NOOP")), (3, imap_id),
    (2, lambda rng: b"SELECT " + rng.choice(SELECTABLE)), (2, _imap_fetch), (1, imap_search), (1, imap_status),
]
# Commands that change the framing, wait for more input, end the session
# or remove mail (then later cases would test less).
IMAP_NEVER = {b"IDLE", b"LOGOUT", b"AUTHENTICATE", b"APPEND", b"STARTTLS", b"CLOSE", b"EXPUNGE",
              b"MOVE", b"DELETE", b"RENAME", b"CREATE", b"UNSELECT", b"DONE"}
_IMAP_ATOM = re.compile(rb'[^\x00-\x20(){%*"\\\]\x7f]*')
_LITERAL_AT_END = re.compile(rb"\{\d+\+?\}$")  # as mailplat.imap.parser: a literal follows


def imap_allowed(command):
    """False for a generated command the fuzzer must not send (see IMAP_NEVER)."""
    if _LITERAL_AT_END.search(command):
        return False
    words = []
    rest = command
    for _ in range(2):
        word = _IMAP_ATOM.match(rest).group(0)
        words.append(word.upper())
        rest = rest[len(word) + 1 :]
    if words[0] == b"UID":
        return words[1] not in IMAP_NEVER
    return words[0] not in IMAP_NEVER


def imap_case(rng, grammar):
    while True:
        command = one_line(mutate(rng, pick(rng, grammar)(rng)), IMAP_LINE)
        if imap_allowed(command):
            return command


# --- SMTP grammar ----------------------------------------------------------

SMTP_DOMAINS = [b"client.test", b"[127.0.0.1]", b"[IPv6:::1]", b"x", b"caf\xc3\xa9.test", b"a..b",
                b"-bad-.test", b"[999.1.1.1]", b"[IPv6:zz]", b"a" * 300 + b".test"]
SMTP_PATHS = [b"<alice@example.test>", b"<bob@elsewhere.test>", b"<>", b"<postmaster>", b"<Postmaster>",
              b'<"quoted local"@example.test>', b"<@relay.test,@b.test:alice@example.test>",
              b"<alice@[127.0.0.1]>", b"alice@example.test", b"<j\xc3\xb6rg@example.test>", b"<a@b@c>",
              b"<" + b"a" * 70 + b"@example.test>", b"<alice@example.test", b"< alice@example.test >",
              b"<alice+tag@example.test>", b"<alice@EXAMPLE.TEST.>", b'<"a\\"b"@example.test>']
MAIL_PARAMS = [b"SIZE=100", b"SIZE=-1", b"SIZE=99999999999999999999", b"SIZE", b"SIZE=1_0",
               b"BODY=8BITMIME", b"BODY=7BIT", b"BODY=BINARYMIME", b"BODY=junk", b"SMTPUTF8",
               b"SMTPUTF8=yes", b"AUTH=<>", b"AUTH=alice@example.test", b"RET=FULL", b"ENVID=x", b"=x",
               b"X-\xc3\xa9=1"]


def smtp_mail(rng):
    params = b"".join(b" " + p for p in rng.sample(MAIL_PARAMS, rng.choice((0, 0, 1, 2, 3))))
    if rng.random() < 0.1:
        params += b" SIZE=" + huge(rng)
    return rng.choice((b"MAIL FROM:", b"mail from:", b"MAIL FROM: ", b"MAIL FROM")) + rng.choice(SMTP_PATHS) + params


def smtp_rcpt(rng):
    params = rng.choice((b"", b"", b" NOTIFY=NEVER", b" ORCPT=rfc822;x@y", b" X=1"))
    return rng.choice((b"RCPT TO:", b"rcpt to:", b"RCPT TO: ")) + rng.choice(SMTP_PATHS) + params


SMTP_GRAMMAR = [
    (6, lambda rng: rng.choice((b"EHLO ", b"HELO ", b"ehlo ")) + rng.choice(SMTP_DOMAINS)),
    (14, smtp_mail), (14, smtp_rcpt), (4, _const(b"RSET")),
    (3, lambda rng: b"NOOP" + rng.choice((b"", b" anything"))),
    (3, lambda rng: b"VRFY " + rng.choice(SMTP_PATHS)),
    (2, lambda rng: b"HELP" + rng.choice((b"", b" MAIL", b" \xff"))),
    (1, lambda rng: b"EXPN " + rng.choice((b"staff", b"<x@y>"))), (1, _const(b"TURN")),
]
SMTP_NEVER = {b"DATA", b"BDAT", b"AUTH", b"STARTTLS", b"QUIT"}


def smtp_case(rng):
    while True:
        line = one_line(mutate(rng, pick(rng, SMTP_GRAMMAR)(rng)), SMTP_LINE)
        # The verb as the server reads it (mailplat.smtp.server MailplatSMTP._line).
        parts = line.strip().split(None, 1)
        if not parts or parts[0].upper() not in SMTP_NEVER:
            return line


# --- POP3 grammar ----------------------------------------------------------

def pop3_number(rng):
    if rng.random() < 0.15:
        return huge(rng)
    if rng.random() < 0.6:
        return rng.choice((b"1", b"2", b"3"))
    return rng.choice((b"0", b"-1", b"4", b"01", b"+1", b"1.5", b"0x1", b"\xd9\xa1", b"1_0",
                       b"18446744073709551617", b"9223372036854775808", b" 1"))


POP3_GRAMMAR = [
    (3, lambda rng: b"USER " + rng.choice((b"alice@example.test", b"bob@example.test", b"", b"a b", b"\xff"))),
    (3, lambda rng: b"PASS " + rng.choice((b"pw", b"wrong", b"", b"p w", b"\x00"))),
    (4, _const(b"STAT")), (5, lambda rng: b"LIST" + rng.choice((b"", b" ")) + pop3_number(rng)),
    (2, _const(b"LIST")), (5, lambda rng: b"UIDL " + pop3_number(rng)), (2, _const(b"UIDL")),
    (6, lambda rng: b"TOP " + pop3_number(rng) + b" " + pop3_number(rng)),
    (6, lambda rng: b"RETR " + pop3_number(rng)), (4, lambda rng: b"DELE " + pop3_number(rng)),
    (2, _const(b"NOOP")), (2, _const(b"RSET")), (2, _const(b"CAPA")), (1, _const(b"APOP alice x")),
    (1, _const(b"TOP")), (1, _const(b"RETR 1 2")),
]
POP3_NEVER = {b"STLS", b"AUTH", b"QUIT"}


def pop3_words(line):
    """(verb, arguments) as the server splits them (mailplat.pop3.server MailplatPOP3._dispatch)."""
    parts = line.split(b" ")
    return parts[0].upper(), [a for a in parts[1:] if a]


def pop3_case(rng):
    while True:
        line = one_line(mutate(rng, pick(rng, POP3_GRAMMAR)(rng)), POP3_LINE)
        if pop3_words(line)[0] not in POP3_NEVER:
            return line


def pop3_multiline(line):
    """Whether a +OK answer to `line` is followed by lines up to a dot (RFC 1939 3, RFC 2449 5)."""
    verb, args = pop3_words(line)
    return verb in (b"CAPA", b"RETR", b"TOP") or (verb in (b"LIST", b"UIDL") and not args)


# --- the corpus -----------------------------------------------------------------
#
# Each run starts with these lines, unmutated, before its random ones: the
# hostile inputs of issue 17 and the findings of this fuzzer (as lines
# without their tag), so that a regression fails whatever the seed draws.

IMAP_CORPUS = [
    b"SEARCH " + b"(" * 400 + b"ALL" + b")" * 400,
    b"SEARCH " + b"NOT " * 400 + b"ALL",
    b"FETCH " + b"9" * 5000 + b" FLAGS",
    b"UID STORE 1:" + b"9" * 5000 + b" FLAGS ()",
    b"SEARCH LARGER " + b"9" * 5000,
    b"STORE 1 +FLAGS (\xff\xfe)",
    b"FETCH 1 BODY[]<\xff.1>",
    b"FETCH 1:* BODY.PEEK[HEADER.FIELDS (\xff)]",
    b"FETCH 1:* BODY.PEEK[1.HEADER.FIELDS.NOT (X-caf\xc3\xa9)]",
    b"SEARCH HEADER \xff x",
    b'STATUS "\xc3\xa9" (MESSAGES)',
    b'LIST "" "&Jjo*"',
    b'COPY 1:* "../../../etc"',
    b"ID (" + b'"k" "v" ' * 200 + b")",
]
IMAP_CORPUS_BEFORE_LOGIN = [
    b"LOGIN \xff \xff",
    b"LOGIN " + b"a" * 8000 + b" pw",
    b'LOGIN "alice@example.test" "p\\w"',
    b"ID " + b"(" * 400,
    b"CAPABILITY \x00",
    b"SELECT INBOX",
]
SMTP_CORPUS = [
    b"MAIL FROM:<bob@elsewhere.test> SIZE=" + b"9" * 5000,
    b"MAIL FROM:<\xff@elsewhere.test>",
    b"RCPT TO:<alice@example.test> NOTIFY=" + b"9" * 5000,
    b"EHLO " + b"\xff" * 200,
    b"MAIL FROM:<@a,@b,@c:bob@elsewhere.test> BODY=8BITMIME SMTPUTF8",
    b"RCPT TO:<" + b"a" * 1000 + b"@example.test>",
    b"VRFY \x00",
    b"HELP " + b"(" * 1000,
]
POP3_CORPUS = [
    b"LIST " + b"9" * 900,
    b"RETR 18446744073709551617",
    b"TOP 1 9223372036854775808",
    b"TOP 1 -5",
    b"DELE -1",
    b"UIDL 0",
    b"USER",
    b"PASS \xff",
]


# --- the client side -----------------------------------------------------------


class Closed(Exception):
    """The server closed (or reset) the connection."""


class Silent(Exception):
    """No answer within ANSWER_TIMEOUT."""


class Wire(LineClient):
    """L{LineClient} that reads exact octet counts and says Closed / Silent."""

    def __init__(self, port):
        super().__init__(port, timeout=ANSWER_TIMEOUT)

    def _recv(self):
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise Silent()
        except OSError as e:
            raise Closed(str(e))
        if not chunk:
            raise Closed("connection closed by the server")
        return chunk

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Closed(str(e))

    def line(self):
        while b"\r\n" not in self.buffer:
            self.buffer += self._recv()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def exactly(self, n):
        while len(self.buffer) < n:
            self.buffer += self._recv()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


class Run:
    """
    One protocol's fuzz run: `cases` lines from a seeded generator, sent in
    lockstep (one line out, its whole answer in), and what went wrong.

    Subclasses give connect() (a new session, its state in `self.state`),
    case(i) (the i-th line) and exchange(c, line) -> (error, restart): the
    answer was an error answer; the client wants a new session.
    """

    protocol = None

    def __init__(self, server, seed, cases):
        self.server = server
        self.seed = seed
        self.cases = cases
        self.rng = random.Random(seed)  # the lines
        self.sessions = random.Random(seed + 1)  # the kind of each session, apart from the lines
        self.state = "connecting"
        self.findings = []
        self.silent = 0
        self.sent = 0
        self.answered = 0
        self.connections = 0
        self.control = 0
        self.current = None  # (protocol, state, line) for the log observer
        self.tally = {}  # kind of answer -> count, for the summary
        self.leaks = LEAKS + [server.dir.encode()]

    def finding(self, line, what):
        shown = repr(line) if len(line) < 200 else f"{line[:120]!r}... ({len(line)} octets)"
        self.findings.append(f"{self.protocol} [{self.state}] {shown}: {what}")

    def check_reply(self, line, data):
        for leak in self.leaks:
            if leak in data:
                self.finding(line, f"reply shows {leak!r}: {data[:300]!r}")
                return
        m = EXCEPTION_NAME.search(data)
        if m:
            self.finding(line, f"reply names an exception ({m.group(0)!r}): {data[:300]!r}")

    def count(self, kind):
        kind = kind.decode("ascii", "replace") if isinstance(kind, bytes) else str(kind)
        self.tally[kind] = self.tally.get(kind, 0) + 1

    def send(self, c, line):
        self.sent += 1
        self.current = (self.protocol, self.state, line)
        c.send(line + b"\r\n")

    def run(self):
        c, after_error, retried = None, False, False
        i, line = 0, self.case(0)
        while i < self.cases and self.silent < MAX_SILENT:
            if c is None:
                self.connections += 1
                try:
                    c = self.connect()
                except (Closed, Silent) as e:
                    self.finding(b"", f"new session failed: {e!r}")
                    return
                after_error = False
            try:
                after_error, restart = self.exchange(c, line)
                self.answered += 1
            except Closed as e:
                c.close()
                c = None
                if after_error and not retried:
                    # The server's error limit, right after an error answer:
                    # allowed; the line goes again on a new session.
                    retried = True
                    continue
                self.finding(line, f"connection closed without an answer ({e})")
            except Silent:
                self.silent += 1
                self.finding(line, f"no answer within {ANSWER_TIMEOUT} s")
                c.close()
                c = None
            else:
                if restart:
                    c.close()
                    c = None
            i += 1
            retried = False
            if i < self.cases:
                line = self.case(i)
        if c is not None:
            c.close()
        if self.silent >= MAX_SILENT:
            self.findings.append(f"{self.protocol}: gave up after {self.silent} unanswered commands")


# --- IMAP -------------------------------------------------------------------

_SERVER_LITERAL = re.compile(rb"\{(\d+)\}$")
_TAGGED = re.compile(rb"(OK|NO|BAD)( |$)")


def imap_response_line(c):
    """One response line, its literals (RFC 3501 4.3) read and joined in."""
    line = c.line()
    while True:
        m = _SERVER_LITERAL.search(line)
        if m is None:
            return line
        line += b"\r\n" + c.exactly(int(m.group(1))) + c.line()


def imap_until(c, tag, lines):
    """
    Read into `lines` every response line up to and including the tagged
    one; its status (OK, NO, BAD; None when malformed), or b"+" when the
    server asks for a continuation instead. One command is in flight at a
    time, so a line tagged otherwise than `tag` is still its answer (and
    the caller's finding).
    """
    while True:
        line = imap_response_line(c)
        lines.append(line)
        if line.startswith(b"+"):
            return b"+"
        if not line.startswith(b"* "):
            answered = line.split(b" ", 1)[0]
            m = _TAGGED.match(line, len(answered) + 1)
            return m.group(1) if m else None


# Not tags (RFC 3501 9: tag = 1*<any ASTRING-CHAR except "+">): answered untagged.
JUNK_TAGS = [b"", b" ", b"*", b"+", b"a+b", b"(x", b'"q"', b"%", b"\\x", b"\x00", b"\xff",
             b"{3}a", b"t\x7f", b"\t", b"a{b", b"a)"]


class IMAPRun(Run):
    def __init__(self, server, seed, cases, logged_in):
        super().__init__(server, seed, cases)
        self.protocol = "IMAP" if logged_in else "IMAP before login"
        self.logged_in = logged_in
        self.grammar = IMAP_SELECTED if logged_in else IMAP_BEFORE_LOGIN

    def command(self, c, command, expect=b"OK"):
        """An unfuzzed command of our own; it must be answered `expect`."""
        self.control += 1
        tag = b"C%d" % self.control
        line = tag + b" " + command
        self.send(c, line)
        lines = []
        status = imap_until(c, tag, lines)
        for l in lines:
            self.check_reply(line, l)
        if status != expect or not lines[-1].startswith(tag + b" "):
            raise AssertionError(f"{self.protocol} [{self.state}] {line!r}: expected {expect!r}, got {lines[-3:]!r}")
        return lines

    def connect(self):
        c = Wire(self.server.port("imap"))
        self.state = "greeting"
        greeting = c.line()
        if not greeting.startswith(b"* OK"):
            raise AssertionError(f"IMAP greeting {greeting!r}")
        self.state = "not logged in"
        if self.logged_in:
            self.command(c, b"LOGIN alice@example.test pw")
            self.state = "logged in"
            self.command(c, b"SELECT INBOX")
            self.state = "INBOX selected"
        return c

    def case(self, i):
        corpus = IMAP_CORPUS if self.logged_in else IMAP_CORPUS_BEFORE_LOGIN
        if i < len(corpus):
            return b"F%d " % i + corpus[i]
        r = self.rng.random()
        if r < 0.01:
            return b"X%d SEARCH " % i + b"TEXT x " * (OVER_LONG // 7)  # over the line limit
        if r < 0.05:
            junk = self.rng.choice(JUNK_TAGS)
            if r < 0.04:
                junk = one_line(junk + b" " + imap_case(self.rng, self.grammar), IMAP_LINE)
            return junk
        # "]" is an ASTRING-CHAR, so it may be part of a tag (RFC 3501 9).
        tag = b"F%d]" % i if r < 0.06 else b"F%d" % i
        return tag + b" " + imap_case(self.rng, self.grammar)

    def exchange(self, c, line):
        tag = line.split(b" ", 1)[0]
        if not re.fullmatch(rb"[FX][0-9]+\]?", tag):
            return self.junk_tag(c, line)
        self.send(c, line)
        lines = []
        status = imap_until(c, tag, lines)
        self.count(status)
        for l in lines:
            self.check_reply(line, l)
        if status == b"+":
            self.finding(line, f"server asked for a continuation: {lines[-1]!r}")
            return True, True  # the framing is lost: a new session
        if not lines[-1].startswith(tag + b" "):
            self.finding(line, f"answered with another tag: {lines[-1]!r}")
        elif status is None:
            self.finding(line, f"malformed tagged answer {lines[-1]!r}")
        if tag.startswith(b"X") and not (status == b"BAD" and b"too long" in lines[-1]):
            self.finding(line, f"answered {lines[-1]!r}, not BAD line too long")
        if b"SERVERBUG" in lines[-1]:
            self.finding(line, f"internal error: {lines[-1]!r}")
        stray = [l for l in lines[:-1] if l.startswith(b"* BAD")]
        if stray:
            self.finding(line, f"untagged {stray[0]!r} before {lines[-1]!r}")
        word = _IMAP_ATOM.match(line, len(tag) + 1).group(0).upper()
        if not self.logged_in:
            # A fuzzed LOGIN that worked: a new session, to stay before login.
            return status == b"BAD", word == b"LOGIN" and status == b"OK"
        if word in (b"SELECT", b"EXAMINE"):
            # RFC 3501 6.3.1: whatever it did, select INBOX again (read-write)
            # so that the message commands keep being tested.
            try:
                self.command(c, b"SELECT INBOX")
            except Closed:
                if status != b"BAD":
                    raise
                return True, True  # answered BAD, then the error limit closed the session
            return False, False
        return status == b"BAD", False

    def junk_tag(self, c, line):
        """A line with no usable tag gets an untagged BAD (RFC 3501 7.1.3); a NOOP shows the session goes on."""
        self.send(c, line)
        self.control += 1
        tag = b"C%d" % self.control
        c.send(tag + b" NOOP\r\n")
        lines = []
        try:
            status = imap_until(c, tag, lines)
            while status != b"+" and not lines[-1].startswith(tag + b" "):
                status = imap_until(c, tag, lines)  # the junk line answered with a tag: see below
        except Closed:
            if any(l.startswith(b"* BAD") for l in lines):
                return True, True  # answered, then the error limit closed the session
            raise
        self.count("untagged")
        for l in lines:
            self.check_reply(line, l)
        if status == b"+":
            self.finding(line, f"server asked for a continuation: {lines!r}")
            return True, True
        tagged = [l for l in lines[:-1] if not l.startswith(b"* ")]
        if tagged:
            self.finding(line, f"answered with a tag it does not have: {tagged[0]!r}")
        elif not any(l.startswith(b"* BAD") for l in lines[:-1]):
            self.finding(line, f"no untagged BAD before the next command's answer: {lines!r}")
        if b"SERVERBUG" in b"".join(lines):
            self.finding(line, f"internal error: {lines!r}")
        if status != b"OK":
            self.finding(line, f"the NOOP after it answered {lines[-1]!r}")
        return status != b"OK", False


# --- SMTP -------------------------------------------------------------------

_SMTP_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|$)")


def smtp_reply(c, lines):
    """Read one reply into `lines`; its code, or None when a line is malformed (RFC 5321 4.2)."""
    code = None
    while True:
        line = c.line()
        lines.append(line)
        m = _SMTP_LINE.match(line)
        if m is None or (code is not None and m.group(1) != code):
            return None
        code = m.group(1)
        if m.group(2) != b"-":
            return int(code)


class SMTPRun(Run):
    protocol = "SMTP"
    SYNC_EVERY = 16  # an unfuzzed NOOP this often shows no reply was extra or missing

    def reply_to(self, c, line):
        self.send(c, line)
        lines = []
        code = smtp_reply(c, lines)
        for l in lines:
            self.check_reply(line, l)
        return code, lines

    def connect(self):
        self.port_name = "smtp" if self.sessions.random() < 0.75 else "submission"
        c = Wire(self.server.port(self.port_name))
        self.state = self.port_name + " greeting"
        lines = []
        if smtp_reply(c, lines) != 220:
            raise AssertionError(f"SMTP greeting {lines!r}")
        self.state = self.port_name
        self.cases_in_session = 0
        if self.sessions.random() < 0.9:
            code, lines = self.reply_to(c, b"EHLO fuzz.test")
            if code != 250:
                raise AssertionError(f"EHLO answered {lines!r}")
            self.state = self.port_name + " after EHLO"
        return c

    def case(self, i):
        if i < len(SMTP_CORPUS):
            return SMTP_CORPUS[i]
        if self.rng.random() < 0.01:
            return b"NOOP " + b"x" * OVER_LONG  # over the line limit
        return smtp_case(self.rng)

    def exchange(self, c, line):
        self.cases_in_session += 1
        if self.cases_in_session % self.SYNC_EVERY == 0:
            code, lines = self.reply_to(c, b"NOOP")
            if code == 421 and b"too many errors" in lines[-1]:
                raise Closed("421 too many errors")
            if lines != [b"250 2.0.0 OK"]:
                self.finding(b"NOOP", f"a reply too many or too few before it: {lines!r}")
                return True, True
        code, lines = self.reply_to(c, line)
        self.count(code)
        if code is None:
            self.finding(line, f"malformed reply {lines!r}")
            return True, True
        if code == 421 and b"too many errors" in lines[-1]:
            # The goodbye owed to the line before (RFC 5321 4.5.3.2); this one was never read.
            raise Closed("421 too many errors")
        if len(line) > SMTP_LINE and not (code == 500 and b"too long" in lines[-1]):
            self.finding(line, f"answered {lines!r}, not 500 line too long")
        if b"local error" in lines[-1]:
            self.finding(line, f"internal error: {lines!r}")
        return code >= 400, False


# --- POP3 -------------------------------------------------------------------


class POP3Run(Run):
    protocol = "POP3"

    def status(self, c, line):
        self.send(c, line)
        first = c.line()
        self.check_reply(line, first)
        return first

    def connect(self):
        c = Wire(self.server.port("pop3"))
        self.state = "greeting"
        greeting = c.line()
        if not greeting.startswith(b"+OK"):
            raise AssertionError(f"POP3 greeting {greeting!r}")
        self.state = "authorization"
        if self.sessions.random() < 0.85:
            for line in (b"USER alice@example.test", b"PASS pw"):
                answer = self.status(c, line)
                if not answer.startswith(b"+OK"):
                    raise AssertionError(f"POP3 {line!r} answered {answer!r}")
            self.state = "transaction"
        return c

    def case(self, i):
        if i < len(POP3_CORPUS):
            return POP3_CORPUS[i]
        if self.rng.random() < 0.01:
            return b"NOOP " + b"x" * (4 * POP3_LINE)  # over the line limit
        return pop3_case(self.rng)

    def exchange(self, c, line):
        first = self.status(c, line)
        self.count(first.split(b" ", 1)[0][:4])
        if first == b"-ERR too many errors, closing":
            raise Closed(first.decode())  # owed to the line before; this one was never read
        if not (first.startswith(b"+OK") or first.startswith(b"-ERR")):
            self.finding(line, f"answered {first!r}, neither +OK nor -ERR")
            return True, True
        if first.startswith(b"+OK") and pop3_multiline(line):
            while True:
                body = c.line()
                self.check_reply(line, body)
                if body == b".":
                    break
        if len(line) > POP3_LINE and not (first.startswith(b"-ERR") and b"too long" in first):
            self.finding(line, f"answered {first!r}, not -ERR line too long")
        if b"internal error" in first:
            self.finding(line, f"internal error: {first!r}")
        verb, _ = pop3_words(line)
        if verb == b"PASS" and first.startswith(b"+OK"):
            self.state = "transaction"
        return first.startswith(b"-ERR"), False


# --- the tests ---------------------------------------------------------------


class FuzzMaildir(unittest.TestCase):
    """
    Each test fuzzes one protocol of one real server (all of SMTP,
    submission, IMAP and POP3 listening), with three messages in the INBOX.
    """

    store = "maildir"
    CASES = {"imap": 600, "imap before login": 150, "smtp": 400, "pop3": 400}
    SEEDS = {"imap": 17, "imap before login": 1017, "smtp": 2017, "pop3": 3017}
    timeout = 300  # trial's limit for one test; a clean run takes a few seconds

    @defer.inlineCallbacks
    def setUp(self):
        self.events = []
        self.run_now = None
        globalLogPublisher.addObserver(self.observe)
        self.addCleanup(globalLogPublisher.removeObserver, self.observe)
        self.server = MailServer(self, listeners=LISTENERS, extra=EXTRA)
        yield self.server.start(users={USER: PASSWORD})
        yield in_thread(self.deliver, MESSAGES)

    def observe(self, event):
        current = self.run_now.current if self.run_now is not None else None
        self.events.append((event, current))

    def deliver(self, messages):
        with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=ANSWER_TIMEOUT) as s:
            for m in messages:
                s.sendmail("bob@elsewhere.test", [USER], m)

    def log_findings(self):
        out = []
        for event, current in self.events:
            text = formatEvent(event) or ""
            failure = event.get("log_failure")
            level = event.get("log_level")
            if failure is None and "Traceback" not in text and level not in (LogLevel.error, LogLevel.critical):
                continue
            where = f"{current[0]} [{current[1]}] {current[2]!r}" if current else "outside the fuzz run"
            detail = failure.getTraceback() if failure is not None else ""
            out.append(f"log after {where}: {text}\n{detail[-1500:]}")
        return out

    def still_serves(self):
        """A normal session afterwards: IMAP login and FETCH of every message."""
        c = Wire(self.server.port("imap"))
        try:
            c.line()
            answers = []
            for tag, command in ((b"A", b"LOGIN alice@example.test pw"), (b"B", b"SELECT INBOX"),
                                 (b"C", b"FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")):
                c.send(tag + b" " + command + b"\r\n")
                lines = []
                answers.append((imap_until(c, tag, lines), lines))
            return answers
        finally:
            c.close()

    @defer.inlineCallbacks
    def fuzz(self, name, run):
        self.run_now = run
        try:
            yield in_thread(run.run)
        finally:
            self.run_now = None
        answers = yield in_thread(self.still_serves)
        findings = list(run.findings)
        for status, lines in answers:
            if status != b"OK":
                findings.append(f"afterwards, a normal IMAP session was answered {lines[-3:]!r}")
        fetched = [l for l in answers[-1][1] if b" FETCH " in l]
        if len(fetched) < len(MESSAGES):
            findings.append(f"afterwards, FETCH 1:* showed {len(fetched)} messages: {answers[-1][1]!r}")
        findings += self.log_findings()
        self.flushLoggedErrors()  # reported below, with the line that caused each
        summary = (f"{name} fuzz on {self.store}, seed {run.seed}: {run.sent} lines sent, {run.answered} of "
                   f"{run.cases} cases answered ({run.tally}), {run.connections} sessions")
        if findings:
            self.fail(summary + f"; {len(findings)} findings:\n" + "\n".join(findings[:40]))
        self.assertEqual(run.answered, run.cases, summary)

    def test_imap_logged_in_every_command_answered(self):
        name = "imap"
        return self.fuzz(name, IMAPRun(self.server, self.SEEDS[name], self.CASES[name], logged_in=True))

    def test_imap_before_login_every_command_answered(self):
        name = "imap before login"
        return self.fuzz(name, IMAPRun(self.server, self.SEEDS[name], self.CASES[name], logged_in=False))

    @defer.inlineCallbacks
    def test_smtp_every_command_answered(self):
        name = "smtp"
        yield self.fuzz(name, SMTPRun(self.server, self.SEEDS[name], self.CASES[name]))
        # and mail still goes through
        yield in_thread(self.deliver, [b"Subject: after the fuzz\r\n\r\nstill here\r\n"])

    @defer.inlineCallbacks
    def test_pop3_every_command_answered(self):
        name = "pop3"
        yield self.fuzz(name, POP3Run(self.server, self.SEEDS[name], self.CASES[name]))

        def pop():
            p = poplib.POP3("127.0.0.1", self.server.port("pop3"), timeout=ANSWER_TIMEOUT)
            try:
                p.user(USER)
                p.pass_(PASSWORD)
                return p.stat(), p.retr(1)[0]
            finally:
                p.quit()

        (count, _), status = yield in_thread(pop)
        self.assertEqual(count, len(MESSAGES))
        self.assertTrue(status.startswith(b"+OK"), status)


class FuzzMbox(FuzzMaildir):
    """The same on the mbox store, with fewer cases (its protocol code is shared)."""

    store = "mbox"
    CASES = {"imap": 300, "imap before login": 50, "smtp": 100, "pop3": 200}
