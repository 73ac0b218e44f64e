"""
Sessions that dribble (issue 17 #7): a byte every half second keeps the
idle timer from ever firing, so a command line has its own total bound
(command_timeout) and a DATA its own (data_total_timeout).
"""

import socket
import time

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, in_thread

COMMAND_TIMEOUT = 2
DATA_TOTAL_TIMEOUT = 3
GIVE_UP = 12  # seconds of dribbling before the test calls it a failure


def dribble(sock, prefix=b""):
    """
    Send `prefix`, then one byte every half second until the server closes.
    @return: (seconds from the first dribbled byte to the close, or None
        after GIVE_UP; everything the server sent)
    """
    received = b""
    sock.settimeout(0.5)
    sock.sendall(prefix)
    start = time.monotonic()
    while time.monotonic() - start < GIVE_UP:
        try:
            sock.sendall(b"x")
        except OSError:
            return time.monotonic() - start, received
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - start, received
        if not chunk:
            return time.monotonic() - start, received
        received += chunk
    return None, received


def read_until(sock, marker):
    data = b""
    sock.settimeout(10)
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class Dribbling(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(
            self,
            listeners=("smtp", "imap", "pop3"),
            extra=(
                "[limits]\n"
                f"command_timeout = {COMMAND_TIMEOUT}\n"
                f"data_total_timeout = {DATA_TOTAL_TIMEOUT}\n"
            ),
        )
        yield self.server.start(users={"alice@example.test": "pw"})

    def connect(self, name, greeting):
        sock = socket.create_connection(("127.0.0.1", self.server.port(name)), timeout=10)
        self.addCleanup(sock.close)
        read_until(sock, greeting)
        return sock

    def assertCutOff(self, result, bound):
        elapsed, received = result
        self.assertIsNotNone(elapsed, f"still open after {GIVE_UP} s of dribbling; got {received!r}")
        self.assertLess(elapsed, bound + 3)

    @defer.inlineCallbacks
    def test_smtp_command_line(self):
        result = yield in_thread(lambda: dribble(self.connect("smtp", b"\r\n"), b"HELO "))
        self.assertCutOff(result, COMMAND_TIMEOUT)
        self.assertIn(b"421", result[1])

    @defer.inlineCallbacks
    def test_smtp_data(self):
        def run():
            sock = self.connect("smtp", b"\r\n")
            sock.sendall(b"HELO client.test\r\nMAIL FROM:<bob@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            read_until(sock, b"354")
            return dribble(sock, b"Subject: slow\r\n\r\n")

        result = yield in_thread(run)
        self.assertCutOff(result, DATA_TOTAL_TIMEOUT)
        self.assertIn(b"421", result[1])

    @defer.inlineCallbacks
    def test_imap_command_line(self):
        result = yield in_thread(lambda: dribble(self.connect("imap", b"\r\n"), b"a1 NOOP"))
        self.assertCutOff(result, COMMAND_TIMEOUT)
        self.assertIn(b"* BYE", result[1])

    @defer.inlineCallbacks
    def test_imap_literal(self):
        def run():
            sock = self.connect("imap", b"\r\n")
            return dribble(sock, b"a1 ID ({1000+} ")

        result = yield in_thread(run)
        self.assertCutOff(result, DATA_TOTAL_TIMEOUT)

    @defer.inlineCallbacks
    def test_pop3_command_line(self):
        result = yield in_thread(lambda: dribble(self.connect("pop3", b"\r\n"), b"USER "))
        self.assertCutOff(result, COMMAND_TIMEOUT)
        self.assertIn(b"-ERR", result[1])

    @defer.inlineCallbacks
    def test_a_slow_but_steady_session_is_not_cut(self):
        # Whole lines, each well within the bound, keep a session alive
        # past both bounds.
        def run():
            sock = self.connect("smtp", b"\r\n")
            answers = b""
            for _ in range(4):
                time.sleep(1)
                sock.sendall(b"NOOP\r\n")
                answers += read_until(sock, b"\r\n")
            return answers

        answers = yield in_thread(run)
        self.assertEqual(answers.count(b"250"), 4)
