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
    def test_unavailable_backend_fails_lookup_temporarily(self):
        realm = yield self._kit_unavailable()
        yield self.assertFailure(defer.maybeDeferred(realm.lookup, f"alice@{self.domain}"), TemporaryFailure)

    @defer.inlineCallbacks
    def test_unavailable_backend_fails_password_checks_temporarily(self):
        realm = yield self._kit_unavailable()
        d = defer.maybeDeferred(realm.check_password, f"alice@{self.domain}", "pw-argon2id")
        yield self.assertFailure(d, TemporaryFailure)

    @defer.inlineCallbacks
    def test_unavailable_backend_fails_list_users_temporarily(self):
        realm = yield self._kit_unavailable()
        yield self.assertFailure(defer.maybeDeferred(realm.list_users), TemporaryFailure)

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
