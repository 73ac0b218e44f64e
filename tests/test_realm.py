"""
The realm: password schemes in Dovecot's notation, the passwd-file backend
(parsing, reload on change, administration), the twisted.cred portal, and
what a client sees of all that through a running server.
"""

import os
import poplib
import shutil
import smtplib
import stat
import tempfile

from twisted.cred import credentials, error as cred_error
from twisted.internet import defer
from twisted.trial import unittest

from mailplat.interfaces import NoSuchUser, PermanentFailure
from mailplat.portal import RealmPasswordChecker
from mailplat.realm import passwords
from mailplat.realm.passwdfile import PasswdFileRealm, parse
from tests.helpers import MailServer, client_tls, collect_log, in_thread


def result(deferred):
    """The result of a Deferred that has already fired."""
    box = []
    deferred.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


class Schemes(unittest.TestCase):
    """`{SCHEME}hash` as Dovecot writes it (doveadm pw)."""

    def test_argon2id_verifies_the_right_password_only(self):
        stored = passwords.hash_password("s3cret", "ARGON2ID")
        self.assertTrue(stored.startswith("{ARGON2ID}$argon2id$"))
        self.assertTrue(passwords.verify(stored, "s3cret"))
        self.assertFalse(passwords.verify(stored, "S3cret"))

    def test_blf_crypt_verifies_the_right_password_only(self):
        stored = passwords.hash_password("s3cret", "BLF-CRYPT")
        self.assertTrue(stored.startswith("{BLF-CRYPT}$2"))
        self.assertTrue(passwords.verify(stored, "s3cret"))
        self.assertFalse(passwords.verify(stored, "s3cret "))

    def test_blf_crypt_with_dovecots_2y_prefix_verifies(self):
        stored = passwords.hash_password("s3cret", "BLF-CRYPT")
        dovecot = stored.replace("}$2b$", "}$2y$", 1)
        self.assertNotEqual(stored, dovecot)
        self.assertTrue(passwords.verify(dovecot, "s3cret"))

    def test_plain_verifies_the_right_password_only(self):
        self.assertTrue(passwords.verify("{PLAIN}s3cret", "s3cret"))
        self.assertFalse(passwords.verify("{PLAIN}s3cret", "s3cre"))

    def test_scheme_name_is_case_insensitive(self):
        self.assertTrue(passwords.verify("{plain}s3cret", "s3cret"))

    def test_a_hash_without_scheme_is_plain_as_in_dovecot(self):
        self.assertTrue(passwords.verify("s3cret", "s3cret"))

    def test_non_ascii_passwords_verify(self):
        for scheme in ("BLF-CRYPT", "PLAIN"):
            stored = passwords.hash_password("pässwörd✓", scheme)
            self.assertTrue(passwords.verify(stored, "pässwörd✓"), scheme)
            self.assertFalse(passwords.verify(stored, "passwörd✓"), scheme)

    def test_malformed_hashes_do_not_verify_and_do_not_raise(self):
        for stored in ("{ARGON2ID}$argon2id$garbage", "{BLF-CRYPT}$2b$nonsense", "{ARGON2ID}", "{BLF-CRYPT}"):
            self.assertFalse(passwords.verify(stored, "anything"), stored)

    def test_unknown_scheme_is_named(self):
        e = self.assertRaises(passwords.UnknownScheme, passwords.check_scheme, "{SHA1}abc")
        self.assertIn("{SHA1}", str(e))
        self.assertFalse(passwords.verify("{SHA1}abc", "abc"))


