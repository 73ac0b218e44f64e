"""
One calling convention at the seam (issue 13 item 1): the server calls every
backend through mailplat.calls.call_backend, so a realm (or any backend)
may answer with a plain value, a Deferred or from an `async def`, and an
unexpected exception is a logged temporary failure. Logins over IMAP, POP3
and SMTP AUTH work through a running server with each style of realm.
"""

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

from mailplat import plugin
from mailplat.calls import call_backend, calling, client_text
from mailplat.interfaces import IRealmBackend, PermanentFailure, TemporaryFailure
from mailplat.realm import passwords
from mailplat.testing.server import imap_login, pop3_login, smtp_login
from tests.helpers import MailServer, collect_log, in_thread


class Values(unittest.TestCase):
    """call_backend turns the three styles into one Deferred."""

    def test_a_plain_value_is_a_fired_deferred(self):
        d = call_backend(lambda a: a + 1, 1)
        self.assertEqual(self.successResultOf(d), 2)

    def test_a_deferred_is_passed_on(self):
        inner = defer.Deferred()
        d = call_backend(lambda: inner)
        self.assertNoResult(d)
        inner.callback("late")
        self.assertEqual(self.successResultOf(d), "late")

    def test_a_coroutine_is_run(self):
        clock = task.Clock()

        async def method(x):
            await task.deferLater(clock, 1, lambda: None)
            return x * 2

        d = call_backend(method, 21)
        self.assertNoResult(d)
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), 42)

    def test_keyword_arguments_reach_the_method(self):
        self.assertEqual(self.successResultOf(call_backend(lambda a, folder=None: (a, folder), 1, folder="Junk")),
                         (1, "Junk"))


class Failures(unittest.TestCase):
    def test_an_unexpected_exception_becomes_a_logged_temporary_failure(self):
        def broken(address):
            return {}["missing"]

        failure = self.failureResultOf(call_backend(broken, "a@example.test"), TemporaryFailure)
        self.assertIn("KeyError", failure.value.text)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_an_exception_in_an_async_def_becomes_a_temporary_failure(self):
        async def broken():
            raise RuntimeError("database driver exploded")

        self.failureResultOf(call_backend(broken), TemporaryFailure)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_failure_of_the_contract_goes_through_unchanged(self):
        e = PermanentFailure("over quota for good", "5.2.2", 552)
        failure = self.failureResultOf(call_backend(lambda: defer.fail(e)), PermanentFailure)
        self.assertIs(failure.value, e)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_plugins_failure_text_is_not_public_unless_it_says_so(self):
        hidden = self.failureResultOf(call_backend(lambda: defer.fail(TemporaryFailure("cannot read /etc/x: bad"))))
        self.assertFalse(hidden.value.public)
        self.assertNotIn("/etc/x", client_text(hidden.value))
        shown = TemporaryFailure("mailbox is being moved, try in an hour", public=True)
        self.failureResultOf(call_backend(lambda: defer.fail(shown)))
        self.assertEqual(client_text(shown), "mailbox is being moved, try in an hour")

    def test_a_call_holding_the_reactor_is_logged(self):
        import time

        log = collect_log(self)

        def slow():
            time.sleep(0.15)  # over calls.SLOW_CALL (0.1 s), whatever the machine's load
            return "late"

        self.assertEqual(self.successResultOf(call_backend(slow)), "late")
        self.assertTrue([t for t in log if "held the reactor" in t and "slow" in t], log)

    def test_expected_exceptions_can_be_let_through(self):
        self.failureResultOf(calling(KeyError)(lambda: {}["gone"]), KeyError)
        self.assertEqual(self.flushLoggedErrors(), [])


# --- realms written in each style, through a running server -----------------


def _users(path):
    with open(path) as f:
        return dict(line.strip().split(":", 1) for line in f if ":" in line)


@implementer(IRealmBackend)
class PlainValueRealm:
    """Answers from memory with plain values (PLAIN hashes: fast)."""

    def __init__(self, path):
        self.path = path

    def lookup(self, address):
        return address.lower() if address.lower() in _users(self.path) else None

    def check_password(self, address, password):
        stored = _users(self.path).get(address.lower())
        return address.lower() if stored and passwords.verify(stored, password) else None

    def list_users(self):
        return sorted(_users(self.path))


