"""FETCH answers built from a message's bytes: BODYSTRUCTURE, ENVELOPE, sections."""

from twisted.trial import unittest

from mailplat.imap import fetch, mime

NESTED = (
    b'Content-Type: multipart/mixed; boundary="outer"\n'
    b"Subject: nested\n\n"
    b"preamble\n"
    b"--outer\n"
    b"Content-Type: text/plain; charset=utf-8\n\n"
    b"first part\n"
    b"--outer\n"
    b"Content-Type: message/rfc822\n\n"
    b"Subject: inner\nFrom: Carol <carol@example.org>\n\ninner body\n"
    b"--outer--\n"
    b"epilogue\n"
)


def structure(data, extended=True):
    return mime.bodystructure(fetch.parse_message(data), extended)


def section(data, spec):
    items = fetch.parse_items(spec)
    return fetch.section_bytes(items[0], fetch.parse_message(data))


class BodyStructure(unittest.TestCase):
    def test_message_without_content_type_is_text_plain_us_ascii(self):
        self.assertEqual(
            structure(b"Subject: x\n\nhello\n"),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 7 1 NIL NIL NIL NIL)',
        )

    def test_multipart_lists_each_part_then_the_subtype(self):
        got = structure(NESTED)
        self.assertTrue(got.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1 '))
        self.assertIn(b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" ', got)
        self.assertTrue(got.endswith(b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'))

    def test_encapsulated_message_carries_its_envelope(self):
        self.assertIn(b'(NIL "inner" (("Carol" NIL "carol" "example.org"))', structure(NESTED))

    def test_body_is_the_non_extensible_form(self):
        self.assertEqual(
            structure(b"Subject: x\n\nhello\n", extended=False),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 7 1)',
        )

    def test_attachment_disposition(self):
        data = (
            b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b\n"
            b"Content-Type: application/pdf\nContent-Disposition: attachment; filename=\"a b.pdf\"\n"
            b"Content-Transfer-Encoding: base64\n\nAAAA\n--b--\n"
        )
        self.assertIn(b'"BASE64" 4 NIL ("ATTACHMENT" ("FILENAME" "a b.pdf")) NIL NIL)', structure(data))


class Envelope(unittest.TestCase):
    def test_sender_and_reply_to_default_to_from(self):
        env = mime.envelope(fetch.parse_message(b"From: a@example.org\nSubject: s\n\n"))
        self.assertEqual(env.count(b'((NIL NIL "a" "example.org"))'), 3)

    def test_raw_utf8_subject_is_sent_as_a_literal(self):
        env = mime.envelope(fetch.parse_message("Subject: café\n\n".encode()))
        self.assertIn("{5}\r\ncafé".encode(), env)


class Sections(unittest.TestCase):
    def test_header_fields_are_byte_exact_with_duplicates_and_folding(self):
        data = b"Received: one\nX-Tag: a\nreceived: two\n\tfolded\nSubject: s\n\nbody\n"
        self.assertEqual(
            section(data, b"BODY.PEEK[HEADER.FIELDS (RECEIVED)]"),
            b"Received: one\r\nreceived: two\r\n\tfolded\r\n\r\n",
        )

    def test_header_fields_not(self):
        data = b"A: 1\nB: 2\nC: 3\n\nbody\n"
        self.assertEqual(section(data, b"BODY[HEADER.FIELDS.NOT (B)]"), b"A: 1\r\nC: 3\r\n\r\n")

    def test_partial_fetch_is_truncated(self):
        self.assertEqual(section(b"Subject: x\n\nhello\n", b"BODY.PEEK[]<2.5>"), b"bject")

    def test_partial_fetch_past_the_end_is_empty(self):
        self.assertEqual(section(b"Subject: x\n\nhello\n", b"BODY[]<500.5>"), b"")

    def test_part_of_multipart(self):
        self.assertEqual(section(NESTED, b"BODY[1]"), b"first part")

    def test_mime_header_of_part(self):
        self.assertEqual(section(NESTED, b"BODY[1.MIME]"), b"Content-Type: text/plain; charset=utf-8\r\n\r\n")

    def test_header_of_encapsulated_message(self):
        self.assertEqual(
            section(NESTED, b"BODY[2.HEADER]"), b"Subject: inner\r\nFrom: Carol <carol@example.org>\r\n\r\n"
        )

    def test_part_one_of_a_single_part_message_is_its_body(self):
        self.assertEqual(section(b"Subject: x\n\nhello\n", b"BODY[1]"), b"hello\r\n")

    def test_response_label_names_only_the_origin_of_a_partial(self):
        self.assertEqual(fetch.parse_items(b"BODY.PEEK[TEXT]<0.10>")[0].label(), b"BODY[TEXT]<0>")

    def test_stored_lf_becomes_crlf(self):
        self.assertEqual(mime.canonical(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n")
