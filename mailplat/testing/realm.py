"""
RealmConformance: what every realm backend must do for SMTP AUTH, IMAP and
POP3 logins and for RCPT lookups to work (IRealmBackend), and, when it
provides it, IRealmAdmin for `mailplat user`.
"""

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mailplat.interfaces import IRealmAdmin, IRealmBackend, NoSuchUser, PermanentFailure, TemporaryFailure
from mailplat.realm import passwords

_hashes = {}


def stored_hash(password, scheme):
    """`{SCHEME}hash` of a password, made once per process (ARGON2ID is slow on purpose)."""
    key = (password, scheme)
    if key not in _hashes:
        _hashes[key] = passwords.hash_password(password, scheme)
    return _hashes[key]


class RealmConformance:
    """
    Mix into a twisted.trial.unittest.TestCase and implement:

      - C{make_realm(users)}: a realm (or a Deferred of one) holding exactly
        C{users}, a dict of lower-case address -> stored hash
        (C{{SCHEME}hash}). Register its clean-up with C{self.addCleanup}.
      - C{make_unavailable_realm()}: the same backend unable to reach its
        data (database down, file unreadable). C{raise SkipTest(...)} if
        that cannot happen to your backend.

    Password checks run in mailplat's hashing pool, as in the server.
    """

    schemes = passwords.SCHEMES
    domain = "example.test"

    def make_realm(self, users):
        raise NotImplementedError("return a realm holding `users` ({address: '{SCHEME}hash'})")

    def make_unavailable_realm(self):
        raise NotImplementedError("return a realm whose backend cannot be reached")

    # --- helpers ---------------------------------------------------------

    def _kit_users(self):
        """alice (ARGON2ID), bob (BLF-CRYPT), carol (PLAIN): one user per scheme."""
        names = ["alice", "bob", "carol", "dave", "erin"]
        return {
            f"{names[i]}@{self.domain}": stored_hash(f"pw-{scheme.lower()}", scheme)
            for i, scheme in enumerate(self.schemes)
        }

    def _kit_realm(self, users=None):
        return defer.maybeDeferred(self.make_realm, self._kit_users() if users is None else users)

    def _kit_admin(self, realm):
        if not IRealmAdmin.providedBy(realm):
            from twisted.trial.unittest import SkipTest

            raise SkipTest(f"{type(realm).__name__} does not provide IRealmAdmin")
        return realm

    # --- IRealmBackend ---------------------------------------------------

    @defer.inlineCallbacks
    def test_realm_provides_the_interface(self):
        realm = yield self._kit_realm()
        self.assertTrue(verifyObject(IRealmBackend, realm))
        if IRealmAdmin.providedBy(realm):
            self.assertTrue(verifyObject(IRealmAdmin, realm))

    @defer.inlineCallbacks
    def test_lookup_finds_a_user_by_address(self):
        realm = yield self._kit_realm()
        found = yield realm.lookup(f"alice@{self.domain}")
        self.assertEqual(found, f"alice@{self.domain}")

    @defer.inlineCallbacks
    def test_lookup_is_case_insensitive_in_the_domain(self):
        realm = yield self._kit_realm()
        found = yield realm.lookup(f"alice@{self.domain.upper()}")
        self.assertEqual(found, f"alice@{self.domain}")

    @defer.inlineCallbacks
    def test_lookup_of_an_unknown_user_is_none(self):
        realm = yield self._kit_realm()
        self.assertIsNone((yield realm.lookup(f"nobody@{self.domain}")))
        self.assertIsNone((yield realm.lookup("alice@elsewhere.test")))

    @defer.inlineCallbacks
    def test_right_password_logs_in_for_every_scheme(self):
        realm = yield self._kit_realm()
        names = ["alice", "bob", "carol", "dave", "erin"]
        for i, scheme in enumerate(self.schemes):
            address = f"{names[i]}@{self.domain}"
            found = yield realm.check_password(address, f"pw-{scheme.lower()}")
            self.assertEqual(found, address, f"{scheme} password refused")

    @defer.inlineCallbacks
    def test_wrong_password_is_refused_for_every_scheme(self):
        realm = yield self._kit_realm()
        names = ["alice", "bob", "carol", "dave", "erin"]
        for i, scheme in enumerate(self.schemes):
            found = yield realm.check_password(f"{names[i]}@{self.domain}", f"pw-{scheme.lower()}x")
            self.assertIsNone(found, f"wrong {scheme} password accepted")

    @defer.inlineCallbacks
    def test_password_check_is_case_insensitive_in_the_domain(self):
        realm = yield self._kit_realm()
        found = yield realm.check_password(f"alice@{self.domain.upper()}", "pw-argon2id")
        self.assertEqual(found, f"alice@{self.domain}")

    @defer.inlineCallbacks
    def test_unknown_user_cannot_log_in(self):
        realm = yield self._kit_realm()
        self.assertIsNone((yield realm.check_password(f"nobody@{self.domain}", "pw-argon2id")))
        self.assertIsNone((yield realm.check_password(f"nobody@{self.domain}", "")))

    @defer.inlineCallbacks
    def test_list_users_is_sorted_and_complete(self):
        realm = yield self._kit_realm()
        self.assertEqual((yield realm.list_users()), sorted(self._kit_users()))

    @defer.inlineCallbacks
    def test_an_empty_realm_lists_nobody(self):
        realm = yield self._kit_realm({})
        self.assertEqual((yield realm.list_users()), [])
        self.assertIsNone((yield realm.lookup(f"alice@{self.domain}")))

    # --- a backend that cannot answer -------------------------------------

    @defer.inlineCallbacks
    def _kit_unavailable(self):
        realm = yield defer.maybeDeferred(self.make_unavailable_realm)
        return realm

    @defer.inlineCallbacks
    def _kit_fails_temporarily(self, method, *args):
        realm = yield self._kit_unavailable()
        try:
            answer = yield defer.maybeDeferred(getattr(realm, method), *args)
        except TemporaryFailure:
            return
        except Exception as e:
            self.fail(f"an unreachable backend failed {method} with {e!r}: fail with TemporaryFailure")
        self.fail(
            f"an unreachable backend answered {method} with {answer!r}: fail with TemporaryFailure, so that "
            "clients are told to try again and nobody is told 'no such user' or 'wrong password' by mistake"
        )

    def test_unavailable_backend_fails_lookup_temporarily(self):
        return self._kit_fails_temporarily("lookup", f"alice@{self.domain}")

    def test_unavailable_backend_fails_password_checks_temporarily(self):
        return self._kit_fails_temporarily("check_password", f"alice@{self.domain}", "pw-argon2id")

    def test_unavailable_backend_fails_list_users_temporarily(self):
        return self._kit_fails_temporarily("list_users")

    # --- IRealmAdmin ------------------------------------------------------

    @defer.inlineCallbacks
    def test_admin_added_user_can_log_in(self):
        realm = self._kit_admin((yield self._kit_realm({})))
        address = f"frank@{self.domain}"
        yield defer.maybeDeferred(realm.add_user, address, stored_hash("new-pw", "BLF-CRYPT"))
        self.assertEqual((yield realm.lookup(address)), address)
        self.assertEqual((yield realm.check_password(address, "new-pw")), address)
        self.assertEqual((yield realm.list_users()), [address])

    @defer.inlineCallbacks
    def test_admin_adding_an_existing_user_fails_permanently(self):
        realm = self._kit_admin((yield self._kit_realm()))
        d = defer.maybeDeferred(realm.add_user, f"alice@{self.domain}", stored_hash("other", "PLAIN"))
        yield self.assertFailure(d, PermanentFailure)
        self.assertEqual((yield realm.check_password(f"alice@{self.domain}", "pw-argon2id")), f"alice@{self.domain}")

    @defer.inlineCallbacks
    def test_admin_set_password_replaces_the_old_one(self):
        realm = self._kit_admin((yield self._kit_realm()))
        address = f"alice@{self.domain}"
        yield defer.maybeDeferred(realm.set_password, address, stored_hash("changed", "ARGON2ID"))
        self.assertEqual((yield realm.check_password(address, "changed")), address)
        self.assertIsNone((yield realm.check_password(address, "pw-argon2id")))

    @defer.inlineCallbacks
    def test_admin_set_password_of_an_unknown_user_fails_with_no_such_user(self):
        realm = self._kit_admin((yield self._kit_realm()))
        d = defer.maybeDeferred(realm.set_password, f"nobody@{self.domain}", stored_hash("x", "PLAIN"))
        yield self.assertFailure(d, NoSuchUser)

    @defer.inlineCallbacks
    def test_admin_deleted_user_is_gone(self):
        realm = self._kit_admin((yield self._kit_realm()))
        address = f"bob@{self.domain}"
        yield defer.maybeDeferred(realm.delete_user, address)
        self.assertIsNone((yield realm.lookup(address)))
        self.assertIsNone((yield realm.check_password(address, "pw-blf-crypt")))
        self.assertNotIn(address, (yield realm.list_users()))

    @defer.inlineCallbacks
    def test_admin_deleting_an_unknown_user_fails_with_no_such_user(self):
        realm = self._kit_admin((yield self._kit_realm()))
        yield self.assertFailure(defer.maybeDeferred(realm.delete_user, f"nobody@{self.domain}"), NoSuchUser)

    # --- what breaks a running server --------------------------------------
    #
    # Rules a direct call does not show: the answers work for real logins
    # through the server; no call holds the reactor; unknown users cost the
    # same hash as known ones; admin writes replace the file whole and are
    # seen by the next lookup.

    def _kit_login_user(self):
        """(address, password) of the kit's user with the fastest scheme."""
        names = ["alice", "bob", "carol", "dave", "erin"]
        order = list(self.schemes)
        i = order.index("PLAIN") if "PLAIN" in order else 0
        return f"{names[i]}@{self.domain}", f"pw-{order[i].lower()}"

    @defer.inlineCallbacks
    def test_logins_work_through_a_running_server(self):
        """IMAP LOGIN, POP3 USER/PASS and SMTP AUTH PLAIN, each with a real
        client, on a server whose realm is this one."""
        from mailplat.testing.server import KitServer

        realm = yield self._kit_realm()
        server = KitServer(self, realm, domain=self.domain)
        yield server.start()
        address, password = self._kit_login_user()
        answers = yield server.logins(address, password)
        self.flushLoggedErrors()
        failed = {p: a for p, a in answers.items() if a != "OK"}
        self.assertEqual(
            failed, {},
            f"logging in as {address} through a running server failed: {failed}; check_password must answer "
            "the address (a str) or None, as a plain value, a Deferred or from an async def",
        )
        wrong = yield server.logins(address, password + "-wrong")
        self.assertFalse(
            [p for p, a in wrong.items() if a == "OK"], f"a wrong password logged in through the server: {wrong}"
        )

    @defer.inlineCallbacks
    def test_no_call_blocks_the_reactor(self):
        from mailplat.testing.blocking import blocked_message, timed_call

        realm = yield self._kit_realm()
        names = ["alice", "bob", "carol", "dave", "erin"]
        calls = [("lookup", (f"alice@{self.domain}",)), ("list_users", ())]
        for i, scheme in enumerate(self.schemes):
            calls.append(("check_password", (f"{names[i]}@{self.domain}", f"pw-{scheme.lower()}")))
        calls.append(("check_password", (f"nobody@{self.domain}", "pw-argon2id")))
        for method, args in calls:
            yield defer.maybeDeferred(getattr(realm, method), *args)  # a first call may read its data: not timed
            d, spent = timed_call(getattr(realm, method), *args)
            yield d
            problem = blocked_message(f"{method}{args!r}", spent)
            if problem:
                self.fail(problem)

    @defer.inlineCallbacks
    def test_unknown_users_take_as_long_as_known_ones(self):
        """A quick "no" for unknown users tells a guesser which addresses
        exist: check a dummy hash (mailplat.realm.passwords.dummy_hash)."""
        import time

        if "ARGON2ID" not in self.schemes:
            from twisted.trial.unittest import SkipTest

            raise SkipTest("the kit's users have no ARGON2ID password to compare with")
        realm = yield self._kit_realm()
        known = f"alice@{self.domain}"
        yield defer.maybeDeferred(realm.check_password, f"nobody@{self.domain}", "x")  # warm up

        @defer.inlineCallbacks
        def timed(address):
            started = time.perf_counter()
            yield defer.maybeDeferred(realm.check_password, address, "not-the-password")
            return time.perf_counter() - started

        known_times, unknown_times = [], []
        for n in range(2):
            known_times.append((yield timed(known)))
            unknown_times.append((yield timed(f"nobody{n}@{self.domain}")))
        # Generous: a quarter of the faster known answer (a hash is ~100 ms+).
        self.assertGreaterEqual(
            max(unknown_times), min(known_times) / 4,
            f"an unknown user is answered in {max(unknown_times) * 1000:.1f} ms, a known one in "
            f"{min(known_times) * 1000:.1f} ms: check unknown users against a dummy hash "
            "(mailplat.realm.passwords.dummy_hash) so the timing gives nobody away",
        )

    def realm_files(self, realm):
        """
        The files an IRealmAdmin realm rewrites, for the atomic-write rule;
        default: its `path` attribute when that is a file. Return [] for a
        realm that keeps no files (a database).
        """
        import os

        path = getattr(realm, "path", None)
        return [os.path.abspath(path)] if isinstance(path, str) and os.path.isfile(path) else []

    @defer.inlineCallbacks
    def test_admin_writes_replace_the_file_whole(self):
        """A crash during `mailplat user add` must leave the old file or the
        new one, never half of it: write a temporary file, fsync, rename."""
        from mailplat.testing.spies import InPlaceWrites

        realm = self._kit_admin((yield self._kit_realm()))
        files = self.realm_files(realm)
        if not files:
            from twisted.trial.unittest import SkipTest

            raise SkipTest("the realm names no files it rewrites (realm_files)")
        with InPlaceWrites(files) as spy:
            yield defer.maybeDeferred(realm.add_user, f"frank@{self.domain}", stored_hash("new-pw", "PLAIN"))
            yield defer.maybeDeferred(realm.set_password, f"alice@{self.domain}", stored_hash("changed", "PLAIN"))
            yield defer.maybeDeferred(realm.delete_user, f"bob@{self.domain}")
        self.assertEqual(
            spy.writes, [],
            f"admin writes opened the users file for writing in place ({spy.writes}): a crash would leave it "
            "half written; write a temporary file, fsync it, rename it over the old one",
        )

    @defer.inlineCallbacks
    def test_admin_writes_are_seen_by_the_next_lookup(self):
        """The realm has answered (and maybe cached) before the write; the
        next lookup and login must see the change."""
        realm = self._kit_admin((yield self._kit_realm()))
        alice, bob, frank = (f"{n}@{self.domain}" for n in ("alice", "bob", "frank"))
        self.assertIsNone((yield realm.lookup(frank)))
        self.assertEqual((yield realm.lookup(bob)), bob)
        self.assertEqual((yield realm.check_password(alice, f"pw-{self.schemes[0].lower()}")), alice)
        yield defer.maybeDeferred(realm.add_user, frank, stored_hash("new-pw", "PLAIN"))
        yield defer.maybeDeferred(realm.delete_user, bob)
        yield defer.maybeDeferred(realm.set_password, alice, stored_hash("changed", "PLAIN"))
        self.assertEqual((yield realm.lookup(frank)), frank, "a user added is not found by the next lookup")
        self.assertIsNone((yield realm.lookup(bob)), "a user deleted is still found by the next lookup")
        self.assertEqual(
            (yield realm.check_password(alice, "changed")), alice, "a changed password is not the one checked next"
        )
        self.assertIn(frank, (yield realm.list_users()))
