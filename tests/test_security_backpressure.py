"""
Bounded memory per connection (issue 17 #4): a client that pipelines and
never reads its answers makes the server stop reading, not grow; every
command is still answered, in order, once the client reads. Before login an
IMAP command's literals are bounded in total, and a rejected command is
dropped as it arrives, never held whole.

Over real loopback sockets: the client's receive buffer and the server
socket's send buffer are made small, so what the server does not stop
producing piles up in its own memory, where the test can see it.
"""

import socket
import threading
import time

from twisted.internet import defer, reactor, tcp
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailplat.backpressure import ANSWERING, Flow
from mailplat.imap.server import MAX_COMMAND, MAX_LITERALS_BEFORE_LOGIN
from tests.helpers import LineClient, MailServer, in_thread
from tests.imap_support import MemoryIMAP, RawClient

SMALL = 16 * 1024  # socket buffers on both sides of the flood
BIG_MESSAGE = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300  # 300 KB


def sessions_on(port):
    return [
        s
        for s in set(reactor.getReaders()) | set(reactor.getWriters())
        if isinstance(s, tcp.Server) and s.getHost().port == port
    ]


def unsent(session):
    """Octets the server has written but the kernel has not taken (Twisted's own buffer)."""
    return len(session.dataBuffer) - session.offset + session._tempDataLen


