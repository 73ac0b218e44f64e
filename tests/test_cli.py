"""
The `mailplat` administration command, run as an operator runs it: a real
process, a real config file, the password on standard input (not a
terminal), and its effect on a running server.
"""

import os
import poplib
import pty
import select
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.realm import passwords
from tests.helpers import MailServer, client_tls, in_thread, small_config

CONFIG = small_config()


def mailplat(args, cwd, stdin=""):
    """Run the command; (exit status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailplat.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


class CLITestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "mailplat.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        self.users = os.path.join(self.dir, "etc", "users")

    def run_cli(self, *args, stdin=""):
        return mailplat(["--config", self.config, *args], self.dir, stdin)

    def write_users(self, text):
        os.makedirs(os.path.dirname(self.users), exist_ok=True)
        with open(self.users, "w") as f:
            f.write(text)

    def stored_hash(self, address):
        with open(self.users) as f:
            for line in f:
                if line.startswith(address + ":"):
                    return line.rstrip("\n").split(":", 1)[1].split(":")[0]
        return None


class CheckConfig(CLITestCase):
    def test_good_config_exits_zero_and_lists_the_listeners(self):
        status, out, err = self.run_cli("check-config")
        self.assertEqual(status, 0, err)
        self.assertIn("OK", out)
        self.assertIn("smtp", out)

    def test_bad_key_type_exits_non_zero_naming_file_and_key(self):
        with open(self.config, "a") as f:
            f.write("\n[limits]\nmessage_size = \"big\"\n")
        status, out, err = self.run_cli("check-config")
        self.assertNotEqual(status, 0)
        self.assertIn(self.config, err)
        self.assertIn("limits.message_size", err)

    def test_unknown_backend_exits_non_zero_naming_it(self):
        with open(self.config, "w") as f:
            f.write(CONFIG.replace('backend = "passwd-file"', 'backend = "ldap-of-dreams"'))
        status, out, err = self.run_cli("check-config")
        self.assertNotEqual(status, 0)
        self.assertIn("realm.backend", err)
        self.assertIn("ldap-of-dreams", err)

    def test_bad_listen_endpoint_exits_non_zero_naming_it(self):
        with open(self.config, "w") as f:
            f.write(CONFIG.replace('smtp = "tcp:port=0:interface=127.0.0.1"', 'smtp = "tcp:port=smtp-please"'))
        status, out, err = self.run_cli("check-config")
        self.assertNotEqual(status, 0)
        self.assertIn("listen.smtp", out + err)

    def test_missing_config_file_exits_non_zero_naming_it(self):
        status, out, err = mailplat(["--config", "nowhere.toml", "check-config"], self.dir)
        self.assertNotEqual(status, 0)
        self.assertIn("nowhere.toml", err)

    def test_broken_passwd_line_is_reported_with_file_and_line(self):
        self.write_users("alice@example.test:{PLAIN}a\nbroken\n")
        status, out, err = self.run_cli("check-config")
        self.assertIn(f"{self.users}:2:", out + err)


class UserCommands(CLITestCase):
    def test_user_add_reads_the_password_from_stdin_and_stores_argon2id(self):
        status, out, err = self.run_cli("user", "add", "alice@example.test", stdin="correct horse \n")
        self.assertEqual(status, 0, err)
        stored = self.stored_hash("alice@example.test")
        self.assertTrue(stored.startswith("{ARGON2ID}"), stored)
        # Only the line end is taken off: spaces are part of the password.
        self.assertTrue(passwords.verify(stored, "correct horse "))
        self.assertFalse(passwords.verify(stored, "correct horse"))

    def on_terminal(self, args, answers):
        """Run the command on a pseudo-terminal, answering each prompt in turn; (status, output)."""
        pid, fd = pty.fork()
        if pid == 0:  # the child: become the command, and never return into the tests
            try:
                os.chdir(self.dir)
                os.execv(sys.executable, [sys.executable, "-m", "mailplat.cli", "--config", self.config, *args])
            finally:
                os._exit(127)
        output = b""
        try:
            for answer in answers:
                # Answer only once the prompt is out: getpass flushes what
                # was typed before it turns echo off.
                asked = len(output)
                while not output[asked:].endswith(b": "):
                    ready, _, _ = select.select([fd], [], [], 30)
                    try:
                        chunk = os.read(fd, 1024) if ready else b""
                    except OSError:  # EIO: the child has gone
                        chunk = b""
                    if not chunk:
                        self.fail(f"no prompt; the command said: {output!r}")
                    output += chunk
                os.write(fd, answer.encode() + b"\n")
            while select.select([fd], [], [], 30)[0]:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:  # EIO: the child has gone
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            os.close(fd)
            _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), output.decode("utf-8", "replace")

    def test_user_add_on_a_terminal_asks_twice_without_echo(self):
        status, output = self.on_terminal(["user", "add", "alice@example.test"], ["secret-pw", "secret-pw"])
        self.assertEqual(status, 0, output)
        self.assertEqual(output.count("Password"), 1, output)
        self.assertNotIn("secret-pw", output)
        self.assertTrue(passwords.verify(self.stored_hash("alice@example.test"), "secret-pw"))

    def test_user_add_on_a_terminal_refuses_passwords_that_differ(self):
        status, output = self.on_terminal(["user", "add", "alice@example.test"], ["secret-pw", "other-pw"])
        self.assertNotEqual(status, 0, output)
        self.assertIn("do not match", output)
        self.assertFalse(os.path.exists(self.users))

    def test_user_add_lower_cases_the_address(self):
        status, _, err = self.run_cli("user", "add", "Alice@Example.TEST", stdin="pw\n")
        self.assertEqual(status, 0, err)
        self.assertIsNotNone(self.stored_hash("alice@example.test"))

    def test_user_add_of_an_existing_user_fails_and_keeps_the_password(self):
        self.write_users("alice@example.test:{PLAIN}old\n")
        status, _, err = self.run_cli("user", "add", "alice@example.test", stdin="new\n")
        self.assertNotEqual(status, 0)
        self.assertIn("alice@example.test", err)
        self.assertEqual(self.stored_hash("alice@example.test"), "{PLAIN}old")

    def test_user_add_outside_the_local_domains_fails_naming_the_domain(self):
        status, _, err = self.run_cli("user", "add", "alice@elsewhere.test", stdin="pw\n")
        self.assertNotEqual(status, 0)
        self.assertIn("elsewhere.test", err)
        self.assertFalse(os.path.exists(self.users) and self.stored_hash("alice@elsewhere.test"))

    def test_user_add_of_something_not_an_address_fails(self):
        status, _, err = self.run_cli("user", "add", "alice", stdin="pw\n")
        self.assertNotEqual(status, 0)
        self.assertIn("alice", err)

    def test_user_add_with_an_empty_password_fails(self):
        status, _, err = self.run_cli("user", "add", "alice@example.test", stdin="\n")
        self.assertNotEqual(status, 0)
        self.assertFalse(os.path.exists(self.users) and self.stored_hash("alice@example.test"))

    def test_user_passwd_replaces_the_password(self):
        self.write_users("alice@example.test:{PLAIN}old:1000:1000::/home/alice\n")
        status, _, err = self.run_cli("user", "passwd", "alice@example.test", stdin="new-pw\n")
        self.assertEqual(status, 0, err)
        stored = self.stored_hash("alice@example.test")
        self.assertTrue(passwords.verify(stored, "new-pw"))
        self.assertFalse(passwords.verify(stored, "old"))
        with open(self.users) as f:
            self.assertTrue(f.read().rstrip("\n").endswith(":1000:1000::/home/alice"))

    def test_user_passwd_of_an_unknown_user_fails(self):
        self.write_users("alice@example.test:{PLAIN}a\n")
        status, _, err = self.run_cli("user", "passwd", "bob@example.test", stdin="pw\n")
        self.assertNotEqual(status, 0)
        self.assertIn("bob@example.test", err)

    def test_user_del_removes_the_user_only(self):
        self.write_users("alice@example.test:{PLAIN}a\nbob@example.test:{PLAIN}b\n")
        status, _, err = self.run_cli("user", "del", "alice@example.test")
        self.assertEqual(status, 0, err)
        with open(self.users) as f:
            self.assertEqual(f.read(), "bob@example.test:{PLAIN}b\n")

    def test_user_del_of_an_unknown_user_fails(self):
        self.write_users("alice@example.test:{PLAIN}a\n")
        status, _, err = self.run_cli("user", "del", "bob@example.test")
        self.assertNotEqual(status, 0)
        self.assertIn("bob@example.test", err)

    def test_user_list_prints_the_users_sorted(self):
        self.write_users("zed@example.test:{PLAIN}z\n# comment\nalice@example.test:{PLAIN}a\n")
        status, out, err = self.run_cli("user", "list")
        self.assertEqual(status, 0, err)
        self.assertEqual(out.split(), ["alice@example.test", "zed@example.test"])

    def test_without_a_config_users_are_kept_under_var(self):
        # The embedded defaults, as `twistd -n mailplat` with no --config uses them.
        status, _, err = mailplat(["user", "add", "alice@example.test"], self.dir, "pw\n")
        self.assertEqual(status, 0, err)
        with open(os.path.join(self.dir, "var", "users")) as f:
            self.assertTrue(f.read().startswith("alice@example.test:{ARGON2ID}"))

    def test_plugins_lists_the_built_in_backends(self):
        status, out, err = self.run_cli("plugins")
        self.assertEqual(status, 0, err)
        for name in ("passwd-file", "maildir"):
            self.assertIn(name, out)


def pop3_login(server, user, password):
    p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=10)
    try:
        p.user(user)
        p.pass_(password)
        return p.stat()
    finally:
        p.quit()


class WhileServing(unittest.TestCase):
    """The command changes the users of a running server, without a restart."""

    @defer.inlineCallbacks
    def test_user_added_while_the_server_runs_can_log_in(self):
        server = yield MailServer(self, listeners=("pop3s",)).start(users={"alice@example.test": "alice-pw"})
        # The server has read the file once already.
        yield in_thread(pop3_login, server, "alice@example.test", "alice-pw")
        status, _, err = yield in_thread(
            mailplat, ["--config", server.config_path, "user", "add", "carol@example.test"], server.dir, "carol-pw\n"
        )
        self.assertEqual(status, 0, err)
        stat = yield in_thread(pop3_login, server, "carol@example.test", "carol-pw")
        self.assertEqual(stat, (0, 0))

    @defer.inlineCallbacks
    def test_password_changed_while_the_server_runs_takes_effect(self):
        server = yield MailServer(self, listeners=("pop3s",)).start(users={"alice@example.test": "old-pw"})
        yield in_thread(pop3_login, server, "alice@example.test", "old-pw")
        status, _, err = yield in_thread(
            mailplat, ["--config", server.config_path, "user", "passwd", "alice@example.test"], server.dir, "new-pw\n"
        )
        self.assertEqual(status, 0, err)
        yield in_thread(pop3_login, server, "alice@example.test", "new-pw")
        yield self.assertFailure(in_thread(pop3_login, server, "alice@example.test", "old-pw"), poplib.error_proto)
