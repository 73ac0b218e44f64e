"""
BINARY (RFC 3516) over a real socket: FETCH BINARY[section]<partial>,
BINARY.PEEK, BINARY.SIZE with base64 and quoted-printable parts decoded,
NO [UNKNOWN-CTE] for an encoding we cannot undo, and APPEND of a literal8.
"""

import base64

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.imap import mime
from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient

MULTI = (
    b'Content-Type: multipart/mixed; boundary="b"\n'
    b"Subject: parts\n\n"
    b"--b\n"
    b"Content-Type: text/plain\n"
    b"Content-Transfer-Encoding: base64\n\n"
    + base64.encodebytes(b"hello world")
    + b"--b\n"
    b"Content-Type: text/plain\n"
    b"Content-Transfer-Encoding: quoted-printable\n\n"
    b"caf=C3=A9 soft=\nbreak  \n"
    b"--b\n"
    b"Content-Type: application/octet-stream\n"
    b"Content-Transfer-Encoding: x-uuencode\n\n"
    b"begin 644 x\n"
    b"--b\n"
    b"Content-Type: application/octet-stream\n"
    b"Content-Transfer-Encoding: base64\n\n"
    + base64.encodebytes(b"a\0b")
    + b"--b--\n"
)


class Session(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        self.inbox = self.imap.account._folders["INBOX"]
        self.inbox.add(MULTI)

    def talk(self, *commands, select=True):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            if select:
                c.command(b"S1 SELECT INBOX")
            return [b"".join(c.command(command)) for command in commands]

        return in_thread(run)


class Capability(Session):
    @defer.inlineCallbacks
    def test_binary_is_advertised(self):
        (answer,) = yield self.talk(b"C1 CAPABILITY", select=False)
        self.assertIn(b" BINARY", answer)


class Fetch(Session):
    @defer.inlineCallbacks
    def test_base64_part_is_decoded(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BINARY.PEEK[1])")
        self.assertIn(b"* 1 FETCH (BINARY[1] {11}\r\nhello world)", answer)

    @defer.inlineCallbacks
    def test_quoted_printable_part_is_decoded(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BINARY.PEEK[2])")
        self.assertIn(b"BINARY[2] {15}\r\ncaf\xc3\xa9 softbreak)", answer)

    @defer.inlineCallbacks
    def test_size_is_of_the_decoded_part(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2])")
        self.assertIn(b"* 1 FETCH (BINARY.SIZE[1] 11 BINARY.SIZE[2] 15)", answer)

    @defer.inlineCallbacks
    def test_partial_applies_to_the_decoded_octets(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BINARY.PEEK[1]<6.100>)")
        self.assertIn(b"BINARY[1]<6> {5}\r\nworld)", answer)

    @defer.inlineCallbacks
    def test_nul_goes_in_a_literal8(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BINARY.PEEK[4])")
        self.assertIn(b"BINARY[4] ~{3}\r\na\0b)", answer)

    @defer.inlineCallbacks
    def test_unknown_encoding_is_no_unknown_cte(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BINARY.PEEK[3])")
        self.assertIn(b"F1 NO [UNKNOWN-CTE]", answer)

    @defer.inlineCallbacks
    def test_binary_sets_seen_and_peek_does_not(self):
        peek, flags1, binary, flags2 = yield self.talk(
            b"F1 FETCH 1 (BINARY.PEEK[1])", b"F2 FETCH 1 (FLAGS)", b"F3 FETCH 1 (BINARY[1])", b"F4 FETCH 1 (FLAGS)"
        )
        self.assertNotIn(b"\\Seen", flags1)
        self.assertIn(b"\\Seen", flags2)

    @defer.inlineCallbacks
    def test_section_other_than_part_numbers_is_bad(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BINARY[1.MIME])")
        self.assertIn(b"F1 BAD", answer)

    @defer.inlineCallbacks
    def test_size_takes_no_partial(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BINARY.SIZE[1]<0.5>)")
        self.assertIn(b"F1 BAD", answer)

    @defer.inlineCallbacks
    def test_body_items_beside_binary_keep_their_order(self):
        (answer,) = yield self.talk(b"F1 FETCH 1 (BODY.PEEK[1] BINARY.PEEK[1] BINARY.SIZE[1])")
        encoded = base64.encodebytes(b"hello world").rstrip(b"\n")
        self.assertIn(b"BODY[1] {%d}\r\n%s BINARY[1] {11}\r\nhello world BINARY.SIZE[1] 11)" % (len(encoded), encoded), answer)


class AppendLiteral8(Session):
    def append(self, literal, command=b"A1 APPEND INBOX "):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.send(command + b"~{%d+}\r\n" % len(literal) + literal + b"\r\n")
            return b"".join(c.until(b"A1"))

        return in_thread(run)

    @defer.inlineCallbacks
    def test_literal8_with_nul_is_stored_and_given_back(self):
        message = b"Subject: bin\r\nContent-Type: application/octet-stream\r\n\r\n\0\x01\xff\r\n"
        answer = yield self.append(message)
        self.assertIn(b"A1 OK [APPENDUID", answer)
        (fetched,) = yield self.talk(b"F1 FETCH 2 (BINARY.PEEK[1] BODY.PEEK[1])")
        # The body's last line break stays outside the encoding, as the line
        # break before a boundary belongs to the boundary (RFC 2046 5.1.1).
        self.assertIn(b"BINARY[1] ~{3}\r\n\0\x01\xff ", fetched)
        # RFC 3516 4.4: no NUL in a BODY[] answer; the part is stored base64.
        self.assertIn(b"BODY[1] {8}\r\nAAH/\r\n\r\n)", fetched)

    @defer.inlineCallbacks
    def test_literal8_without_nul_is_stored_as_sent(self):
        message = b"Subject: plain\r\n\r\nhello\r\n"
        yield self.append(message)
        self.assertEqual(self.inbox.messages()[-1].data, b"Subject: plain\n\nhello\n")

    @defer.inlineCallbacks
    def test_nul_in_an_ordinary_literal_is_bad(self):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            data = b"Subject: x\r\n\r\n\0\r\n"
            c.send(b"A1 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
            return b"".join(c.until(b"A1"))

        answer = yield in_thread(run)
        self.assertIn(b"A1 BAD", answer)
        self.assertEqual(len(self.inbox.messages()), 1)

    @defer.inlineCallbacks
    def test_literal8_outside_append_is_bad(self):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.send(b"A1 CREATE ~{3+}\r\nabc\r\n")
            return b"".join(c.until(b"A1"))

        answer = yield in_thread(run)
        self.assertIn(b"A1 BAD", answer)

    @defer.inlineCallbacks
    def test_literal8_over_the_message_size_is_toobig(self):
        self.imap.factory.limits["message_size"] = 100

        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.send(b"A1 APPEND INBOX ~{200}\r\n")
            return b"".join(c.until(b"A1"))

        answer = yield in_thread(run)
        self.assertIn(b"A1 NO [TOOBIG]", answer)


class Decoding(unittest.TestCase):
    def test_qp_soft_break_with_trailing_space(self):
        self.assertEqual(mime.decode_qp(b"a= \r\nb=3D\r\n"), b"ab=\r\n")

    def test_qp_lone_equals_is_kept(self):
        self.assertEqual(mime.decode_qp(b"1 =Z 2"), b"1 =Z 2")

    def test_base64_ignores_line_breaks_and_junk(self):
        self.assertEqual(mime.decode_base64(b"aGVs\r\nbG8*\r\n"), b"hello")
