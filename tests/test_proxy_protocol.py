"""
Behind a TCP balancer: a `[listen]` endpoint written `haproxy:tcp:...`
(Twisted's PROXY protocol endpoint, versions 1 and 2) takes the client's
address from the PROXY header HAProxy sends (`send-proxy`), so the
Received: field, the connection limits and the login throttle see the
client rather than the balancer. Raw PROXY headers over a socket, then a
real HAProxy (Debian's package; .ci/run installs it) in front of IMAPS.
"""

import imaplib
import os
import shutil
import socket
import ssl
import subprocess
import time

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, free_port, in_thread
from tests.test_relay_delivery import wait_for

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
HAPROXY_SKIP = None if HAPROXY or os.environ.get("MAILPLAT_TEST_HAPROXY_REQUIRED") else "haproxy is not installed"


class ProxiedServer(MailServer):
    """A MailServer whose listeners expect a PROXY header first."""

    def config_text(self):
        return super().config_text().replace('"tcp:port=0:', '"haproxy:tcp:port=0:')


def smtp_through_proxy_header(port, header):
    """Blocking: PROXY header, then one message; the replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(header)
        f = s.makefile("rb")
        replies = [f.readline()]
        for line in (b"EHLO client.test", b"MAIL FROM:<a@remote.test>", b"RCPT TO:<bob@example.test>", b"DATA"):
            s.sendall(line + b"\r\n")
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            replies.append(reply)
        s.sendall(b"Subject: proxied\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        replies.append(f.readline())
        return replies


def received_from(server, address):
    import glob

    paths = glob.glob(os.path.join(server.maildir(address), "new", "*"))
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


class PROXYHeader(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = ProxiedServer(self, listeners=("smtp",))
        yield self.server.start(users={"bob@example.test": "bob-pw"})

    @defer.inlineCallbacks
    def test_version_1_gives_the_client_address(self):
        header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n"
        replies = yield in_thread(smtp_through_proxy_header, self.server.port("smtp"), header)
        self.assertTrue(replies[-1].startswith(b"250"), replies)
        [data] = yield wait_for(lambda: received_from(self.server, "bob@example.test"))
        self.assertIn(b"[192.0.2.7]", data.split(b"\n\n", 1)[0])
        self.assertNotIn(b"[127.0.0.1]", data.split(b"\n\n", 1)[0])

    @defer.inlineCallbacks
    def test_version_2_gives_the_client_address(self):
        import struct

        # RFC-less but documented binary form: signature, PROXY command, TCP over IPv4.
        addresses = socket.inet_aton("198.51.100.9") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 4444, 25)
        header = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses
        replies = yield in_thread(smtp_through_proxy_header, self.server.port("smtp"), header)
        self.assertTrue(replies[-1].startswith(b"250"), replies)
        [data] = yield wait_for(lambda: received_from(self.server, "bob@example.test"))
        self.assertIn(b"[198.51.100.9]", data.split(b"\n\n", 1)[0])

    @defer.inlineCallbacks
    def test_a_connection_without_the_header_gets_nothing(self):
        def plain():
            with socket.create_connection(("127.0.0.1", self.server.port("smtp")), timeout=10) as s:
                s.sendall(b"EHLO client.test\r\n")
                return s.recv(1000)

        answer = yield in_thread(plain)
        self.assertEqual(answer, b"")  # closed: no banner, no traceback


class BehindHAProxy(unittest.TestCase):
    """A real HAProxy with send-proxy in front of IMAPS: the login throttle sees the client's address."""

    skip = HAPROXY_SKIP

    @defer.inlineCallbacks
    def test_imaps_through_haproxy_sees_the_client(self):
        if not HAPROXY:
            self.fail("MAILPLAT_TEST_HAPROXY_REQUIRED is set but haproxy is not installed")
        self.server = ProxiedServer(self, listeners=("imaps",))
        yield self.server.start(users={"bob@example.test": "bob-pw"})
        front = free_port()
        directory = self.mktemp()
        os.makedirs(directory)
        config = os.path.join(directory, "haproxy.cfg")
        with open(config, "w") as f:
            f.write("defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
                    f"listen imaps\n    bind 127.0.0.1:{front}\n"
                    f"    server node 127.0.0.1:{self.server.port('imaps')} send-proxy\n")
        proc = subprocess.Popen([HAPROXY, "-db", "-f", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.terminate(), proc.wait(10)))

        def login():
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", front), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            client = imaplib.IMAP4_SSL("127.0.0.1", front, ssl_context=context, timeout=10)
            try:
                client.login("bob@example.test", "bob-pw")
                return client.select("INBOX")[0]
            finally:
                client.logout()

        # TLS after the PROXY header: a listener without `haproxy:` would
        # take the header for the TLS handshake and fail it.
        self.assertEqual((yield in_thread(login)), "OK")


class HeaderFirstWrapper(unittest.TestCase):
    """The wrapper itself: nothing reaches the protocol before the header, and a missing header ends the connection."""

    def setUp(self):
        from twisted.internet import protocol
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from mailplat.proxyprotocol import HEADER_TIMEOUT, HeaderFirstFactory

        seen = self.seen = []

        class Banner(protocol.Protocol):
            def connectionMade(self):
                seen.append(("connected", self.transport.getPeer().host))
                self.transport.write(b"220 hello\r\n")

            def dataReceived(self, data):
                seen.append(("data", data))

        self.clock = Clock()
        self.timeout = HEADER_TIMEOUT
        factory = HeaderFirstFactory(protocol.Factory.forProtocol(Banner), clock=self.clock)
        self.wrapper = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.wrapper.makeConnection(self.transport)

    def test_a_header_in_two_pieces_then_data(self):
        self.wrapper.dataReceived(b"PROXY TCP4 203.0.113.5 ")
        self.assertEqual(self.seen, [])
        self.assertEqual(self.transport.value(), b"")  # no banner before the header
        self.wrapper.dataReceived(b"127.0.0.1 1234 25\r\nEHLO x\r\n")
        self.assertEqual(self.seen, [("connected", "203.0.113.5"), ("data", b"EHLO x\r\n")])
        self.assertEqual(self.transport.value(), b"220 hello\r\n")

    def test_no_header_in_time_ends_the_connection(self):
        self.clock.advance(self.timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.seen, [])

    def test_a_malformed_header_ends_the_connection_silently(self):
        self.wrapper.dataReceived(b"PROXY NONSENSE\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.seen, [])
