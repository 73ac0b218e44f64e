"""
COMPRESS=DEFLATE (RFC 4978) over real IMAPS sockets, with imaplib taught
to deflate and inflate: every answer readable as soon as it is sent (the
server flushes per response), literals and pipelining through the
compressed stream, COMPRESSIONACTIVE, unknown mechanisms, corrupt input
and a small stream that inflates to far more than a line may hold.
"""

import imaplib
import socket
import ssl
import zlib

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, in_thread

USER, PASSWORD = "zed@example.test", "pw"
BODY = b"".join(b"line %d of a text that compresses well enough\r\n" % i for i in range(3000))
MESSAGE = b"From: a@example.org\r\nSubject: big\r\n\r\n" + BODY


imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))


class DeflatingIMAP(imaplib.IMAP4_SSL):
    """imaplib.IMAP4_SSL that can switch to COMPRESS=DEFLATE."""

    _out = _in = None

    def compress(self):
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK":
            self._out = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._in = zlib.decompressobj(-15)
            self._plain = b""
        return typ, data

    def send(self, data):
        if self._out is not None:
            data = self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)
        super().send(data)

    def _more(self):
        chunk = self.file.read1(65536)
        if not chunk:
            raise imaplib.IMAP4.abort("socket closed")
        self._plain += self._in.decompress(chunk)

    def read(self, size):
        if self._in is None:
            return super().read(size)
        while len(self._plain) < size:
            self._more()
        out, self._plain = self._plain[:size], self._plain[size:]
        return out

    def readline(self):
        if self._in is None:
            return super().readline()
        while b"\n" not in self._plain:
            self._more()
        end = self._plain.index(b"\n") + 1
        out, self._plain = self._plain[:end], self._plain[end:]
        return out


class Compress(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("imaps",))
        yield self.server.start(users={USER: PASSWORD})
        self.port = self.server.port("imaps")

    def client(self):
        c = DeflatingIMAP("127.0.0.1", self.port, ssl_context=client_tls(), timeout=10)
        self.addCleanup(lambda: c.shutdown())
        return c

    def run_client(self, f):
        return in_thread(f)

    @defer.inlineCallbacks
    def test_advertised_after_login_only(self):
        def run():
            c = self.client()
            before = c.capabilities
            c.login(USER, PASSWORD)
            typ, data = c.capability()
            return before, data[0].split()

        before, after = yield self.run_client(run)
        self.assertNotIn("COMPRESS=DEFLATE", before)
        self.assertIn(b"COMPRESS=DEFLATE", after)

    @defer.inlineCallbacks
    def test_commands_and_literals_through_the_stream(self):
        def run():
            c = self.client()
            c.login(USER, PASSWORD)
            self.assertEqual(c.compress()[0], "OK")
            self.assertEqual(c.append("INBOX", None, None, MESSAGE)[0], "OK")  # a literal, compressed
            c.select("INBOX")
            typ, data = c.fetch("1", "(BODY.PEEK[TEXT])")
            self.assertEqual(c.noop()[0], "OK")  # answered at once: a flush per response
            again = c._simple_command("COMPRESS", "DEFLATE")
            return typ, data, again, c.capability()[1][0]

        typ, data, again, caps = yield self.run_client(run)
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0][1], BODY)
        self.assertEqual(again[0], "NO")
        self.assertIn(b"COMPRESSIONACTIVE", again[1][0])
        self.assertNotIn(b"COMPRESS=DEFLATE", caps)

    @defer.inlineCallbacks
    def test_unknown_mechanism_is_bad(self):
        def run():
            c = self.client()
            c.login(USER, PASSWORD)
            try:
                c._simple_command("COMPRESS", "LZ4")
            except imaplib.IMAP4.error as e:
                return str(e)
            return None

        error = yield self.run_client(run)
        self.assertIn("unknown compression mechanism", error)

    def raw(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s = client_tls().wrap_socket(s)
        self.addCleanup(s.close)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a LOGIN %s %s\r\n" % (USER.encode(), PASSWORD.encode()))
        while not f.readline().startswith(b"a "):
            pass
        return s, f

    @defer.inlineCallbacks
    def test_input_pipelined_with_the_command_is_inflated(self):
        def run():
            s, f = self.raw()
            out = zlib.compressobj(6, zlib.DEFLATED, -15)
            tail = out.compress(b"b NOOP\r\n") + out.flush(zlib.Z_SYNC_FLUSH)
            s.sendall(b"c COMPRESS DEFLATE\r\n" + tail)  # one packet
            ok = f.readline()
            inflater, plain = zlib.decompressobj(-15), b""
            while b"b OK" not in plain:
                plain += inflater.decompress(f.read1(4096))
            return ok, plain

        ok, plain = yield self.run_client(run)
        self.assertTrue(ok.startswith(b"c OK"), ok)
        self.assertIn(b"b OK", plain)

    @defer.inlineCallbacks
    def test_corrupt_input_ends_the_session_and_others_go_on(self):
        def run():
            s, f = self.raw()
            s.sendall(b"c COMPRESS DEFLATE\r\n")
            f.readline()
            s.sendall(b"\xff\xff\xff\xff not deflate at all")
            inflater, plain = zlib.decompressobj(-15), b""
            while True:
                try:
                    chunk = f.read1(4096)
                except (OSError, ssl.SSLError):
                    break
                if not chunk:
                    break
                plain += inflater.decompress(chunk)
            c = self.client()
            return plain, c.login(USER, PASSWORD)[0]

        plain, login = yield self.run_client(run)
        self.assertIn(b"* BYE corrupt compressed data", plain)
        self.assertEqual(login, "OK")

    @defer.inlineCallbacks
    def test_a_stream_that_inflates_past_the_line_limit_is_refused(self):
        def run():
            s, f = self.raw()
            s.sendall(b"c COMPRESS DEFLATE\r\n")
            f.readline()
            out = zlib.compressobj(9, zlib.DEFLATED, -15)
            # 64 MB of one line, about 64 KB on the wire.
            bomb = b"".join(out.compress(b"A" * (1 << 20)) for _ in range(64))
            bomb += out.compress(b"\r\nd NOOP\r\n") + out.flush(zlib.Z_SYNC_FLUSH)
            s.sendall(bomb)
            inflater, plain = zlib.decompressobj(-15), b""
            while b"d OK" not in plain and b"BYE" not in plain:
                chunk = f.read1(4096)
                if not chunk:
                    break
                plain += inflater.decompress(chunk)
            return plain

        plain = yield self.run_client(run)
        self.assertIn(b"BAD line too long", plain)
