"""
The header-only ENVELOPE (L{mime.message_envelope}, used by FETCH ENVELOPE
when nothing else needs the file) must equal the ENVELOPE of the full MIME
parse (L{mime.envelope} of L{fetch.parse_message}) for every message: the
same unfolding, the same first-occurrence rule, the same junk-line and
no-header cases, CRLF or LF.
"""

import io
import random

from twisted.trial import unittest

from mailplat.imap import fetch, mime

CASES = [
    b"",
    b"\n",
    b"\r\n",
    b"\nSubject: not a header\n\nbody",
    b"Subject: only a header, no blank line",
    b"Subject: hi\nFrom: A <a@example.org>\n\nbody\n",
    b"Subject: hi\r\nFrom: A <a@example.org>\r\n\r\nbody\r\n",
    b"Subject: folded\n  over\n\tthree lines\nTo: b@example.org\n\n",
    b"Subject: first\nSubject: second\n\n",
    b"Sender:\nFrom: F <f@example.org>\nReply-To: \n\n",
    b"From:\n\n",
    b"junk line without colon\n continued junk\nSubject: after junk\n\n",
    b" Subject: leading space on the first line\n\n",
    b"SUBJECT : upper case with space\nfRoM: x@y\n\n",
    b'Subject: quotes " and \\\\ backslashes\n\n',
    b"Subject: caf\xc3\xa9 raw utf-8\nFrom: \xc3\xa9 <e@example.org>\n\n",
    b"Subject: lone\rcarriage\r\r\n continued\n\n",
    b"To: group: a@example.org, B <b@example.org>;, c@example.org\n\n",
    b"To: undisclosed-recipients:;\n\n",
    b"From: (comment) a@example.org (more)\nCc: \"Last, First\" <lf@example.org>\n\n",
    b"Message-ID: <1@x>\nIn-Reply-To: <0@x>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\n",
    b"Subject: " + b"x" * 2000 + b"\n\n",
    b"Subject: a\n\nSubject: in the body\n",
    b"Subject: a\r\n\r\n\r\n",
    b"Subject: mixed\r\nFrom: m@example.org\n\r\nbody",
    b"Content-Type: multipart/mixed; boundary=b\nSubject: m\n\n--b\nSubject: inner\n\nx\n--b--\n",
]

PIECES = [
    b"Subject: s",
    b"From: F <f@example.org>",
    b"Sender: s@example.org",
    b"Reply-To: r@example.org",
    b"To: a@example.org, b@example.org",
    b"Cc: g: c@example.org;",
    b"Bcc: ",
    b"Date: Tue, 2 Jan 2024 10:00:00 +0100",
    b"Message-ID: <m@example.org>",
    b"In-Reply-To: <p@example.org>",
    b"X-Other: y",
    b" folded",
    b"\tfolded tab",
    b"junk",
    b"",
    b"subject:lower",
    b"FROM:   spaced <sp@example.org>  ",
    b"To: \xff\xfe raw",
    b'Subject: "quoted" \\ x',
    b"\r",
]


def full_parse(data):
    return mime.envelope(fetch.parse_message(data))


class HeaderOnlyEnvelope(unittest.TestCase):
    def test_cases(self):
        for data in CASES:
            self.assertEqual(mime.message_envelope(data), full_parse(data), data)

    def test_random_headers(self):
        rng = random.Random(5)
        for _ in range(3000):
            lines = [rng.choice(PIECES) for _ in range(rng.randint(0, 12))]
            eol = rng.choice([b"\n", b"\r\n"])
            data = eol.join(lines) + rng.choice([b"", eol, eol + eol + b"body" + eol])
            self.assertEqual(mime.message_envelope(data), full_parse(data), data)


ADDRESS_PIECES = [
    "a@example.org",
    "Name <n@example.org>",
    "  Two Words  <tw@example.org> ",
    '"Quoted, Name" <q@example.org>',
    "bare",
    "",
    " ",
    "x@y (comment)",
    "<@route:r@example.org>",
    "g: m@example.org;",
    "Émile <e@example.org>",
    "a.b+c@sub.example.org",
    "broken <x@",
    "@nolocal",
    "[literal]@x",
]