class Parsing(unittest.TestCase):
    """The passwd-file format: `user:{SCHEME}hash:uid:gid:gecos:home:shell:extra`."""

    def test_extra_fields_comments_and_blank_lines_are_ignored(self):
        users, problems = parse(
            "# users\n\nalice@example.test:{PLAIN}pw:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\n"
            "  # indented comment\nbob@example.test:{PLAIN}pw2\n",
            "users",
        )
        self.assertEqual(users, {"alice@example.test": "{PLAIN}pw", "bob@example.test": "{PLAIN}pw2"})
        self.assertEqual(problems, [])

    def test_argon2_hash_field_is_read_whole(self):
        stored = passwords.hash_password("pw", "ARGON2ID")
        users, _ = parse(f"alice@example.test:{stored}:1000:1000\n", "users")
        self.assertEqual(users["alice@example.test"], stored)

    def test_broken_line_is_named_with_file_and_line_and_skipped(self):
        users, problems = parse(
            "alice@example.test:{PLAIN}a\nthis line is broken\nbob@example.test:{PLAIN}b\n", "/etc/users"
        )
        self.assertEqual(sorted(users), ["alice@example.test", "bob@example.test"])
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("/etc/users:2: "), problems)

    def test_user_without_domain_is_a_problem(self):
        users, problems = parse("alice:{PLAIN}a\n", "users")
        self.assertEqual(users, {})
        self.assertTrue(problems[0].startswith("users:1: "), problems)

    def test_user_without_password_is_a_problem(self):
        users, problems = parse("alice@example.test:\n", "users")
        self.assertEqual(users, {})
        self.assertTrue(problems[0].startswith("users:1: "), problems)

    def test_unknown_scheme_is_a_problem_naming_the_scheme(self):
        users, problems = parse("alice@example.test:{MD5-CRYPT}$1$abc\n", "users")
        self.assertEqual(users, {})
        self.assertIn("users:1:", problems[0])
        self.assertIn("MD5-CRYPT", problems[0])

    def test_a_second_line_for_the_same_user_is_a_problem_and_the_first_wins(self):
        users, problems = parse("alice@example.test:{PLAIN}first\nALICE@example.test:{PLAIN}second\n", "users")
        self.assertEqual(users, {"alice@example.test": "{PLAIN}first"})
        self.assertTrue(problems[0].startswith("users:2: "), problems)