class Flood:
    """
    A raw client that logs in (`prelude`), waits for `go`, then sends
    `flood` in one go without reading; `read(parse)` reads everything
    afterwards, in its own thread, while the sending may still be blocked.
    """

    def __init__(self, port, prelude, flood):
        self.port = port
        self.prelude = prelude
        self.flood = flood
        self.ready = threading.Event()
        self.go = threading.Event()
        self.sock = None

    def send(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
        s.settimeout(60)
        s.connect(("127.0.0.1", self.port))
        self.sock = s
        self.file = s.makefile("rb")
        self.prelude(self)
        self.ready.set()
        self.go.wait(30)
        s.sendall(self.flood)

    def line(self):
        return self.file.readline()

    def command(self, text, tag):
        self.sock.sendall(text)
        while True:
            line = self.line()
            if not line or line.startswith(tag + b" "):
                return line

    def read_all(self):
        """Everything up to the server's close, and the seconds from the last octet to the close."""
        chunks = []
        last = time.monotonic()
        while True:
            chunk = self.file.read1(1 << 20)
            if not chunk:
                return b"".join(chunks), time.monotonic() - last
            chunks.append(chunk)
            last = time.monotonic()

    def close(self):
        if self.sock is not None:
            self.sock.close()


class PipeliningWithoutReading(unittest.TestCase):
    """The server stops reading once its answers wait for the client; nothing is lost."""

    timeout = 120

    @defer.inlineCallbacks
    def flood(self, port, prelude, flood, held_input):
        """
        Run the flood; the largest unsent output and held input seen while
        the client did not read, whether the server still read at the end,
        then everything the client read and how long the close took.
        """
        client = Flood(port, prelude, flood)
        self.addCleanup(client.close)
        sending = in_thread(client.send)
        for _ in range(600):
            if client.ready.is_set():
                break
            yield deferLater(reactor, 0.05, lambda: None)
        (session,) = sessions_on(port)
        session.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        client.go.set()
        most_unsent = most_held = 0
        last, steady = None, 0
        for _ in range(200):  # until the server stopped reading and nothing changed for half a second
            yield deferLater(reactor, 0.05, lambda: None)
            now = (unsent(session), held_input(session.protocol))
            most_unsent, most_held = max(most_unsent, now[0]), max(most_held, now[1])
            steady = steady + 1 if now == last else 0
            last = now
            reading = session in reactor.getReaders()
            if steady >= 10 and not reading:
                break
        data, closing = yield in_thread(client.read_all)
        yield sending
        return most_unsent, most_held, reading, data, closing

    @defer.inlineCallbacks
    def test_smtp_noop_flood_before_login_on_the_mx_port(self):
        server = yield MailServer(self, listeners=("smtp",)).start()
        count = 100_000  # 600 KB of commands, 1.4 MB of answers

        def greet(c):
            assert c.line().startswith(b"220 ")

        flood = b"NOOP\r\n" * count + b"QUIT\r\n"
        most_unsent, most_held, reading, data, closing = yield self.flood(
            server.port("smtp"), greet, flood, lambda p: len(p._buffer)
        )
        self.assertLess(most_unsent, 256 * 1024)
        self.assertLess(most_held, 1024 * 1024 + 65536)
        self.assertFalse(reading, "the server still reads a client that does not read")
        lines = data.split(b"\r\n")
        self.assertEqual(lines.count(b"250 2.0.0 OK"), count)
        self.assertTrue(lines[-2].startswith(b"221 "), lines[-3:])
        self.assertLess(closing, 3)  # closed, not aborted after the grace

    @defer.inlineCallbacks
    def test_imap_fetch_of_a_large_message_pipelined(self):
        imap = MemoryIMAP(self)
        imap.inbox.add(BIG_MESSAGE)
        count = 40  # 12 MB of answers

        def login(c):
            c.line()
            assert b"L1 OK" in c.command(b"L1 LOGIN alice pw\r\n", b"L1")
            assert b"S1 OK" in c.command(b"S1 SELECT INBOX\r\n", b"S1")

        flood = b"".join(b"F%d FETCH 1 BODY.PEEK[]\r\n" % i for i in range(count)) + b"Z LOGOUT\r\n"
        most_unsent, _, reading, data, closing = yield self.flood(imap.port, login, flood, lambda p: len(p._buf))
        self.assertLess(most_unsent, 2 * len(BIG_MESSAGE))
        self.assertFalse(reading, "the server still reads a client that does not read")
        literal = b"BODY[] {%d}\r\n" % len(BIG_MESSAGE) + BIG_MESSAGE + b")\r\n"
        self.assertEqual(data.count(literal), count)
        for i in range(count):
            self.assertIn(b"\r\nF%d OK" % i, data)
        self.assertLess(data.index(b"\r\nF%d OK" % (count - 1)), data.index(b"\r\nZ OK"))
        self.assertLess(closing, 3)

    @defer.inlineCallbacks
    def test_pop3_retr_pipelined(self):
        server = yield MailServer(
            self, listeners=("smtp", "pop3"), extra="[tls]\nallow_plaintext_auth = true\n"
        ).start(users={"alice@example.test": "pw"})

        def deliver():
            c = LineClient(server.port("smtp"))
            try:
                c.send(b"HELO x\r\nMAIL FROM:<c@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
                for _ in range(5):  # greeting, HELO, MAIL, RCPT, DATA
                    c.smtp_reply()
                c.send(BIG_MESSAGE + b".\r\nQUIT\r\n")
                assert c.smtp_reply()[0] == 250
            finally:
                c.sock.close()

        yield in_thread(deliver)
        count = 40

        def login(c):
            c.line()
            c.sock.sendall(b"USER alice@example.test\r\nPASS pw\r\n")
            c.line()
            assert c.line().startswith(b"+OK"), "login"

        flood = b"RETR 1\r\n" * count + b"QUIT\r\n"
        most_unsent, _, reading, data, closing = yield self.flood(
            server.port("pop3"), login, flood, lambda p: len(p._buffer)
        )
        self.assertLess(most_unsent, 2 * len(BIG_MESSAGE))
        self.assertFalse(reading, "the server still reads a client that does not read")
        self.assertEqual(data.count(BIG_MESSAGE[-1000:] + b".\r\n"), count)
        self.assertEqual(data.count(b"+OK "), count + 1)
        self.assertTrue(data.endswith(b"\r\n") and b"signing off" in data.rsplit(b"\r\n", 2)[-2])
        self.assertLess(closing, 3)


class LiteralsBeforeLogin(unittest.TestCase):
    """RFC 7888 4 lets a server refuse literals; before login their total is bounded."""

    def setUp(self):
        self.imap = MemoryIMAP(self)
        self.built = []
        build = self.imap.factory.buildProtocol
        self.imap.factory.buildProtocol = lambda addr: self.built.append(build(addr)) or self.built[-1]

    def logout(self, c):
        lines = c.command(b"Z LOGOUT")
        c.file.read()  # to the server's close: no session outlives the test
        return lines

    def held(self):
        p = self.built[0]
        return sum(len(s) for s in p._segments or ()) + sum(len(c) for c in p._literal_chunks or ())

    @defer.inlineCallbacks
    def test_many_literals_in_one_command_are_refused_and_not_kept(self):
        value = b"v" * 60000
        parts = [b'"f%d" {%d+}\r\n' % (i, len(value)) + value for i in range(40)]  # 2.4 MB
        c = yield in_thread(RawClient, self.imap.port, timeout=30)
        self.addCleanup(c.close)
        yield in_thread(c.send, b"A1 ID (" + b" ".join(parts))
        most = 0
        last, steady = None, 0
        while steady < 6:
            yield deferLater(reactor, 0.05, lambda: None)
            now = (len(self.built[0]._buf), self.held())
            most = max(most, now[1])
            steady = steady + 1 if now == last else 0
            last = now
        self.assertLessEqual(most, MAX_LITERALS_BEFORE_LOGIN + MAX_COMMAND)
        yield in_thread(c.send, b")\r\n")
        answer = yield in_thread(c.until, b"A1")
        self.assertTrue(answer[-1].startswith(b"A1 BAD"), answer)
        after = yield in_thread(c.command, b"N1 NOOP")
        self.assertTrue(after[-1].startswith(b"N1 OK"), after)
        yield in_thread(self.logout, c)

    @defer.inlineCallbacks
    def test_login_with_literals_still_works(self):
        c = yield in_thread(RawClient, self.imap.port)
        self.addCleanup(c.close)
        answer = yield in_thread(c.command, b"L1 LOGIN {5+}\r\nalice {2+}\r\npw")
        self.assertTrue(answer[-1].startswith(b"L1 OK"), answer)
        yield in_thread(self.logout, c)


class ClosingAfterTLS(unittest.TestCase):
    """The session's producer never keeps a TLS connection from closing (no wait for the abort)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_imap_logout_after_starttls_closes_at_once(self):
        imap = MemoryIMAP(self, tls=True)

        def run():
            c = RawClient(imap.port)
            try:
                assert c.command(b"T1 STARTTLS")[-1].startswith(b"T1 OK")
                c.starttls()
                lines = c.command(b"Z LOGOUT")
                start = time.monotonic()
                rest = c.file.read()
                return lines, rest, time.monotonic() - start
            finally:
                c.close()

        lines, rest, seconds = yield in_thread(run)
        self.assertTrue(lines[-1].startswith(b"Z OK"), lines)
        self.assertEqual(rest, b"")
        self.assertLess(seconds, 2)

    @defer.inlineCallbacks
    def closes_at_once(self, port, before, starttls, after, implicit=False):
        def run():
            c = LineClient(port, tls=implicit)
            try:
                c.send(before)
                while True:
                    line = c.line()
                    if line.startswith(starttls) or not line:
                        break
                if not implicit:
                    c.starttls()
                c.send(after)
                start = time.monotonic()
                try:
                    while True:
                        c.line()
                except EOFError:
                    return time.monotonic() - start
            finally:
                c.sock.close()

        seconds = yield in_thread(run)
        self.assertLess(seconds, 2)

    @defer.inlineCallbacks
    def test_smtp_quit_after_starttls_closes_at_once(self):
        server = yield MailServer(self, listeners=("submission",)).start()
        yield self.closes_at_once(server.port("submission"), b"EHLO x\r\nSTARTTLS\r\n", b"220 2.0.0", b"QUIT\r\n")

    @defer.inlineCallbacks
    def test_pop3_quit_after_stls_closes_at_once(self):
        server = yield MailServer(self, listeners=("pop3",)).start()
        yield self.closes_at_once(server.port("pop3"), b"STLS\r\n", b"+OK begin", b"QUIT\r\n")

    @defer.inlineCallbacks
    def test_smtp_quit_on_implicit_tls_closes_at_once(self):
        server = yield MailServer(self, listeners=("smtps",)).start()
        yield self.closes_at_once(server.port("smtps"), b"NOOP\r\n", b"250 ", b"QUIT\r\n", implicit=True)


class TwoReasonsToWait(unittest.TestCase):
    """One Flow per connection: a running command and a full send buffer each hold it on their own."""

    def setUp(self):
        self.transport = StringTransport()
        self.proceeded = 0
        self.buffer = b""

        def proceed():
            self.proceeded += 1

        self.flow = Flow(proceed, lambda: len(self.buffer), input_limit=10)
        self.flow.attach(self.transport)

    def test_registers_as_the_connections_streaming_producer(self):
        self.assertIs(self.transport.producer, self.flow)
        self.assertTrue(self.transport.streaming)

    def test_a_command_ending_does_not_resume_a_full_buffer(self):
        self.flow.hold(ANSWERING)
        self.flow.pauseProducing()  # the send buffer filled
        self.assertEqual(self.transport.producerState, "paused")  # not reading
        self.flow.release(ANSWERING)
        self.assertTrue(self.flow.paused)
        self.assertEqual(self.proceeded, 0)
        self.flow.resumeProducing()
        self.assertFalse(self.flow.paused)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.proceeded, 1)

    def test_a_drained_buffer_does_not_resume_a_running_command(self):
        self.flow.pauseProducing()
        self.flow.hold(ANSWERING)
        self.flow.resumeProducing()
        self.assertTrue(self.flow.paused)
        self.assertEqual(self.proceeded, 0)
        self.assertEqual(self.transport.producerState, "producing")  # input is read meanwhile
        self.flow.release(ANSWERING)
        self.assertEqual(self.proceeded, 1)

    def test_input_waiting_for_a_command_is_bounded(self):
        self.flow.hold(ANSWERING)
        self.buffer = b"x" * 11
        self.flow.received()
        self.assertEqual(self.transport.producerState, "paused")
        self.buffer = b""
        self.flow.release(ANSWERING)
        self.assertEqual(self.transport.producerState, "producing")

    def test_a_drain_while_closing_steps_aside(self):
        self.flow.pauseProducing()
        waiting = self.flow.writable()
        self.transport.loseConnection()
        self.flow.resumeProducing()
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.proceeded, 0)
        self.assertTrue(waiting.called)
