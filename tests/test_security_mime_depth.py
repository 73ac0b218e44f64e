"""
A hostile message must not break a mailbox (issue #17, item 3). Anyone may
send, to the MX port, a message nesting message/rfc822 or multipart
parts thousands of levels deep; past mime.MAX_DEPTH levels the rest of it
is one opaque application/octet-stream part (as Dovecot does), so FETCH
BODYSTRUCTURE, BODY[...] and SEARCH TEXT answer for it and for every other
message of the folder, on maildir and on mbox. Past mime.MAX_PARTS parts,
the last one keeps the rest. And should the parser ever break on a
message, only that message goes unanswered.
"""

import imaplib
import re
import smtplib
import time

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.imap import fetch, mime, search
from tests.helpers import MailServer, client_tls, collect_log, in_thread, in_thread_closing
from tests.test_imap_maildir import drain

ALICE = "alice@example.test"
DEPTH = 3000
BOTTOM = b"Subject: bottom\r\n\r\nneedle at the bottom\r\n"


def nested_rfc822(depth):
    """A message that is a message/rfc822 holding one, `depth` times."""
    head = b"From: mallory@remote.test\r\nTo: alice@example.test\r\nSubject: deep rfc822\r\nMIME-Version: 1.0\r\n"
    return head + b"Content-Type: message/rfc822\r\n\r\n" * depth + BOTTOM


def nested_multipart(depth):
    """A multipart/mixed whose only part is a multipart/mixed, `depth` times."""
    head = [b"From: mallory@remote.test\r\nTo: alice@example.test\r\nSubject: deep multipart\r\nMIME-Version: 1.0\r\n"]
    tail = []
    for i in range(depth):
        head.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
        tail.append(b"\r\n--b%d--\r\n" % i)
    head.append(b"Content-Type: text/plain\r\n\r\nneedle at the bottom")
    return b"".join(head) + b"".join(reversed(tail))


PLAIN_ONE = b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: plain one\r\n\r\nkiwi plain body\r\n"
WITH_ATTACHED = (
    b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: with an attached message\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    b"--outer\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nkiwi first part\r\n"
    b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
    b'Subject: attached\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
    b"--inner\r\nContent-Type: text/plain\r\n\r\nkiwi inner plain\r\n"
    b"--inner\r\nContent-Type: text/html\r\n\r\n<p>kiwi inner html</p>\r\n"
    b"--inner--\r\n"
    b"--outer--\r\n"
)
PLAIN_THREE = b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: plain three\r\n\r\nkiwi three\r\nsecond line\r\n"

# In delivery order, so message n of the folder is MESSAGES[n - 1].
MESSAGES = (PLAIN_ONE, nested_rfc822(DEPTH), WITH_ATTACHED, nested_multipart(DEPTH), PLAIN_THREE)
NORMAL = (1, 3, 5)
DEEP = (2, 4)

# The BODYSTRUCTURE of the normal messages, whatever their neighbours.
STRUCTURES = {
    1: b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 17 1 NIL NIL NIL NIL)',
    3: b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 15 1 NIL NIL NIL NIL)'
    b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 200 (NIL "attached" NIL NIL NIL NIL NIL NIL NIL NIL)'
    b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1 NIL NIL NIL NIL)'
    b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 22 1 NIL NIL NIL NIL)'
    b' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL) 12 NIL NIL NIL NIL)'
    b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)',
    5: b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 25 2 NIL NIL NIL NIL)',
}
OPAQUE = b'"APPLICATION" "OCTET-STREAM"'


def nesting(structure):
    """The deepest parenthesis nesting of a BODYSTRUCTURE (quoted strings skipped)."""
    depth = deepest = 0
    for token in re.findall(rb'"(?:[^"\\]|\\.)*"|[()]', structure):
        if token == b"(":
            depth += 1
            deepest = max(deepest, depth)
        elif token == b")":
            depth -= 1
    return deepest


def fetched(data):
    """imaplib FETCH data -> {seq: (the response without its literals, [literals])}."""
    out = {}
    seq = None
    for item in data:
        head, literal = item if isinstance(item, tuple) else (item, None)
        if head is None:
            continue
        m = re.match(rb"(\d+) \(", head)
        if m:
            seq = int(m.group(1))
            out[seq] = (b"", [])
        text, literals = out[seq]
        out[seq] = (text + head, literals + ([literal] if literal is not None else []))
    return out


