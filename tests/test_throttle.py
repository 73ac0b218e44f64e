"""
Failed-login throttling and connection limits, shared by every protocol
(issue 4 #6): a client address that keeps guessing is slowed, then refused
for a while, on SMTP and POP3 alike.
"""

import poplib
import smtplib

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.throttle import ConnectionLimiter, LoginThrottle
from tests.helpers import LineClient, MailServer, client_tls, in_thread

USERS = {"alice@example.test": "right"}
STRICT = "[limits]\nauth_failures = 3\nauth_failure_delay = 0\nconnections_per_ip = 4\n"


def smtp_login(server, password):
    def run():
        with smtplib.SMTP_SSL("127.0.0.1", server.port("smtps"), context=client_tls()) as s:
            # One attempt per call (smtplib's login() tries every mechanism).
            s.ehlo()
            s.user, s.password = "alice@example.test", password
            try:
                s.auth("PLAIN", s.auth_plain)
                return 235
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code

    return in_thread(run)


def pop3_login(server, password):
    def run():
        p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls())
        try:
            p.user("alice@example.test")
            p.pass_(password)
            return "+OK"
        except poplib.error_proto as e:
            return e.args[0].decode()
        finally:
            p.close()

    return in_thread(run)


class LoginThrottleUnit(unittest.TestCase):
    def test_refuses_after_max_failures_within_the_window(self):
        now = [0.0]
        t = LoginThrottle(max_failures=3, window=60, clock=lambda: now[0])
        for _ in range(3):
            self.assertFalse(t.blocked("1.2.3.4"))
            t.failed("1.2.3.4")
        self.assertTrue(t.blocked("1.2.3.4"))
        self.assertFalse(t.blocked("5.6.7.8"))
        now[0] = 61
        self.assertFalse(t.blocked("1.2.3.4"))

    def test_each_failure_delays_the_next_answer_more(self):
        t = LoginThrottle(max_failures=5, window=60, clock=lambda: 0.0, step=1.0)
        delays = []
        for _ in range(3):
            delays.append(t.delay("a"))
            t.failed("a")
        self.assertEqual(delays, [0.0, 1.0, 2.0])

    def test_success_forgets_the_failures(self):
        t = LoginThrottle(max_failures=2, window=60, clock=lambda: 0.0)
        t.failed("a")
        t.succeeded("a")
        t.failed("a")
        self.assertFalse(t.blocked("a"))

    def test_connection_limiter_counts_per_address(self):
        c = ConnectionLimiter(2)
        self.assertTrue(c.acquire("a"))
        self.assertTrue(c.acquire("a"))
        self.assertFalse(c.acquire("a"))
        self.assertTrue(c.acquire("b"))
        c.release("a")
        self.assertTrue(c.acquire("a"))


class AcrossProtocols(unittest.TestCase):
    @defer.inlineCallbacks
    def test_smtp_auth_refused_with_454_after_repeated_failures_even_with_the_right_password(self):
        server = yield MailServer(self, extra=STRICT).start(users=USERS)
        for _ in range(3):
            code = yield smtp_login(server, "wrong")
            self.assertEqual(code, 535)
        code = yield smtp_login(server, "right")
        self.assertEqual(code, 454)

    @defer.inlineCallbacks
    def test_failures_on_smtp_block_pop3_logins_from_the_same_address(self):
        server = yield MailServer(self, extra=STRICT).start(users=USERS)
        for _ in range(3):
            yield smtp_login(server, "wrong")
        answer = yield pop3_login(server, "right")
        self.assertIn("too many failed logins", answer)

    @defer.inlineCallbacks
    def test_a_successful_login_before_the_limit_resets_the_count(self):
        server = yield MailServer(self, extra=STRICT).start(users=USERS)
        yield smtp_login(server, "wrong")
        yield smtp_login(server, "wrong")
        code = yield smtp_login(server, "right")
        self.assertEqual(code, 235)
        yield smtp_login(server, "wrong")
        code = yield smtp_login(server, "right")
        self.assertEqual(code, 235)

    @defer.inlineCallbacks
    def test_connections_over_the_per_address_limit_get_421(self):
        server = yield MailServer(self, extra=STRICT).start(users=USERS)

        def run():
            clients = [LineClient(server.port("smtp")) for _ in range(4)]
            greetings = [c.smtp_reply()[0] for c in clients]
            extra = LineClient(server.port("smtp"))
            refused = extra.smtp_reply()
            closed = extra.closed()
            for c in clients + [extra]:
                c.close()
            return greetings, refused, closed

        greetings, refused, closed = yield in_thread(run)
        self.assertEqual(greetings, [220] * 4)
        self.assertEqual(refused[0], 421)
        self.assertTrue(closed)


class WaitingForASlot(unittest.TestCase):
    """L{LoginThrottle.admit}: over the pending limit a login waits its turn."""

    def setUp(self):
        self.now = [0.0]
        self.throttle = LoginThrottle(2, window=60, clock=lambda: self.now[0], step=0)

    def admitted(self, address="192.0.2.1", user=b"u"):
        out = []
        self.throttle.admit(address, user).addCallback(out.append)
        return out

    def test_a_login_over_the_pending_limit_waits_for_a_slot(self):
        first, second, third = self.admitted(), self.admitted(), self.admitted()
        self.assertEqual(len(first) + len(second), 2)
        self.assertEqual(third, [])
        first[0].failed()  # one failure and one pending: still no room
        self.assertEqual(third, [])
        second[0].succeeded()  # one failure, nothing pending: room for one
        self.assertEqual(len(third), 1)
        self.assertIsNotNone(third[0])

    def test_waiting_logins_are_refused_once_the_failures_reach_the_limit(self):
        first, second, third = self.admitted(), self.admitted(), self.admitted()
        first[0].failed()
        second[0].failed()
        self.assertEqual(third, [None])
        self.assertEqual(self.admitted(), [None])

    def test_other_addresses_do_not_wait(self):
        self.admitted(), self.admitted()
        self.assertEqual(len(self.admitted(address="192.0.2.2")), 1)