class AddressLists(unittest.TestCase):
    """The comma-list fast path of mime._addresses equals the full parser (L{address.parse})."""

    def test_random_lists(self):
        from mailplat.imap import address

        rng = random.Random(7)
        for _ in range(5000):
            value = ",".join(rng.choice(ADDRESS_PIECES) for _ in range(rng.randint(1, 5)))
            self.assertEqual(mime._addresses(value), address.parse(value), value)


class SimpleAddressWire(unittest.TestCase):
    """The printable-ASCII shortcut of mime._address_list equals the parse-and-quote way for every value it takes."""

    def test_random_values(self):
        rng = random.Random(13)
        pieces = ADDRESS_PIECES + [
            'a\\b@example.org', 'N <a"b@example.org>', "Tab\tName <t@example.org>", "x" * 1100 + "@example.org",
            "Name <n@example.org> ", "<only@example.org>", '"" <empty@example.org>', "a@b.c,", " , ",
        ]
        taken = 0
        for _ in range(5000):
            value = rng.choice([",", ", "]).join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
            fast = mime._simple_list(value.encode("utf-8")) if value.isascii() else None
            if fast is not None:
                taken += 1
                self.assertEqual(fast, mime._parsed_list(value), value)
        self.assertGreater(taken, 500)  # the shortcut is exercised, not skipped


class HeaderFieldsFuzz(unittest.TestCase):
    """
    mime.first_values against the field-by-field parse on headers made of
    odd pieces: leading SP/TAB/CR/VT/FF, names with spaces before the colon,
    near-miss names, junk lines and their continuations.
    """

    def test_odd_headers(self):
        rng = random.Random(17)
        names = [b"Subject", b"SUBJECT", b"from", b"To", b"cc", b"Date", b"In-Reply-To", b"X-Subject", b"Subject x",
                 b"Fromage", b"message-id", b"references"]
        spaces = [b"", b" ", b"\t", b"\r", b"\x0b", b"\x0c"]
        values = [b"", b" v", b" a@b", b" x:y", b"\xff", b" ", b" v\r"]

        def piece():
            r = rng.random()
            if r < 0.6:
                return rng.choice(spaces) + rng.choice(names) + rng.choice(spaces) + b":" + rng.choice(values)
            if r < 0.8:
                return rng.choice([b" ", b"\t"]) + rng.choice(values + [b"Subject: folded"])
            return rng.choice([b"junk", b"\r", b":", b" :"])

        wanted = frozenset(n.lower() for n in names if b" " not in n)
        for _ in range(5000):
            eol = rng.choice([b"\n", b"\r\n"])
            data = eol.join(piece() for _ in range(rng.randint(0, 8))) + rng.choice([b"", eol, eol + eol + b"Subject: b"])
            part = mime.Part(mime.canonical(data), 0, len(mime.canonical(data)))
            expected = {}
            for name in wanted:
                value = part.get(name.decode("ascii"))
                if value is not None:
                    expected[name] = value.encode("utf-8", "surrogateescape")
            self.assertEqual(mime.first_values(data, wanted), expected, data)


class SortKeysHeader(unittest.TestCase):
    """SORT's keys read the header with mime.first_values: the same values as the field-by-field parse."""

    def test_same_values(self):
        from mailplat.imap import sortkeys

        def old_values(header):
            values = {}
            for name, raw in mime.header_fields(mime.canonical(header)):
                if name in sortkeys._FIELDS and name not in values:
                    values[name] = mime.field_value(raw)
            return values

        rng = random.Random(9)
        pieces = PIECES + [b"References: <a@b> <c@d>", b"In-Reply-To: <x@y>", b"Message-ID: <z@w>"]
        for _ in range(3000):
            eol = rng.choice([b"\n", b"\r\n"])
            data = eol.join(rng.choice(pieces) for _ in range(rng.randint(0, 10))) + eol + eol + b"body" + eol
            header = sortkeys._read_header(io.BytesIO(data))  # as SORT reads a message
            got = {k: v.decode("utf-8", "surrogateescape") for k, v in mime.first_values(header, sortkeys._FIELDS).items()}
            self.assertEqual(got, old_values(header), header)
