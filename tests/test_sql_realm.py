"""
The `sql` realm as operators and clients meet it: a server with
[realm] backend = "sql" (SQLite), logins over SMTP AUTH and POP3, RCPT
lookups, `mailplat user` and `mailplat sql-schema` against the database,
aliases from the aliases table, and configuration errors.
"""

import os
import poplib
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from mailplat import config as configuration
from mailplat.config import ConfigError
from mailplat.interfaces import IAliasSource
from mailplat.realm import passwords, sql
from mailplat.realm.sql import Database, SQLRealm
from mailplat.service import Backends
from tests.helpers import MailServer, client_tls, in_thread


class SQLMailServer(MailServer):
    """The harness's server with its users in SQLite."""

    def __init__(self, testcase, **kwargs):
        super().__init__(testcase, **kwargs)
        self.database = os.path.join(self.dir, "db", "users.sqlite")

    def config_text(self):
        text = super().config_text()
        old = f'backend = "passwd-file"\npath = "{self.state}/users"'
        assert old in text
        return text.replace(old, f'backend = "sql"\ndatabase = "{self.database}"')

    def add_user(self, address, password):
        os.makedirs(os.path.dirname(self.database), exist_ok=True)
        with sqlite3.connect(self.database) as db:
            db.executescript(sql.schema("sqlite"))
            db.execute(
                "INSERT INTO mailplat_users (address, password) VALUES (?, ?)",
                (address, passwords.hash_password(password, self.scheme)),
            )

    @defer.inlineCallbacks
    def start(self, users=None):
        yield super().start(users)
        self.testcase.addCleanup(self._close_realm)
        return self

    @defer.inlineCallbacks
    def _close_realm(self):
        yield self.stop()
        self.service.backends.realm.close()


def pop3_login(server, user, password):
    p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=10)
    try:
        p.user(user)
        p.pass_(password)
        return p.stat()
    finally:
        p.quit()


def smtp_auth(server, user, password):
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        return s.login(user, password)