class DeepTree(unittest.TestCase):
    """The parser itself: a bounded tree, quickly."""

    def deepest(self, message):
        part, levels = message, 0
        while part.children:
            self.assertEqual(len(part.children), 1)
            part, levels = part.children[0], levels + 1
        return part, levels

    def test_nested_rfc822_stops_at_the_limit_as_one_opaque_part(self):
        leaf, levels = self.deepest(fetch.parse_message(nested_rfc822(DEPTH)))
        self.assertEqual(levels, mime.MAX_DEPTH - 1)
        self.assertTrue(leaf.truncated)
        self.assertEqual(leaf.ctype, ("application", "octet-stream"))
        self.assertTrue(leaf.text.endswith(BOTTOM))

    def test_nested_multipart_stops_at_the_limit_as_one_opaque_part(self):
        leaf, levels = self.deepest(fetch.parse_message(nested_multipart(DEPTH)))
        self.assertEqual(levels, mime.MAX_DEPTH - 1)
        self.assertTrue(leaf.truncated)
        self.assertEqual(leaf.params["boundary"], "b%d" % (mime.MAX_DEPTH - 1))

    def test_nesting_within_the_limit_is_parsed_whole(self):
        for build in (nested_rfc822, nested_multipart):
            leaf, levels = self.deepest(fetch.parse_message(build(mime.MAX_DEPTH // 2)))
            self.assertEqual(levels, mime.MAX_DEPTH // 2)
            self.assertFalse(leaf.truncated)
            self.assertEqual(leaf.ctype, ("text", "plain"))

    def test_deep_bodystructure_has_bounded_depth(self):
        for build in (nested_rfc822, nested_multipart):
            message = fetch.parse_message(build(DEPTH))
            for extended in (True, False):
                structure = mime.bodystructure(message, extended)
                self.assertEqual(structure.count(OPAQUE), 1)
                # One parenthesis a level, and the opaque part's parameter list.
                self.assertLessEqual(nesting(structure), mime.MAX_DEPTH + 1)

    def test_parts_past_the_limit_stay_in_the_last_one(self):
        many = mime.MAX_PARTS * 20
        data = (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            + b"".join(b"--b\r\n\r\npart %d\r\n" % i for i in range(many))
            + b"--b--\r\n"
        )
        started = time.perf_counter()
        message = fetch.parse_message(data)
        structure = mime.bodystructure(message, True)
        text = search._body_text(message)
        self.assertLess(time.perf_counter() - started, 2)
        # The message and MAX_PARTS - 1 parts; the last holds every later part's bytes.
        self.assertEqual(len(message.children), mime.MAX_PARTS - 1)
        self.assertTrue(message.children[-1].text.endswith(b"part %d\r\n--b--\r\n" % (many - 1)))
        self.assertEqual(structure.count(b'"TEXT" "PLAIN"'), mime.MAX_PARTS - 1)
        self.assertIn("part %d" % (many - 1), text)

    def test_deep_messages_parse_in_well_under_a_second(self):
        for build in (nested_rfc822, nested_multipart):
            data = build(DEPTH)
            started = time.perf_counter()
            message = fetch.parse_message(data)
            mime.bodystructure(message, True)
            mime.bodystructure(message, False)
            text = search._body_text(message)
            self.assertLess(time.perf_counter() - started, 1, build.__name__)
            self.assertIn("needle at the bottom", text)


class HostileNeighbours(unittest.TestCase):
    """Over real sockets: SMTP to the MX port in, IMAPS out."""

    store = "maildir"
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.log = collect_log(self)
        self.server = yield MailServer(self, listeners=("smtp", "imaps")).start(users={ALICE: "pw"})
        self.addCleanup(drain, self.server)
        self.clients = []
        yield in_thread(self._deliver)

    def _deliver(self):
        with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=20) as s:
            for message in MESSAGES:
                s.sendmail("mallory@remote.test", [ALICE], message)

    def session(self, f):
        """Run f(client) in a thread, logged in as alice with INBOX selected."""

        def run():
            c = imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=20)
            self.clients.append(c)
            c.login(ALICE, "pw")
            self.assertEqual(c.select("INBOX"), ("OK", [b"%d" % len(MESSAGES)]))
            return f(c)

        return in_thread_closing(run, self.clients)

    def assertQuietLog(self):
        bad = [t for t in self.log if "Traceback" in t or "could not be read" in t or "command failed" in t]
        self.assertEqual(bad, [])

    @defer.inlineCallbacks
    def test_bodystructure_answers_every_message(self):
        typ, data = yield self.session(lambda c: c.fetch("1:*", "(BODYSTRUCTURE)"))
        self.assertEqual(typ, "OK")
        answers = fetched(data)
        self.assertEqual(sorted(answers), [1, 2, 3, 4, 5])
        for n in NORMAL:
            self.assertEqual(answers[n][0], b"%d (BODYSTRUCTURE %s)" % (n, STRUCTURES[n]))
        for n in DEEP:
            structure = answers[n][0]
            self.assertEqual(structure.count(OPAQUE), 1, n)
            self.assertLessEqual(nesting(structure), mime.MAX_DEPTH + 2, n)  # and FETCH's own
        self.assertQuietLog()

    @defer.inlineCallbacks
    def test_whole_bodies_answer_every_message(self):
        typ, data = yield self.session(lambda c: c.fetch("1:*", "(BODY[])"))
        self.assertEqual(typ, "OK")
        answers = fetched(data)
        self.assertEqual(sorted(answers), [1, 2, 3, 4, 5])
        for n, sent in enumerate(MESSAGES, 1):
            text, literals = answers[n]
            self.assertEqual(len(literals), 1, n)
            # The server adds its trace fields on top; the rest is as sent.
            self.assertTrue(literals[0].endswith(sent), n)
            self.assertIn(b"\\Seen", text)
        self.assertQuietLog()

    @defer.inlineCallbacks
    def test_sections_deep_inside_answer(self):
        def run(c):
            deep = {n: c.fetch(str(n), "(BODY.PEEK[1.1.1])") for n in DEEP}
            return deep, c.fetch("3", "(BODY.PEEK[2.1] BODY.PEEK[2.2] BODY.PEEK[1])")

        deep, normal = yield self.session(run)
        for n, (typ, data) in deep.items():
            self.assertEqual(typ, "OK", n)
            self.assertEqual(len(fetched(data)[n][1]), 1, n)
        self.assertTrue(fetched(deep[2][1])[2][1][0].endswith(BOTTOM))
        # Part 1.1.1 of the nested multipart is the body of its fourth level.
        sent = MESSAGES[3]
        start = sent.index(b'boundary="b3"\r\n\r\n') + len(b'boundary="b3"\r\n\r\n')
        self.assertEqual(fetched(deep[4][1])[4][1][0], sent[start : sent.index(b"\r\n--b2--")])
        typ, data = normal
        self.assertEqual(typ, "OK")
        self.assertEqual(fetched(data)[3][1], [b"kiwi inner plain", b"<p>kiwi inner html</p>", b"kiwi first part"])
        self.assertQuietLog()

    @defer.inlineCallbacks
    def test_search_text_answers_over_every_message(self):
        def run(c):
            return [c.search(None, "TEXT", word) for word in ("kiwi", "needle", "attached", "nowhere")]

        results = yield self.session(run)
        self.assertEqual(results, [("OK", [b"1 3 5"]), ("OK", [b"2 4"]), ("OK", [b"3"]), ("OK", [b""])])
        self.assertQuietLog()

    @defer.inlineCallbacks
    def test_a_message_that_breaks_fetch_costs_only_its_own_answer(self):
        real = fetch.compute

        def breaking(data, *args):
            if b"Subject: deep multipart" in data:
                raise RuntimeError("parser broken on purpose")
            return real(data, *args)

        self.patch(fetch, "compute", breaking)

        def run(c):
            return c.fetch("1:*", "(BODYSTRUCTURE)"), c.fetch("1:*", "(BODY.PEEK[])"), c.noop()

        structures, bodies, after = yield self.session(run)
        for typ, data in (structures, bodies):
            self.assertEqual(typ, "OK")
            self.assertEqual(sorted(fetched(data)), [1, 2, 3, 5])
        for n in NORMAL:
            self.assertEqual(fetched(structures[1])[n][0], b"%d (BODYSTRUCTURE %s)" % (n, STRUCTURES[n]))
            self.assertTrue(fetched(bodies[1])[n][1][0].endswith(MESSAGES[n - 1]))
        self.assertEqual(after[0], "OK")
        self.assertNotIn(b"broken", repr(structures + bodies).encode())
        # Logged once per command, for the operator only.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(len([t for t in self.log if "could not be read or parsed" in t]), 2, self.log)

    @defer.inlineCallbacks
    def test_a_message_that_breaks_search_costs_only_its_own_answer(self):
        real = fetch.parse_message

        def breaking(data):
            if b"Subject: deep rfc822" in data:
                raise RuntimeError("parser broken on purpose")
            return real(data)

        self.patch(fetch, "parse_message", breaking)
        result = yield self.session(lambda c: c.search(None, "TEXT", "needle"))
        self.assertEqual(result, ("OK", [b"4"]))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len([t for t in self.log if "could not be read or parsed" in t]), 1, self.log)


class HostileNeighboursOnMbox(HostileNeighbours):
    store = "mbox"
