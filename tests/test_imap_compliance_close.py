"""
After LOGOUT over TLS the server closes the TCP connection once its
close_notify is out, without waiting for the client's (RFC 8446 6.1).

imaptest, like other clients, answers our close_notify with nothing and
waits for the server to close; Twisted's TLS layer waited for the client's
close_notify, so each such session hung until the close grace aborted it
(30 s TIMEOUTs in imaptest's runs of scripts it should skip at once).
"""

import socket
import ssl
import time

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.deadlines import CLOSE_GRACE
from tests.helpers import MailServer, client_tls, in_thread
from tests.imap_support import MemoryIMAP


class SilentTLSClient:
    """A TLS client over a memory BIO: it never sends a close_notify of its own."""

    def __init__(self, sock):
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_tls().wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.plain = b""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.incoming.write(data)

    def line(self):
        while b"\n" not in self.plain:
            try:
                self.plain += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            self._receive()
        line, _, self.plain = self.plain.partition(b"\n")
        return line + b"\n"

    def command(self, text):
        tag = text.split(b" ", 1)[0]
        self.tls.write(text + b"\r\n")
        self._flush()
        lines = [self.line()]
        while not lines[-1].startswith(tag + b" "):
            lines.append(self.line())
        return lines

    def seconds_until_server_closes(self):
        """Read (and ignore) what comes, our close_notify never sent: time until TCP EOF."""
        start = time.monotonic()
        self.sock.settimeout(CLOSE_GRACE + 5)
        while True:
            data = self.sock.recv(65536)
            if not data:
                return time.monotonic() - start
            self.incoming.write(data)
            try:
                self.tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass


class CloseAfterLogoutOverTLS(unittest.TestCase):
    @defer.inlineCallbacks
    def test_implicit_tls_logout_closes_without_waiting_for_the_clients_close_notify(self):
        server = MailServer(self, listeners=("imaps",))
        yield server.start(users={"alice@example.test": "pw"})

        def run():
            sock = socket.create_connection(("127.0.0.1", server.port("imaps")), timeout=10)
            self.addCleanup(sock.close)
            c = SilentTLSClient(sock)
            c.line()  # greeting
            c.command(b"a LOGIN alice@example.test pw")
            answer = c.command(b"b LOGOUT")
            return answer, c.seconds_until_server_closes()

        answer, seconds = yield in_thread(run)
        self.assertTrue(answer[-1].startswith(b"b OK"), answer)
        self.assertLess(seconds, CLOSE_GRACE / 2)

    @defer.inlineCallbacks
    def test_logout_after_starttls_closes_without_waiting_for_the_clients_close_notify(self):
        imap = MemoryIMAP(self, tls=True, plaintext=False)

        def run():
            sock = socket.create_connection(("127.0.0.1", imap.port), timeout=10)
            self.addCleanup(sock.close)
            f = sock.makefile("rb")
            f.readline()
            sock.sendall(b"s STARTTLS\r\n")
            f.readline()
            c = SilentTLSClient(sock)
            c.command(b"a LOGIN alice pw")
            answer = c.command(b"b LOGOUT")
            return answer, c.seconds_until_server_closes()

        answer, seconds = yield in_thread(run)
        self.assertTrue(answer[-1].startswith(b"b OK"), answer)
        self.assertLess(seconds, CLOSE_GRACE / 2)