@implementer(IRealmBackend)
class AsyncRealm:
    """Every method `async def`, the hash checked in the hashing pool."""

    def __init__(self, path):
        self.path = path

    async def lookup(self, address):
        return address.lower() if address.lower() in _users(self.path) else None

    async def check_password(self, address, password):
        stored = _users(self.path).get(address.lower())
        ok = await passwords.verify_later(stored or passwords.dummy_hash(), password)
        return address.lower() if ok and stored else None

    async def list_users(self):
        return sorted(_users(self.path))


class RealmServer(MailServer):
    def __init__(self, testcase, backend):
        super().__init__(testcase, listeners=("imaps", "pop3s", "smtps", "submission"))
        self.backend = backend

    def config_text(self):
        return super().config_text().replace('backend = "passwd-file"', f'backend = "{self.backend}"', 1)


class LoginsWithEachStyle:
    realm_class = None

    @defer.inlineCallbacks
    def setUp(self):
        name = f"style-{self.realm_class.__name__.lower()}"
        offered = plugin.BackendPlugin("realm", name, "a test realm", lambda s, c: self.realm_class(s["path"]),
                                       keys=("path",))
        self.addCleanup(plugin.register(offered))
        self.server = RealmServer(self, name)
        yield self.server.start(users={"alice@example.test": "alice-pw"})

    @defer.inlineCallbacks
    def login(self, login, listener, password="alice-pw"):
        answer = yield in_thread(login, self.server.port(listener), "alice@example.test", password)
        return answer

    @defer.inlineCallbacks
    def test_imap_login(self):
        self.assertEqual((yield self.login(imap_login, "imaps")), "OK")

    @defer.inlineCallbacks
    def test_pop3_login(self):
        self.assertEqual((yield self.login(pop3_login, "pop3s")), "OK")

    @defer.inlineCallbacks
    def test_smtp_auth(self):
        self.assertEqual((yield self.login(smtp_login, "smtps")), "OK")

    @defer.inlineCallbacks
    def test_a_wrong_password_is_refused_not_an_error(self):
        log = collect_log(self)
        answers = []
        for f, listener in ((imap_login, "imaps"), (pop3_login, "pop3s"), (smtp_login, "smtps")):
            answers.append((yield self.login(f, listener, "wrong")))
        self.assertTrue(all(a.startswith("refused") for a in answers), answers)
        self.assertIn("AUTHENTICATIONFAILED", answers[0])
        self.assertIn("535", answers[2])
        self.assertFalse([t for t in log if "failed unexpectedly" in t], log)


class PlainValueRealmLogsIn(LoginsWithEachStyle, unittest.TestCase):
    realm_class = PlainValueRealm


class AsyncRealmLogsIn(LoginsWithEachStyle, unittest.TestCase):
    realm_class = AsyncRealm


@implementer(IRealmBackend)
class CrashingRealm(PlainValueRealm):
    def check_password(self, address, password):
        raise RuntimeError("bug in the plugin")


class CrashingRealmIsATemporaryFailure(LoginsWithEachStyle, unittest.TestCase):
    """A realm raising something unexpected: "try again later", logged, on every protocol."""

    realm_class = CrashingRealm

    @defer.inlineCallbacks
    def _temporary(self, login, listener, expected):
        answer = yield self.login(login, listener)
        self.assertIn(expected, answer)
        self.assertTrue(self.flushLoggedErrors(RuntimeError))

    def test_imap_login(self):
        return self._temporary(imap_login, "imaps", "UNAVAILABLE")

    def test_pop3_login(self):
        return self._temporary(pop3_login, "pop3s", "SYS/TEMP")

    def test_smtp_auth(self):
        return self._temporary(smtp_login, "smtps", "454")

    def test_a_wrong_password_is_refused_not_an_error(self):
        raise unittest.SkipTest("every answer of this realm is an error")
