"""
The login throttle cannot be walked around (issue 17 #6): a good login
does not erase other users' failures from the same address, and parallel
guesses cannot all reach the password check.
"""

import imaplib
import poplib

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, in_thread

LIMITS = "[limits]\nauth_failures = 5\nauth_failure_window = 60\nauth_failure_delay = 0\n"
USERS = {"alice@example.test": "pw", "bob@example.test": "bobs secret"}


def imap_login(port, user, password):
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=20)
    try:
        c.login(user, password)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            c.shutdown()
        except OSError:
            pass


def pop_login(port, user, password):
    p = poplib.POP3_SSL("127.0.0.1", port, context=client_tls(), timeout=20)
    try:
        p.user(user)
        p.pass_(password)
        return True
    except poplib.error_proto:
        return False
    finally:
        p.close()


class ThrottleMixin:
    listener = None
    login = None

    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=(self.listener,), extra=LIMITS)
        yield self.server.start(users=USERS)
        realm = self.server.service.backends.realm
        self.checks = []
        original = realm.check_password

        self.running = self.most_at_once = 0

        def counting(username, password):
            # A slow check (as a real hash is), so parallel guesses overlap.
            self.checks.append(username)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)

            def done(result):
                self.running -= 1
                return result

            return deferLater(reactor, 0.5, original, username, password).addBoth(done)

        realm.check_password = counting

    def attempt(self, user, password):
        return type(self).login(self.server.port(self.listener), user, password)

    @defer.inlineCallbacks
    def test_a_good_login_does_not_erase_guesses_at_others(self):
        outcomes = []
        for _ in range(3):
            for _ in range(4):
                yield in_thread(self.attempt, "bob@example.test", "guess")
            outcomes.append((yield in_thread(self.attempt, "alice@example.test", "pw")))
        # 4 guesses, then alice is in; the next guesses pass the limit of 5,
        # and from then on the address is refused, alice included.
        self.assertEqual(outcomes[0], True)
        self.assertEqual(outcomes[1:], [False, False])
        self.assertLessEqual(self.checks.count("bob@example.test"), 5)

    @defer.inlineCallbacks
    def test_parallel_guesses_cannot_all_be_checked(self):
        results = yield defer.gatherResults([in_thread(self.attempt, "bob@example.test", f"guess{i}") for i in range(20)])
        self.assertEqual(results, [False] * 20)
        self.assertLessEqual(len(self.checks), 5)

    @defer.inlineCallbacks
    def test_parallel_good_logins_all_get_in_a_few_at_a_time(self):
        # A webmail (or imaptest's load mix) logs many users in at once from
        # one address: over the limit they wait for a slot, not a refusal.
        results = yield defer.gatherResults([in_thread(self.attempt, "alice@example.test", "pw") for _ in range(10)])
        self.assertEqual(results, [True] * 10)
        self.assertLessEqual(self.most_at_once, 5)


class IMAPThrottle(ThrottleMixin, unittest.TestCase):
    listener = "imaps"
    login = imap_login


class POP3Throttle(ThrottleMixin, unittest.TestCase):
    listener = "pop3s"
    login = pop_login