class PasswdFile(unittest.TestCase):
    """PasswdFileRealm over a real file (hash checks inline, no thread pool)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-realm-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "users")
        self.write("alice@example.test:{PLAIN}alice-pw\nbob@example.test:{PLAIN}bob-pw\n")
        self.realm = PasswdFileRealm(self.path, verify_in_thread=False)

    def write(self, text):
        # Write a new file and rename, as editors and the CLI do.
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)

    def test_lookup_is_case_insensitive_and_canonical(self):
        self.assertEqual(result(self.realm.lookup("Alice@Example.TEST")), "alice@example.test")
        self.assertIsNone(result(self.realm.lookup("carol@example.test")))

    def test_right_password_gives_the_canonical_address(self):
        self.assertEqual(result(self.realm.check_password("ALICE@example.test", "alice-pw")), "alice@example.test")

    def test_wrong_password_gives_none(self):
        self.assertIsNone(result(self.realm.check_password("alice@example.test", "bob-pw")))

    def test_unknown_user_gives_none(self):
        self.assertIsNone(result(self.realm.check_password("carol@example.test", "alice-pw")))

    def test_argon2id_and_blf_crypt_users_log_in(self):
        argon = passwords.hash_password("argon-pw", "ARGON2ID")
        blf = passwords.hash_password("blf-pw", "BLF-CRYPT")
        self.write(f"argon@example.test:{argon}\nblf@example.test:{blf}::::\n")
        self.assertEqual(result(self.realm.check_password("argon@example.test", "argon-pw")), "argon@example.test")
        self.assertEqual(result(self.realm.check_password("blf@example.test", "blf-pw")), "blf@example.test")
        self.assertIsNone(result(self.realm.check_password("argon@example.test", "blf-pw")))
        self.assertIsNone(result(self.realm.check_password("blf@example.test", "argon-pw")))

    def test_plain_password_login_warns_in_the_log(self):
        log = collect_log(self)
        result(self.realm.check_password("alice@example.test", "alice-pw"))
        self.assertTrue([t for t in log if "alice@example.test" in t and "PLAIN" in t], log)

    def test_a_changed_file_is_read_again(self):
        self.assertIsNone(result(self.realm.lookup("carol@example.test")))
        self.write("carol@example.test:{PLAIN}carol-pw\n")
        self.assertEqual(result(self.realm.lookup("carol@example.test")), "carol@example.test")
        self.assertIsNone(result(self.realm.lookup("alice@example.test")))

    def test_a_file_appended_in_place_is_read_again(self):
        result(self.realm.lookup("alice@example.test"))
        with open(self.path, "a") as f:
            f.write("carol@example.test:{PLAIN}carol-pw\n")
        self.assertEqual(result(self.realm.check_password("carol@example.test", "carol-pw")), "carol@example.test")

    def test_a_missing_file_means_no_users(self):
        os.unlink(self.path)
        self.assertIsNone(result(self.realm.lookup("alice@example.test")))
        self.assertEqual(result(self.realm.list_users()), [])

    def test_broken_line_is_logged_with_its_line_and_other_users_work(self):
        log = collect_log(self)
        self.write("alice@example.test:{PLAIN}alice-pw\nbroken-line-without-colon\nbob@example.test:{PLAIN}bob-pw\n")
        self.assertEqual(result(self.realm.check_password("bob@example.test", "bob-pw")), "bob@example.test")
        self.assertTrue([t for t in log if f"{self.path}:2:" in t], log)

    def test_list_users_is_sorted(self):
        self.write("zed@example.test:{PLAIN}z\nalice@example.test:{PLAIN}a\n")
        self.assertEqual(result(self.realm.list_users()), ["alice@example.test", "zed@example.test"])

    def test_add_user_writes_a_private_file_and_takes_effect(self):
        self.realm.add_user("Carol@Example.test", passwords.hash_password("carol-pw", "PLAIN"))
        self.assertEqual(result(self.realm.check_password("carol@example.test", "carol-pw")), "carol@example.test")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.dir), ["users"])

    def test_add_existing_user_fails(self):
        self.assertRaises(PermanentFailure, self.realm.add_user, "alice@example.test", "{PLAIN}x")

    def test_set_password_keeps_the_other_fields_and_lines(self):
        self.write("# admins\nalice@example.test:{PLAIN}old:1000:1000::/home/alice::\nbob@example.test:{PLAIN}b\n")
        self.realm.set_password("alice@example.test", "{PLAIN}new")
        with open(self.path) as f:
            self.assertEqual(
                f.read(),
                "# admins\nalice@example.test:{PLAIN}new:1000:1000::/home/alice::\nbob@example.test:{PLAIN}b\n",
            )

    def test_set_password_of_unknown_user_fails(self):
        self.assertRaises(NoSuchUser, self.realm.set_password, "carol@example.test", "{PLAIN}x")

    def test_delete_user_removes_only_that_user(self):
        self.realm.delete_user("ALICE@example.test")
        self.assertEqual(result(self.realm.list_users()), ["bob@example.test"])

    def test_delete_unknown_user_fails(self):
        self.assertRaises(NoSuchUser, self.realm.delete_user, "carol@example.test")


class Portal(unittest.TestCase):
    """The twisted.cred checker over a realm backend."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-realm-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        path = os.path.join(self.dir, "users")
        with open(path, "w") as f:
            f.write("alice@example.test:{PLAIN}alice-pw\n")
        self.checker = RealmPasswordChecker(PasswdFileRealm(path, verify_in_thread=False))

    def test_right_password_gives_the_avatar_id(self):
        creds = credentials.UsernamePassword(b"Alice@example.test", b"alice-pw")
        self.assertEqual(result(self.checker.requestAvatarId(creds)), "alice@example.test")

    def test_wrong_password_is_unauthorized(self):
        creds = credentials.UsernamePassword(b"alice@example.test", b"nope")
        self.assertRaises(cred_error.UnauthorizedLogin, result, self.checker.requestAvatarId(creds))

    def test_credentials_that_are_not_utf8_are_unauthorized(self):
        creds = credentials.UsernamePassword(b"alice@example.test", b"\xff\xfe")
        self.assertRaises(cred_error.UnauthorizedLogin, result, self.checker.requestAvatarId(creds))


