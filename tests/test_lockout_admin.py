"""
Lockout administration (issue 12 #3): `mailplat lockout list|clear` against
the running server over its control socket, and `[limits] trusted_networks`,
whose addresses are never locked out or tarpitted.
"""

import ipaddress
import os
import stat
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer
from twisted.trial import unittest

from mailplat import config as configuration
from mailplat import control
from mailplat.throttle import LoginThrottle
from tests.helpers import MailServer, collect_log, in_thread
from tests.test_security_throttle import imap_login

USERS = {"alice@example.test": "right", "bob@example.test": "bobs"}
LIMITS = "[limits]\nauth_failures = 3\nauth_failure_window = 600\nauth_failure_delay = 0\n"


def run_cli(config_path, *args):
    """`mailplat ARGS` as an operator runs it: (exit status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailplat.cli", "--config", config_path, *args],
        capture_output=True, text=True, timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


class LockoutCLI(unittest.TestCase):
    """`mailplat lockout` against a server running in this process."""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("imaps",), extra=LIMITS)
        yield self.server.start(users=USERS)

    def login(self, user, password):
        return in_thread(imap_login, self.server.port("imaps"), user, password)

    def cli(self, *args):
        return in_thread(run_cli, self.server.config_path, *args)

    @defer.inlineCallbacks
    def lock_out(self):
        for user in ("alice@example.test", "bob@example.test", "alice@example.test"):
            ok = yield self.login(user, "wrong")
            self.assertFalse(ok)
        # Locked: even the right password is refused.
        ok = yield self.login("alice@example.test", "right")
        self.assertFalse(ok)

    @defer.inlineCallbacks
    def test_list_shows_a_locked_out_address_with_the_users_tried(self):
        yield self.lock_out()
        status, out, err = yield self.cli("lockout", "list")
        self.assertEqual(status, 0, err)
        row = next(line for line in out.splitlines() if line.startswith("127.0.0.1 "))
        fields = row.split()
        self.assertEqual(fields[1:3], ["3/3", "locked"])
        self.assertRegex(fields[3], r"^(9|10)m\d+s$")  # free in about 600 s
        self.assertEqual(fields[4], "alice@example.test,bob@example.test")
        self.assertIn("1 address(es) with failed logins", out)

    @defer.inlineCallbacks
    def test_list_shows_an_address_still_under_the_limit_as_failing(self):
        ok = yield self.login("alice@example.test", "wrong")
        self.assertFalse(ok)
        status, out, err = yield self.cli("lockout", "list")
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"127\.0\.0\.1 +1/3 +failing ")

    @defer.inlineCallbacks
    def test_list_with_no_failures_says_none(self):
        status, out, err = yield self.cli("lockout", "list")
        self.assertEqual(status, 0, err)
        self.assertEqual(out, "0 address(es) with failed logins\n")

    @defer.inlineCallbacks
    def test_clear_lets_the_next_good_login_in_at_once(self):
        yield self.lock_out()
        status, out, err = yield self.cli("lockout", "clear", "127.0.0.1")
        self.assertEqual(status, 0, err)
        self.assertIn("cleared 127.0.0.1", out)
        ok = yield self.login("alice@example.test", "right")
        self.assertTrue(ok)
        status, out, err = yield self.cli("lockout", "list")
        self.assertNotIn("127.0.0.1", out)

    @defer.inlineCallbacks
    def test_clear_is_logged(self):
        log = collect_log(self)
        yield self.lock_out()
        yield self.cli("lockout", "clear", "127.0.0.1")
        self.assertTrue(any(line.startswith("lockout-cleared client=[127.0.0.1]") for line in log), log)

    @defer.inlineCallbacks
    def test_clear_accepts_the_ipv4_mapped_form(self):
        yield self.lock_out()
        status, out, err = yield self.cli("lockout", "clear", "::ffff:127.0.0.1")
        self.assertEqual(status, 0, err)
        ok = yield self.login("alice@example.test", "right")
        self.assertTrue(ok)

    @defer.inlineCallbacks
    def test_clear_accepts_a_network(self):
        yield self.lock_out()
        status, out, err = yield self.cli("lockout", "clear", "127.0.0.0/8")
        self.assertEqual(status, 0, err)
        self.assertIn("cleared 127.0.0.1", out)
        ok = yield self.login("alice@example.test", "right")
        self.assertTrue(ok)

    @defer.inlineCallbacks
    def test_clear_of_an_unknown_address_says_so(self):
        yield self.lock_out()
        status, out, err = yield self.cli("lockout", "clear", "192.0.2.9")
        self.assertEqual(status, 1)
        self.assertIn("no failed logins recorded from 192.0.2.9", err)
        # And the lockout that exists is untouched.
        ok = yield self.login("alice@example.test", "right")
        self.assertFalse(ok)

    @defer.inlineCallbacks
    def test_clear_of_something_not_an_address_is_refused(self):
        status, out, err = yield self.cli("lockout", "clear", "mail.example.test")
        self.assertEqual(status, 1)
        self.assertIn("not an address or network: 'mail.example.test'", err)

    def test_control_socket_exists_without_a_relay_and_only_its_owner_may_use_it(self):
        path = control.socket_path(self.server.config.state_dir)
        mode = os.stat(path).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode) & 0o077, 0)

    @defer.inlineCallbacks
    def test_an_unknown_action_is_answered_not_obeyed(self):
        ok, message, _ = yield in_thread(control.ask, self.server.config.state_dir, "shutdown")
        self.assertFalse(ok)
        self.assertIn("unknown action 'shutdown'", message)


class LockoutCLIWithoutServer(unittest.TestCase):
    def test_list_says_no_server_is_running(self):
        directory = tempfile.mkdtemp(prefix="mailplat-lockout-")
        self.addCleanup(__import__("shutil").rmtree, directory, True)
        path = os.path.join(directory, "mailplat.toml")
        with open(path, "w") as f:
            f.write(f'[server]\nstate_dir = "{directory}/var"\n[listen]\nimap = "tcp:port=0"\n')
        status, out, err = run_cli(path, "lockout", "list")
        self.assertEqual(status, 1)
        self.assertIn("no server is running", err)
        self.assertIn("control.sock", err)


class TrustedNetworks(unittest.TestCase):
    """A trusted address (a local webmail) is never locked out or tarpitted."""

    @defer.inlineCallbacks
    def setUp(self):
        extra = '[limits]\nauth_failures = 3\nauth_failure_delay = 1\ntrusted_networks = ["127.0.0.1/32"]\n'
        self.log = collect_log(self)
        self.server = MailServer(self, listeners=("imaps",), extra=extra)
        yield self.server.start(users=USERS)

    @defer.inlineCallbacks
    def test_twenty_wrong_passwords_then_a_good_one_succeeds(self):
        port = self.server.port("imaps")
        started = time.monotonic()
        for _ in range(20):
            ok = yield in_thread(imap_login, port, "alice@example.test", "wrong")
            self.assertFalse(ok)
        ok = yield in_thread(imap_login, port, "alice@example.test", "right")
        self.assertTrue(ok)
        # auth_failure_delay = 1 would make an untrusted client wait 1+2+3+3... s.
        self.assertLess(time.monotonic() - started, 20)
        failed = [line for line in self.log if line.startswith("login-failed ")]
        self.assertEqual(len(failed), 20, failed)
        self.assertIn("client=[127.0.0.1]", failed[0])
        self.assertIn("failures=trusted", failed[0])
        self.assertFalse([line for line in self.log if line.startswith("lockout ")])

    @defer.inlineCallbacks
    def test_a_trusted_address_is_not_listed(self):
        ok = yield in_thread(imap_login, self.server.port("imaps"), "alice@example.test", "wrong")
        self.assertFalse(ok)
        status, out, err = yield in_thread(run_cli, self.server.config_path, "lockout", "list")
        self.assertEqual(status, 0, err)
        self.assertNotIn("127.0.0.1", out)


class TrustedNetworksConfig(unittest.TestCase):
    def load(self, value):
        directory = tempfile.mkdtemp(prefix="mailplat-trusted-")
        self.addCleanup(__import__("shutil").rmtree, directory, True)
        path = os.path.join(directory, "mailplat.toml")
        with open(path, "w") as f:
            f.write(f'[listen]\nimap = "tcp:port=0"\n[limits]\ntrusted_networks = {value}\n')
        return configuration.load(path, cwd=directory)

    def assertRefused(self, value, problem):
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load(value)
        self.assertEqual(caught.exception.key, "limits.trusted_networks")
        self.assertIn(problem, caught.exception.problem)

    def test_default_is_none(self):
        config = configuration.load(None)
        self.assertEqual(config.limits["trusted_networks"], ())

    def test_ipv4_ipv6_and_mapped_forms_are_read_as_networks(self):
        config = self.load('["192.0.2.7", "198.51.100.0/24", "::1", "2001:db8::/32", "::ffff:203.0.113.0/120"]')
        self.assertEqual(
            config.limits["trusted_networks"],
            tuple(ipaddress.ip_network(n) for n in
                  ("192.0.2.7/32", "198.51.100.0/24", "::1/128", "2001:db8::/32", "203.0.113.0/24")),
        )

    def test_a_string_instead_of_a_list_is_refused(self):
        self.assertRefused('"127.0.0.1"', "must be a list")

    def test_a_host_name_is_refused(self):
        self.assertRefused('["webmail.example.test"]', "not an address or network: 'webmail.example.test'")

    def test_a_network_with_host_bits_is_refused(self):
        self.assertRefused('["192.0.2.1/24"]', "192.0.2.1/24")

    def test_a_number_is_refused(self):
        self.assertRefused("[127]", "not an address or network: 127")

    def test_a_misspelt_key_beside_it_is_refused(self):
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load('[]\ntrusted_network = ["127.0.0.1"]')
        self.assertEqual(caught.exception.key, "limits.trusted_network")


class ThrottleAddresses(unittest.TestCase):
    """The throttle's own view: one address whatever its spelling, and the time until free."""

    def setUp(self):
        self.now = 1000.0
        self.throttle = LoginThrottle(3, window=600, clock=lambda: self.now, step=0)

    def test_an_ipv4_mapped_address_is_the_ipv4_address(self):
        self.throttle.failed("::ffff:192.0.2.7", "a")
        self.throttle.failed("192.0.2.7", "b")
        self.throttle.failed("::FFFF:192.0.2.7", "a")
        self.assertTrue(self.throttle.blocked("192.0.2.7"))
        self.assertEqual([r["address"] for r in self.throttle.report()], ["192.0.2.7"])

    def test_ipv6_spellings_are_one_address(self):
        for spelling in ("2001:db8::7", "2001:DB8:0::7", "2001:0db8::0007"):
            self.throttle.failed(spelling)
        self.assertTrue(self.throttle.blocked("2001:db8::7"))
        self.assertEqual(self.throttle.clear("2001:db8::/64"), ["2001:db8::7"])
        self.assertFalse(self.throttle.blocked("2001:db8::7"))

    def test_locked_until_the_oldest_counted_failure_leaves_the_window(self):
        for t in (1000, 1100, 1200, 1300):
            self.now = t
            self.throttle.failed("192.0.2.7", "a")
        # Four failures, limit three: free when the second (1100) expires.
        [row] = self.throttle.report()
        self.assertEqual((row["failures"], row["locked"], row["seconds"]), (4, True, 400))
        self.now = 1650
        [row] = self.throttle.report()
        self.assertEqual((row["failures"], row["locked"], row["seconds"]), (3, True, 50))
        # Unlocked at 1700; its failures are forgotten when the last (1300) expires.
        self.now = 1750
        [row] = self.throttle.report()
        self.assertEqual((row["failures"], row["locked"], row["seconds"]), (2, False, 150))
        self.assertFalse(self.throttle.blocked("192.0.2.7"))

    def test_clear_wakes_a_login_waiting_for_the_address(self):
        self.throttle.failed("192.0.2.7")
        self.throttle.failed("192.0.2.7")
        first = self.throttle.begin("192.0.2.7")  # the last free slot
        waiting = self.throttle.admit("192.0.2.7")
        self.assertFalse(waiting.called)
        self.throttle.clear("192.0.2.7")
        self.assertTrue(waiting.called)
        self.assertIsNotNone(waiting.result)
        first.abandoned()
        waiting.result.abandoned()


class QueueCommandsShareTheChannel(unittest.TestCase):
    """`mailplat queue` asks the running server on the same socket (the command files stay as a fallback)."""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("submission",), extra="[relay]\n")
        yield self.server.start(users=USERS)
        # With the command-file poll stopped, only the socket can answer.
        self.server.service.backends.relay._poll_control = lambda: None

    @defer.inlineCallbacks
    def test_flush_is_answered_on_the_control_socket(self):
        from mailplat.delivery.relay.control import QueueControl

        queue = QueueControl(self.server.config.state_dir)
        ok, message = yield in_thread(queue.command, "flush", None, 5.0)
        self.assertTrue(ok, message)

    @defer.inlineCallbacks
    def test_delete_of_an_unknown_id_says_so(self):
        status, out, err = yield in_thread(run_cli, self.server.config_path, "queue", "delete", "NOSUCHID")
        self.assertEqual(status, 1)
        self.assertIn("no such message in the queue: NOSUCHID", err)
