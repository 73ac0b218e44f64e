"""
FETCH as imaptest checks it: ENVELOPE address lists with groups and routes
(RFC 3501 7.4.2), and the parts of an attached message/rfc822 (RFC 3501
6.4.5), over a real socket.
"""

import re

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient

GROUPS = (
    b"Date: Thu, 15 Feb 2007 01:02:03 +0200\r\n"
    b"From: user@domain (Real Name)\r\n"
    b"To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n"
    b"Cc: group:;, group2: (foo) ;\r\n"
    b"\r\nbody\r\n"
)
ROUTE = b"Date: Thu, 15 Feb 2007 01:02:03 +0200\r\nFrom: <@route:user@domain>\r\n\r\nbody\r\n"

ATTACHED = (
    b"From: user@domain.org\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: sub@domain.org\r\n"
    b"Subject: submsg\r\n"
    b"\r\n"
    b"Hello world\r\n"
)
# An attached message that is itself a message/rfc822 around a third one.
TWICE = (
    b"From: user@domain.org\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: user2@domain.org\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: sub@domain.org\r\n"
    b"Subject: submsg\r\n"
    b"\r\n"
    b"Hello world\r\n"
)
# An attached message that is a multipart/digest.
DIGEST = (
    b"From: user@domain.org\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: sub@domain.org\r\n"
    b'Content-Type: multipart/digest; boundary="foo"\r\n'
    b"\r\n"
    b"prologue\r\n"
    b"\r\n"
    b"--foo\r\n"
    b"\r\n"
    b"From: m1@example.com\r\n"
    b"\r\n"
    b"m1 body\r\n"
    b"\r\n"
    b"--foo\r\n"
    b"X-Mime: m2 header\r\n"
    b"\r\n"
    b"From: m2@example.com\r\n"
    b"\r\n"
    b"m2 body\r\n"
    b"\r\n"
    b"--foo--\r\n"
)


class FetchCase(unittest.TestCase):
    messages = ()

    def setUp(self):
        self.imap = MemoryIMAP(self)
        for m in self.messages:
            self.imap.inbox.add(m)

    def fetch(self, command):
        """The whole answer to one FETCH, literals included, as one bytes value."""

        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.command(b"S1 SELECT INBOX")
            return b"".join(c.command(command))

        return in_thread(run)

    @defer.inlineCallbacks
    def section(self, seq, spec):
        answer = yield self.fetch(b"F1 FETCH %d (BODY.PEEK[%s])" % (seq, spec))
        m = re.search(rb"BODY\[[^\]]*\] \{(\d+)\}\r\n", answer)
        self.assertIsNotNone(m, answer)
        return answer[m.end() : m.end() + int(m.group(1))]


class EnvelopeAddresses(FetchCase):
    messages = (GROUPS, ROUTE)

    @defer.inlineCallbacks
    def test_group_members_come_between_the_group_start_and_end_markers(self):
        answer = yield self.fetch(b"F1 FETCH 1 (ENVELOPE)")
        self.assertIn(
            b'((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)'
            b'(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")(NIL NIL NIL NIL))',
            answer,
        )

    @defer.inlineCallbacks
    def test_empty_groups_keep_both_markers(self):
        answer = yield self.fetch(b"F1 FETCH 1 (ENVELOPE)")
        self.assertIn(b'((NIL NIL "group" NIL)(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL NIL NIL))', answer)

    @defer.inlineCallbacks
    def test_a_comment_after_a_bare_address_is_its_name(self):
        answer = yield self.fetch(b"F1 FETCH 1 (ENVELOPE)")
        self.assertIn(b'(("Real Name" NIL "user" "domain"))', answer)

    @defer.inlineCallbacks
    def test_a_source_route_is_kept(self):
        answer = yield self.fetch(b"F1 FETCH 2 (ENVELOPE)")
        self.assertIn(b'((NIL "@route" "user" "domain"))', answer)


class AttachedMessageParts(FetchCase):
    messages = (ATTACHED, TWICE, DIGEST)
    inner = b"From: sub@domain.org\r\nSubject: submsg\r\n\r\nHello world\r\n"

    @defer.inlineCallbacks
    def test_part_1_of_a_message_rfc822_message_is_the_whole_attached_message(self):
        self.assertEqual((yield self.section(1, b"1")), self.inner)

    @defer.inlineCallbacks
    def test_header_and_text_of_part_1_are_the_attached_messages(self):
        self.assertEqual((yield self.section(1, b"1.HEADER")), b"From: sub@domain.org\r\nSubject: submsg\r\n\r\n")
        self.assertEqual((yield self.section(1, b"1.TEXT")), b"Hello world\r\n")
        self.assertEqual((yield self.section(1, b"1.HEADER.FIELDS (Subject)")), b"Subject: submsg\r\n\r\n")

    @defer.inlineCallbacks
    def test_part_1_1_is_the_attached_messages_body(self):
        self.assertEqual((yield self.section(1, b"1.1")), b"Hello world\r\n")

    @defer.inlineCallbacks
    def test_an_attached_message_inside_an_attached_message(self):
        self.assertEqual((yield self.section(2, b"1.1")), self.inner)
        self.assertEqual((yield self.section(2, b"1.1.HEADER")), b"From: sub@domain.org\r\nSubject: submsg\r\n\r\n")
        self.assertEqual((yield self.section(2, b"1.1.TEXT")), b"Hello world\r\n")
        self.assertEqual((yield self.section(2, b"1.HEADER")), b"From: user2@domain.org\r\nContent-Type: message/rfc822\r\n\r\n")

    @defer.inlineCallbacks
    def test_parts_of_a_multipart_attached_message_and_their_mime_headers(self):
        self.assertEqual((yield self.section(3, b"1.1")), b"From: m1@example.com\r\n\r\nm1 body\r\n")
        self.assertEqual((yield self.section(3, b"1.1.MIME")), b"\r\n")
        self.assertEqual((yield self.section(3, b"1.1.HEADER")), b"From: m1@example.com\r\n\r\n")
        self.assertEqual((yield self.section(3, b"1.1.TEXT")), b"m1 body\r\n")
        self.assertEqual((yield self.section(3, b"1.2.MIME")), b"X-Mime: m2 header\r\n\r\n")
        self.assertEqual((yield self.section(3, b"1.2")), b"From: m2@example.com\r\n\r\nm2 body\r\n")