def pop3_login(server, user, password):
    p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=10)
    try:
        p.user(user)
        p.pass_(password)
        return p.stat()
    finally:
        p.quit()


class LiveRealm(unittest.TestCase):
    """The realm as POP3 clients of a running server see it."""

    @defer.inlineCallbacks
    def test_user_appended_to_the_file_while_running_can_log_in(self):
        server = yield MailServer(self, listeners=("pop3s",)).start(users={"alice@example.test": "alice-pw"})
        yield in_thread(pop3_login, server, "alice@example.test", "alice-pw")
        server.add_user("carol@example.test", "carol-pw")
        stat_ = yield in_thread(pop3_login, server, "carol@example.test", "carol-pw")
        self.assertEqual(stat_, (0, 0))

    @defer.inlineCallbacks
    def test_user_removed_from_the_file_while_running_cannot_log_in(self):
        server = yield MailServer(self, listeners=("pop3s",)).start(
            users={"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}
        )
        yield in_thread(pop3_login, server, "bob@example.test", "bob-pw")
        PasswdFileRealm(server.config.realm["path"]).delete_user("bob@example.test")
        yield self.assertFailure(in_thread(pop3_login, server, "bob@example.test", "bob-pw"), poplib.error_proto)

    @defer.inlineCallbacks
    def test_broken_line_is_logged_and_the_other_users_log_in(self):
        log = collect_log(self)
        server = MailServer(self, listeners=("pop3s",))
        server.add_user("alice@example.test", "alice-pw")
        path = os.path.join(server.state, "users")
        with open(path, "a") as f:
            f.write("garbage without a colon\n")
        server.add_user("bob@example.test", "bob-pw")
        yield server.start()
        yield in_thread(pop3_login, server, "alice@example.test", "alice-pw")
        yield in_thread(pop3_login, server, "bob@example.test", "bob-pw")
        self.assertTrue([t for t in log if f"{path}:2:" in t], [t for t in log if "passwd" in t])

    @defer.inlineCallbacks
    def test_argon2id_user_logs_in(self):
        server = yield MailServer(self, listeners=("pop3s",), scheme="ARGON2ID").start(
            users={"alice@example.test": "alice-pw"}
        )
        stat_ = yield in_thread(pop3_login, server, "alice@example.test", "alice-pw")
        self.assertEqual(stat_, (0, 0))

    @defer.inlineCallbacks
    def test_blf_crypt_user_logs_in(self):
        server = yield MailServer(self, listeners=("pop3s",), scheme="BLF-CRYPT").start(
            users={"alice@example.test": "alice-pw"}
        )
        stat_ = yield in_thread(pop3_login, server, "alice@example.test", "alice-pw")
        self.assertEqual(stat_, (0, 0))

    @defer.inlineCallbacks
    def test_blf_crypt_user_with_wrong_password_is_refused(self):
        server = yield MailServer(self, listeners=("pop3s",), scheme="BLF-CRYPT").start(
            users={"alice@example.test": "alice-pw"}
        )
        yield self.assertFailure(in_thread(pop3_login, server, "alice@example.test", "wrong"), poplib.error_proto)

    @defer.inlineCallbacks
    def test_unreadable_passwd_file_is_a_temporary_failure_on_every_protocol(self):
        server = yield MailServer(self, listeners=("smtp", "pop3s")).start(users={"alice@example.test": "alice-pw"})
        path = server.config.realm["path"]
        os.unlink(path)
        os.mkdir(path)  # tests run as root: a directory is what cannot be read

        def rcpt():
            with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
                s.ehlo()
                s.mail("carol@remote.test")
                return s.rcpt("alice@example.test")

        code, text = yield in_thread(rcpt)
        e = yield self.assertFailure(in_thread(pop3_login, server, "alice@example.test", "alice-pw"), poplib.error_proto)
        self.flushLoggedErrors()
        # Never "no such user" (a bounce) nor "wrong password": try again later.
        self.assertEqual(code // 100, 4, text)
        self.assertTrue(e.args[0].startswith(b"-ERR [SYS/TEMP]"), e.args)