class Logins(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield SQLMailServer(self, listeners=("smtp", "submission", "pop3s"), scheme="BLF-CRYPT").start(
            users={"alice@example.test": "alice-pw"}
        )

    @defer.inlineCallbacks
    def test_pop3_login_against_the_database(self):
        self.assertEqual((yield in_thread(pop3_login, self.server, "alice@example.test", "alice-pw")), (0, 0))

    @defer.inlineCallbacks
    def test_pop3_wrong_password_is_refused(self):
        yield self.assertFailure(in_thread(pop3_login, self.server, "alice@example.test", "nope"), poplib.error_proto)

    @defer.inlineCallbacks
    def test_smtp_auth_against_the_database(self):
        code, _ = yield in_thread(smtp_auth, self.server, "Alice@EXAMPLE.test", "alice-pw")
        self.assertEqual(code, 235)

    @defer.inlineCallbacks
    def test_smtp_auth_wrong_password_is_refused(self):
        yield self.assertFailure(
            in_thread(smtp_auth, self.server, "alice@example.test", "nope"), smtplib.SMTPAuthenticationError
        )

    @defer.inlineCallbacks
    def test_rcpt_for_a_database_user_is_delivered_and_unknown_is_refused(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
                s.ehlo()
                s.mail("carol@remote.test")
                unknown = s.rcpt("nobody@example.test")
                known = s.rcpt("alice@example.test")
                return unknown, known, s.data(b"Subject: hi\r\n\r\nhello\r\n")

        unknown, known, data = yield in_thread(send)
        self.assertEqual((unknown[0], known[0], data[0]), (550, 250, 250))
        self.assertEqual(len(os.listdir(os.path.join(self.server.maildir("alice@example.test"), "new"))), 1)

    @defer.inlineCallbacks
    def test_a_user_added_while_running_can_log_in_at_once(self):
        self.server.add_user("bob@example.test", "bob-pw")
        self.assertEqual((yield in_thread(pop3_login, self.server, "bob@example.test", "bob-pw")), (0, 0))


class Unavailable(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_database_that_cannot_be_opened_gives_temporary_answers(self):
        server = SQLMailServer(self, listeners=("smtp", "pop3s"))
        server.add_user("alice@example.test", "alice-pw")
        yield server.start()
        realm = server.service.backends.realm
        realm.db.close()  # as if the database went away
        unreachable = SQLRealm(Database(server.dir))  # a folder, not a database
        self.addCleanup(unreachable.close)
        server.service.backends.realm.db = unreachable.db
        e = yield self.assertFailure(in_thread(pop3_login, server, "alice@example.test", "alice-pw"), poplib.error_proto)
        self.assertTrue(e.args[0].startswith(b"-ERR [SYS/TEMP]"), e.args)
        self.flushLoggedErrors()


class Aliases(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-sql-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.realm = SQLRealm(Database(os.path.join(self.dir, "u.sqlite")))
        self.addCleanup(self.realm.close)

    def test_the_sql_realm_is_an_alias_source(self):
        self.assertTrue(IAliasSource.providedBy(self.realm))

    @defer.inlineCallbacks
    def test_alias_targets_come_from_the_aliases_table(self):
        yield self.realm.add_alias("Info@example.test", "alice@example.test")
        yield self.realm.add_alias("info@example.test", "bob@remote.test")
        self.assertEqual((yield self.realm.targets("INFO@example.test")), ["alice@example.test", "bob@remote.test"])
        self.assertIsNone((yield self.realm.targets("alice@example.test")))


class Configuration(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-sql-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def backends(self, realm_text):
        path = os.path.join(self.dir, "mailplat.toml")
        with open(path, "w") as f:
            f.write(f'[server]\nhostname = "m.example.test"\nstate_dir = "{self.dir}/var"\n[realm]\n{realm_text}\n')
        backends = Backends(configuration.load(path, cwd=self.dir))
        self.addCleanup(backends.realm.close)
        return backends

    def test_the_database_defaults_to_the_state_dir(self):
        backends = self.backends('backend = "sql"')
        self.assertEqual(backends.realm.db.where, os.path.join(self.dir, "var", "users.sqlite"))

    def test_unknown_keys_are_named(self):
        e = self.assertRaises(ConfigError, self.backends, 'backend = "sql"\nfile = "x"')
        self.assertIn("realm.file: unknown key", str(e))

    def test_a_dsn_that_is_not_postgresql_is_refused(self):
        e = self.assertRaises(ConfigError, self.backends, 'backend = "sql"\ndsn = "mysql://x"')
        self.assertIn("dsn", str(e))

    def test_schema_is_given_for_both_dialects(self):
        self.assertIn("CREATE TABLE IF NOT EXISTS mailplat_users", sql.schema("sqlite"))
        self.assertIn("VARCHAR(320)", sql.schema("postgresql"))
        self.assertRaises(ValueError, sql.schema, "oracle")

    def test_the_dsn_password_never_reaches_the_log(self):
        self.assertEqual(sql._redact("postgresql://mail:secret@db/mail"), "postgresql://mail:***@db/mail")
        self.assertEqual(sql._redact("host=db password=secret"), "host=db password=***")


CLI_CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[realm]
backend = "sql"
database = "var/users.sqlite"
"""


class Command(unittest.TestCase):
    """`mailplat user` and `mailplat sql-schema` against a SQLite realm, as an operator runs them."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-sql-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "mailplat.toml")
        with open(self.config, "w") as f:
            f.write(CLI_CONFIG)

    def run_cli(self, *args, stdin=""):
        done = subprocess.run(
            [sys.executable, "-m", "mailplat.cli", "--config", self.config, *args],
            cwd=self.dir, input=stdin, capture_output=True, text=True, timeout=60,
        )
        return done.returncode, done.stdout, done.stderr

    def stored(self, address):
        with sqlite3.connect(os.path.join(self.dir, "var", "users.sqlite")) as db:
            row = db.execute("SELECT password FROM mailplat_users WHERE address = ?", (address,)).fetchone()
        return row and row[0]

    def test_add_list_passwd_and_del(self):
        status, out, err = self.run_cli("user", "add", "Alice@Example.test", stdin="first\n")
        self.assertEqual((status, out.strip()), (0, "added alice@example.test"), err)
        self.assertTrue(passwords.verify(self.stored("alice@example.test"), "first"))
        self.assertTrue(self.stored("alice@example.test").startswith("{ARGON2ID}"))
        status, out, err = self.run_cli("user", "list")
        self.assertEqual(out.splitlines(), ["alice@example.test"])
        status, out, err = self.run_cli("user", "passwd", "alice@example.test", stdin="second\n")
        self.assertEqual(status, 0, err)
        self.assertTrue(passwords.verify(self.stored("alice@example.test"), "second"))
        status, out, err = self.run_cli("user", "del", "alice@example.test")
        self.assertEqual(status, 0, err)
        self.assertIsNone(self.stored("alice@example.test"))

    def test_errors_are_said_plainly(self):
        self.run_cli("user", "add", "alice@example.test", stdin="pw\n")
        status, out, err = self.run_cli("user", "add", "alice@example.test", stdin="pw\n")
        self.assertEqual(status, 1)
        self.assertIn("exists already", err)
        status, out, err = self.run_cli("user", "passwd", "bob@example.test", stdin="pw\n")
        self.assertIn("no such user: bob@example.test", err)
        status, out, err = self.run_cli("user", "del", "bob@example.test")
        self.assertIn("no such user: bob@example.test", err)

    def test_sql_schema_prints_the_ddl(self):
        status, out, err = self.run_cli("sql-schema")
        self.assertEqual(status, 0, err)
        self.assertEqual(out, sql.schema("sqlite"))
        status, out, err = self.run_cli("sql-schema", "--dialect", "postgresql")
        self.assertEqual(out, sql.schema("postgresql"))


class CombinedAliases(unittest.TestCase):
    """AliasSources: the aliases file first, then the sql realm's table."""

    def setUp(self):
        from mailplat.delivery.aliases import AliasesFile, AliasSources

        self.dir = tempfile.mkdtemp(prefix="mailplat-sql-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        path = os.path.join(self.dir, "aliases")
        with open(path, "w") as f:
            f.write("info@example.test: alice@example.test\nbroken line\n")
        self.realm = SQLRealm(Database(os.path.join(self.dir, "u.sqlite")))
        self.addCleanup(self.realm.close)
        self.aliases = AliasSources([AliasesFile(path), self.realm])

    @defer.inlineCallbacks
    def test_the_file_answers_first_then_the_table(self):
        yield self.realm.add_alias("info@example.test", "bob@example.test")
        yield self.realm.add_alias("sales@example.test", "bob@example.test")
        self.assertEqual((yield self.aliases.targets("info@example.test")), ["alice@example.test"])
        self.assertEqual((yield self.aliases.targets("sales@example.test")), ["bob@example.test"])
        self.assertIsNone((yield self.aliases.targets("alice@example.test")))

    def test_problems_of_the_file_are_kept(self):
        self.assertEqual(len(self.aliases.problems()), 1)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_the_resolver_expands_aliases_from_the_table(self):
        from mailplat.delivery.addresses import AddressResolver

        yield self.realm.add_user("bob@example.test", "{PLAIN}x")
        yield self.realm.add_alias("sales@example.test", "bob@example.test")
        resolver = AddressResolver(self.realm, self.aliases, ["example.test"])
        targets = yield resolver.resolve("sales@example.test")
        self.assertEqual([t.address for t in targets], ["bob@example.test"])
