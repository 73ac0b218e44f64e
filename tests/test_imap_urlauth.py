"""
URLAUTH (RFC 4467) over real sockets on the maildir store: GENURLAUTH signs
a URL to a message with the owner's mailbox access key (INTERNAL
mechanism), URLFETCH gives its bytes to whoever the access identifier
admits (RFC 4467 3) and NIL to anyone else, for a tampered or expired URL,
and after RESETKEY.
"""

import os
import re
import stat

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.imap import urlauth
from tests.helpers import MailServer, in_thread
from tests.imap_support import TLSRawClient
from tests.test_imap_maildir import drain

ALICE = "alice@example.test"
BOB = "bob@example.test"
MESSAGE = b"From: carol@example.org\r\nSubject: hi\r\n\r\nsecret body\r\n"


class URLAuth(unittest.TestCase):
    store = "maildir"

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=("smtp", "imaps")).start(users={ALICE: "pw", BOB: "pw"})
        self.addCleanup(self.drain)

    def drain(self):
        return drain(self.server)

    def client(self, user=ALICE):
        c = TLSRawClient(self.server.port("imaps"))
        self.addCleanup(c.close)
        answer = c.command(b"L1 LOGIN " + user.encode() + b" pw")
        assert answer[-1].startswith(b"L1 OK"), answer
        return c

    def setup_message(self):
        """In a thread: alice's INBOX holds MESSAGE; its UID."""
        c = self.client()
        c.send(b"A1 APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
        answer = b"".join(c.until(b"A1"))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", answer).group(1))
        c.command(b"A2 LOGOUT")
        return uid

    def genurlauth(self, c, url):
        answer = c.command(b'G1 GENURLAUTH "' + url + b'" INTERNAL')
        assert answer[-1].startswith(b"G1 OK"), answer
        (line,) = [a for a in answer if a.startswith(b"* GENURLAUTH ")]
        return re.match(rb'\* GENURLAUTH "([^"]+)"', line).group(1)

    def urlfetch(self, c, url):
        answer = b"".join(c.command(b'F1 URLFETCH "' + url + b'"'))
        assert b"F1 OK" in answer, answer
        return answer

    def rump(self, uid, access, extra=b""):
        return b"imap://alice@example.test/INBOX/;uid=%d%s;urlauth=%s" % (uid, extra, access)

    def test_advertised_only_when_switched_on(self):
        from mailplat.imap import server

        def run():
            off = b"".join(self.client().command(b"C1 CAPABILITY"))
            self.patch(server, "ADVERTISE_URLAUTH", True)
            on = b"".join(self.client().command(b"C2 CAPABILITY"))
            return off, on

        def check(answers):
            off, on = answers
            self.assertNotIn(b" URLAUTH", off)
            self.assertIn(b" URLAUTH", on)
            self.assertIn(b" URLAUTH=BINARY", on)
            self.assertNotIn(b"URLAUTH=BINARY", off)

        return in_thread(run).addCallback(check)

    def test_round_trip_and_tampering(self):
        def run():
            uid = self.setup_message()
            c = self.client()
            url = self.genurlauth(c, self.rump(uid, b"user+alice"))
            self.assertTrue(url.startswith(self.rump(uid, b"user+alice") + b":internal:"))
            self.assertRegex(url.rsplit(b":", 1)[1], rb"^[0-9a-f]{32,}$")
            answer = self.urlfetch(c, url)
            self.assertIn(b'* URLFETCH "' + url + b'" {%d}\r\n' % len(MESSAGE) + MESSAGE, answer)
            # A section of it (RFC 5092 isection).
            part = self.genurlauth(c, self.rump(uid, b"user+alice", b"/;section=TEXT"))
            self.assertIn(b"{13}\r\nsecret body\r\n", self.urlfetch(c, part))
            # One hex digit changed, the token cut, another UID under the old token.
            last = url[-1:]
            tampered = url[:-1] + (b"0" if last != b"0" else b"1")
            self.assertIn(b'"' + tampered + b'" NIL', self.urlfetch(c, tampered))
            self.assertIn(b" NIL", self.urlfetch(c, url[:-8]))
            other = url.replace(b";uid=%d;" % uid, b";uid=%d;" % (uid + 1))
            self.assertIn(b" NIL", self.urlfetch(c, other))
            self.assertIn(b" NIL", self.urlfetch(c, url.replace(b":internal:", b":other:")))

        return in_thread(run)

    def test_resetkey_invalidates(self):
        def run():
            uid = self.setup_message()
            c = self.client()
            url = self.genurlauth(c, self.rump(uid, b"authuser"))
            self.assertIn(MESSAGE, self.urlfetch(c, url))
            self.assertTrue(c.command(b"R1 RESETKEY INBOX INTERNAL")[-1].startswith(b"R1 OK"))
            self.assertIn(b" NIL", self.urlfetch(c, url))
            # A new URL works again; RESETKEY without a mailbox voids every key.
            url = self.genurlauth(c, self.rump(uid, b"authuser"))
            self.assertIn(MESSAGE, self.urlfetch(c, url))
            self.assertTrue(c.command(b"R2 RESETKEY")[-1].startswith(b"R2 OK"))
            self.assertIn(b" NIL", self.urlfetch(c, url))
            self.assertTrue(c.command(b"R3 RESETKEY nosuchbox")[-1].startswith(b"R3 NO"))

        return in_thread(run)

    def test_access_identifiers_for_another_user(self):
        def run():
            uid = self.setup_message()
            alice = self.client()
            only_alice = self.genurlauth(alice, self.rump(uid, b"user+alice"))
            only_alice_full = self.genurlauth(alice, self.rump(uid, b"user+alice@example.test"))
            for_bob = self.genurlauth(alice, self.rump(uid, b"user+bob"))
            anyone = self.genurlauth(alice, self.rump(uid, b"anonymous"))
            logged_in = self.genurlauth(alice, self.rump(uid, b"authuser"))
            submit = self.genurlauth(alice, self.rump(uid, b"submit+bob"))
            bob = self.client(BOB)
            # RFC 4467 3: "user+" admits that user only; "submit+" only a submission server.
            self.assertIn(b" NIL", self.urlfetch(bob, only_alice))
            self.assertIn(b" NIL", self.urlfetch(bob, only_alice_full))
            self.assertIn(b" NIL", self.urlfetch(bob, submit))
            self.assertIn(MESSAGE, self.urlfetch(bob, for_bob))
            self.assertIn(MESSAGE, self.urlfetch(bob, anyone))
            self.assertIn(MESSAGE, self.urlfetch(bob, logged_in))
            self.assertIn(MESSAGE, self.urlfetch(alice, only_alice_full))
            # Bob cannot sign a URL to alice's mailbox, nor forge one for a user with no account.
            answer = bob.command(b'G2 GENURLAUTH "' + self.rump(uid, b"anonymous") + b'" INTERNAL')
            self.assertTrue(answer[-1].startswith(b"G2 NO"), answer)
            ghost = anyone.replace(b"imap://alice@", b"imap://nobody@")
            self.assertIn(b" NIL", self.urlfetch(bob, ghost))

        return in_thread(run)

    def test_expiry(self):
        def run():
            uid = self.setup_message()
            c = self.client()
            past = self.genurlauth(c, self.rump(uid, b"authuser", b";expire=2001-01-01T00:00:00Z"))
            future = self.genurlauth(c, self.rump(uid, b"authuser", b";expire=2999-01-01T00:00:00+02:00"))
            self.assertIn(b" NIL", self.urlfetch(c, past))
            self.assertIn(MESSAGE, self.urlfetch(c, future))
            # The expiry is signed: moving it voids the token.
            moved = past.replace(b"2001-01-01", b"2999-01-01")
            self.assertIn(b" NIL", self.urlfetch(c, moved))

        return in_thread(run)

    def test_key_is_private_and_never_sent(self):
        def run():
            uid = self.setup_message()
            c = self.client()
            url = self.genurlauth(c, self.rump(uid, b"authuser"))
            seen = url + b"".join(c.command(b"C1 CAPABILITY")) + self.urlfetch(c, url)
            return seen

        def check(seen):
            path = os.path.join(self.server.maildir(ALICE), urlauth.KEYS_MAILDIR)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            with open(path) as f:
                import json

                (key,) = json.load(f).values()
            self.assertNotIn(key.encode(), seen)

        return in_thread(run).addCallback(check)

    def test_delete_and_rename_drop_the_key(self):
        def run():
            c = self.client()
            for n, name in enumerate((b"Gone", b"Moved")):
                c.command(b"C%d CREATE %s" % (n, name))
                c.send(b"A%d APPEND %s {%d+}\r\n" % (n, name, len(MESSAGE)) + MESSAGE + b"\r\n")
                c.until(b"A%d" % n)
            gone = self.genurlauth(c, b"imap://alice@example.test/Gone/;uid=1;urlauth=authuser")
            moved = self.genurlauth(c, b"imap://alice@example.test/Moved/;uid=1;urlauth=authuser")
            self.assertIn(MESSAGE, self.urlfetch(c, gone))
            self.assertIn(MESSAGE, self.urlfetch(c, moved))
            c.command(b"D1 DELETE Gone")
            c.command(b"R1 RENAME Moved Gone")
            # A mailbox now named Gone, holding a message with UID 1: the old URLs still fetch nothing.
            after = (self.urlfetch(c, gone), self.urlfetch(c, moved))
            fresh = self.genurlauth(c, b"imap://alice@example.test/Gone/;uid=1;urlauth=authuser")
            return after, self.urlfetch(c, fresh)

        def check(result):
            (gone, moved), fresh = result
            self.assertIn(b" NIL", gone)
            self.assertIn(b" NIL", moved)
            self.assertIn(MESSAGE, fresh)

        return in_thread(run).addCallback(check)

    def test_bad_input(self):
        def run():
            c = self.client()
            answers = [
                c.command(b'G1 GENURLAUTH "imap://alice@example.test/INBOX/;uid=1" INTERNAL')[-1],
                c.command(b'G2 GENURLAUTH "imap://alice@example.test/INBOX/;uid=1;urlauth=anonymous" XYZZY')[-1],
                c.command(b'G3 GENURLAUTH "imap://alice@example.test/NoBox/;uid=1;urlauth=anonymous" INTERNAL')[-1],
                c.command(b"G4 GENURLAUTH")[-1],
                b"".join(c.command(b'F1 URLFETCH "not a url"')),
                c.command(b"F2 URLFETCH")[-1],
            ]
            return answers

        def check(answers):
            self.assertTrue(answers[0].startswith(b"G1 BAD"), answers[0])
            self.assertTrue(answers[1].startswith(b"G2 NO"), answers[1])
            self.assertTrue(answers[2].startswith(b"G3 NO"), answers[2])
            self.assertTrue(answers[3].startswith(b"G4 BAD"), answers[3])
            self.assertIn(b'* URLFETCH "not a url" NIL', answers[4])
            self.assertTrue(answers[5].startswith(b"F2 BAD"), answers[5])

        return in_thread(run).addCallback(check)


class URLAuthMbox(URLAuth):
    store = "mbox"

    def test_key_is_private_and_never_sent(self):
        def run():
            uid = self.setup_message()
            c = self.client()
            self.genurlauth(c, self.rump(uid, b"authuser"))

        def check(_):
            path = os.path.join(self.server.maildir(ALICE), urlauth.KEYS_MBOX)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

        return in_thread(run).addCallback(check)


NESTED = (
    b"From: user@domain.org\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
    b"--b\r\n"
    b"Content-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    b"aGVs\r\nbG8gd29y\r\nbGQ=\r\n"
    b"\r\n--b\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    b"AAEC/w==\r\n"
    b"--b--\r\n"
)


class URLAuthBinary(unittest.TestCase):
    """RFC 5524 URLAUTH=BINARY: URLFETCH (url BINARY / BODYPARTSTRUCTURE / BODY)."""

    setUp = URLAuth.setUp
    drain = URLAuth.drain
    client = URLAuth.client
    genurlauth = URLAuth.genurlauth
    store = "maildir"

    def fetch_params(self, section, params):
        def run():
            c = self.client()
            c.send(b"A1 APPEND INBOX {%d+}\r\n" % len(NESTED) + NESTED + b"\r\n")
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", b"".join(c.until(b"A1"))).group(1))
            url = self.genurlauth(c, b"imap://alice@example.test/INBOX/;uid=%d/;section=%s;urlauth=authuser" % (uid, section))
            answer = b"".join(c.command(b"F1 URLFETCH (" + url + b" " + params + b")"))
            return url, answer

        return in_thread(run)

    @defer.inlineCallbacks
    def test_binary_of_a_leaf_is_decoded(self):
        url, answer = yield self.fetch_params(b"2", b"BINARY")
        # NUL and 8-bit octets: a literal8 (RFC 3516 4.4)
        self.assertIn(b'* URLFETCH "' + url + b'" (BINARY ~{4}\r\n\x00\x01\x02\xff)', answer)

    @defer.inlineCallbacks
    def test_binary_of_an_attached_message_decodes_its_parts(self):
        url, answer = yield self.fetch_params(b"1", b"BINARY")
        inner = (
            b"Subject: inner\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\nhello world"
        )
        self.assertIn(b"(BINARY {%d}\r\n" % len(inner) + inner + b")", answer)

    @defer.inlineCallbacks
    def test_bodypartstructure_alone_describes_the_part_as_stored(self):
        url, answer = yield self.fetch_params(b"1.1", b"BODYPARTSTRUCTURE")
        self.assertIn(
            b'(BODYPARTSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "BASE64" 22 3 NIL NIL NIL NIL))', answer
        )

    @defer.inlineCallbacks
    def test_with_binary_the_structure_has_the_decoded_sizes(self):
        url, answer = yield self.fetch_params(b"1.1", b"BINARY BODYPARTSTRUCTURE")
        self.assertIn(
            b'(BODYPARTSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "BASE64" 11 0 NIL NIL NIL NIL)'
            b" BINARY {11}\r\nhello world)",
            answer,
        )

    @defer.inlineCallbacks
    def test_body_is_the_part_as_stored(self):
        url, answer = yield self.fetch_params(b"1.1", b"BODY")
        self.assertIn(b"(BODY {22}\r\naGVs\r\nbG8gd29y\r\nbGQ=\r\n)", answer)

    @defer.inlineCallbacks
    def test_unknown_parameter_is_bad(self):
        url, answer = yield self.fetch_params(b"1", b"SIZE")
        self.assertIn(b"F1 BAD", answer)

    @defer.inlineCallbacks
    def test_a_part_that_is_not_there_is_nil(self):
        url, answer = yield self.fetch_params(b"9", b"BINARY")
        self.assertIn(b'* URLFETCH "' + url + b'" NIL', answer)
