"""
Plugins with one deliberate bug each, and the kit's test cases over them,
for tests/test_kit_catches.py. (Not a test module: trial collects test_*
modules only, so these cases run only when test_kit_catches asks.)

Each plugin is a small good one (a JSON-file realm, an .eml-file delivery,
a Subject check, as a third-party author writes them from docs/plugins.md)
with one method changed.
"""

import json
import os
import time
import uuid

from twisted.internet import defer, threads
from twisted.trial import unittest
from zope.interface import implementer

from mailplat.checks import Check
from mailplat.interfaces import (
    IDeliveryAgent,
    IDeliveryTransaction,
    IRealmAdmin,
    IRealmBackend,
    NoSuchUser,
    PermanentFailure,
    TemporaryFailure,
    Verdict,
)
from mailplat.realm import passwords
from mailplat.testing import CheckConformance, DeliveryConformance, FakeRealm, RealmConformance, message_source
from mailplat.testing import resolver as make_resolver

# --- realms --------------------------------------------------------------------


@implementer(IRealmBackend, IRealmAdmin)
class GoodRealm:
    """Users in a JSON file, read on every call; admin writes replace it whole."""

    def __init__(self, path, unavailable=False):
        self.path = path
        self.unavailable = unavailable

    def _users(self):
        if self.unavailable:
            raise TemporaryFailure(f"cannot read {self.path}")
        try:
            with open(self.path) as f:
                return {a.lower(): h for a, h in json.load(f).items()}
        except FileNotFoundError:
            return {}

    def _save(self, users):
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            json.dump(users, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def lookup(self, address):
        return defer.maybeDeferred(lambda: address.lower() if address.lower() in self._users() else None)

    def check_password(self, address, password):
        address = address.lower()
        try:
            stored = self._users().get(address)
        except TemporaryFailure:
            return defer.fail()
        d = passwords.verify_later(stored or passwords.dummy_hash(), password)
        return d.addCallback(lambda ok: address if ok and stored else None)

    def list_users(self):
        return defer.maybeDeferred(lambda: sorted(self._users()))

    def add_user(self, address, password_hash):
        users = self._users()
        if address in users:
            raise PermanentFailure(f"user exists: {address}")
        users[address] = password_hash
        self._save(users)

    def set_password(self, address, password_hash):
        users = self._users()
        if address not in users:
            raise NoSuchUser(address)
        users[address] = password_hash
        self._save(users)

    def delete_user(self, address):
        users = self._users()
        if address not in users:
            raise NoSuchUser(address)
        del users[address]
        self._save(users)


class PlainValueRealm(GoodRealm):
    """Answers with plain values, as interfaces.py allows (it broke every login before)."""

    def lookup(self, address):
        return address.lower() if address.lower() in self._users() else None

    def check_password(self, address, password):
        stored = self._users().get(address.lower())
        # PLAIN and a dummy PLAIN hash: fast enough to answer at once.
        if stored and stored.startswith("{PLAIN}"):
            return address.lower() if passwords.verify(stored, password) else None
        return defer.maybeDeferred(GoodRealm.check_password, self, address, password)

    def list_users(self):
        return sorted(self._users())


class AsyncRealm(GoodRealm):
    """Written `async def` throughout (it broke every login before)."""

    async def lookup(self, address):
        return address.lower() if address.lower() in self._users() else None

    async def check_password(self, address, password):
        address = address.lower()
        stored = self._users().get(address)
        ok = await passwords.verify_later(stored or passwords.dummy_hash(), password)
        return address if ok and stored else None

    async def list_users(self):
        return sorted(self._users())


class BlockingRealm(GoodRealm):
    """Checks the hash in the reactor thread (synchronous argon2)."""

    def check_password(self, address, password):
        stored = self._users().get(address.lower())
        ok = passwords.verify(stored or passwords.dummy_hash(), password)
        return defer.succeed(address.lower() if ok and stored else None)


class NoDummyHashRealm(GoodRealm):
    """Says "no" at once for unknown users: the timing tells who exists."""

    def check_password(self, address, password):
        if address.lower() not in self._users():
            return defer.succeed(None)
        return GoodRealm.check_password(self, address, password)


class InPlaceAdminRealm(GoodRealm):
    """Rewrites the users file in place: a crash leaves half of it."""

    def _save(self, users):
        with open(self.path, "w") as f:
            json.dump(users, f)


class StaleCacheRealm(GoodRealm):
    """Reads the file once and never again, not even after its own writes."""

    _cache = None

    def _users(self):
        if self._cache is None:
            self._cache = GoodRealm._users(self)
        return dict(self._cache)


class AnyPasswordRealm(GoodRealm):
    """Compares PLAIN passwords by prefix: 'pw-plainx' passes for 'pw-plain'."""

    def check_password(self, address, password):
        stored = self._users().get(address.lower())
        if stored and stored.startswith("{PLAIN}"):
            return defer.succeed(address.lower() if password.startswith(stored[7:]) else None)
        return GoodRealm.check_password(self, address, password)


class CaseSensitiveRealm(GoodRealm):
    """Forgets that domains are case-insensitive."""

    def lookup(self, address):
        return defer.maybeDeferred(lambda: address if address in self._users() else None)


class NobodyWhenDownRealm(GoodRealm):
    """Answers "no such user" when its data cannot be read."""

    def lookup(self, address):
        try:
            return GoodRealm.lookup(self, address) if not self.unavailable else defer.succeed(None)
        except TemporaryFailure:
            return defer.succeed(None)


class UnsortedRealm(GoodRealm):
    def list_users(self):
        return defer.maybeDeferred(lambda: sorted(self._users(), reverse=True))


@implementer(IRealmBackend)
class NoListRealm:
    """Has no list_users at all."""

    def __init__(self, path, unavailable=False):
        self._inner = GoodRealm(path, unavailable)

    def lookup(self, address):
        return self._inner.lookup(address)

    def check_password(self, address, password):
        return self._inner.check_password(address, password)


class Account:
    """A user object that compares equal to its address (but is no str)."""

    def __init__(self, address):
        self.address = address

    def __eq__(self, other):
        return other == self.address or (isinstance(other, Account) and other.address == self.address)

    def __hash__(self):
        return hash(self.address)


class UserObjectRealm(GoodRealm):
    """Answers check_password with a user object instead of the address."""

    def check_password(self, address, password):
        return GoodRealm.check_password(self, address, password).addCallback(
            lambda found: Account(found) if found else None
        )


class RealmCase(RealmConformance, unittest.TestCase):
    realm_class = GoodRealm

    def make_realm(self, users):
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            json.dump(users, f)
        return self.realm_class(self.path)

    def make_unavailable_realm(self):
        return self.realm_class(os.path.abspath(self.mktemp()), unavailable=True)


# --- deliveries ----------------------------------------------------------------


def _write(directory, data, sync=True):
    os.makedirs(directory, exist_ok=True)
    name = uuid.uuid4().hex
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    final = os.path.join(directory, f"{name}.eml")
    os.rename(tmp, final)
    if sync:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return final


@implementer(IDeliveryAgent)
class GoodDelivery:
    """.eml files in DIRECTORY/ADDRESS/FOLDER, fsynced before deliver fires."""

    sync = True

    def __init__(self, directory, resolver):
        self.directory = directory
        self.resolver = resolver

    def start(self, envelope):
        return self.transaction_class(self, envelope)

    def path(self, address, folder):
        return os.path.join(self.directory, address, folder or "INBOX")


@implementer(IDeliveryTransaction)
class GoodTransaction:
    def __init__(self, agent, envelope):
        self.agent = agent
        self.envelope = envelope
        self.recipients = []

    def _mailbox(self, address):
        return self.agent.resolver.mailbox(address)

    @defer.inlineCallbacks
    def add_recipient(self, address):
        mailbox = yield self._mailbox(address)
        self._add(mailbox)

    def _add(self, mailbox):
        if mailbox not in self.recipients:
            self.recipients.append(mailbox)

    def _folder(self, tag):
        return self.envelope.folder or tag

    def _failed(self, e):
        return TemporaryFailure(f"cannot write: {e}")

    @defer.inlineCallbacks
    def deliver(self, source):
        if not self.recipients:
            raise PermanentFailure("no valid recipients", "5.5.1", 554)
        with source.open() as f:
            data = f.read()
        written = []
        try:
            for address, tag in self.recipients:
                path = self.agent.path(address, self._folder(tag))
                written.append((yield threads.deferToThread(_write, path, data, self.agent.sync)))
        except OSError as e:
            for p in written:
                os.unlink(p)
            raise self._failed(e)

    def abort(self):
        self.recipients = []


GoodDelivery.transaction_class = GoodTransaction


class NoFsyncDelivery(GoodDelivery):
    sync = False


class IgnoresFolderTransaction(GoodTransaction):
    def _folder(self, tag):
        return tag


class IgnoresFolderDelivery(GoodDelivery):
    transaction_class = IgnoresFolderTransaction


class IgnoresTagTransaction(GoodTransaction):
    def _folder(self, tag):
        return self.envelope.folder


class IgnoresTagDelivery(GoodDelivery):
    transaction_class = IgnoresTagTransaction


class RefusesPostmasterTransaction(GoodTransaction):
    @defer.inlineCallbacks
    def _mailbox(self, address):
        base, tag = self.agent.resolver.split_tag(address.lower())
        user = yield self.agent.resolver.realm.lookup(base)
        if user is None:
            raise NoSuchUser(address)
        return user, tag


class RefusesPostmasterDelivery(GoodDelivery):
    transaction_class = RefusesPostmasterTransaction


class EarlyTransaction(GoodTransaction):
    """Writes at RCPT time, before the message is complete."""

    @defer.inlineCallbacks
    def add_recipient(self, address):
        mailbox = yield self._mailbox(address)
        self._add(mailbox)
        yield threads.deferToThread(_write, self.agent.path(mailbox[0], None), b"placeholder\n")


class EarlyDelivery(GoodDelivery):
    transaction_class = EarlyTransaction


class DuplicatesTransaction(GoodTransaction):
    def _add(self, mailbox):
        self.recipients.append(mailbox)


class DuplicatesDelivery(GoodDelivery):
    transaction_class = DuplicatesTransaction


class AcceptsAnyoneTransaction(GoodTransaction):
    def _mailbox(self, address):
        return defer.succeed(self.agent.resolver.split_tag(address.lower()))


class AcceptsAnyoneDelivery(GoodDelivery):
    transaction_class = AcceptsAnyoneTransaction


class BouncesOnOutageTransaction(GoodTransaction):
    def _failed(self, e):
        return PermanentFailure(f"cannot write: {e}")


class BouncesOnOutageDelivery(GoodDelivery):
    transaction_class = BouncesOnOutageTransaction


class DeliveryCase(DeliveryConformance, unittest.TestCase):
    agent_class = GoodDelivery

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.realm = FakeRealm({u: "pw" for u in self.users})

    def make_agent(self):
        return self.agent_class(self.directory, make_resolver(self.realm))

    def delivered_in(self, address, folder):
        found = []
        folder_path = os.path.join(self.directory, address, folder)
        for name in sorted(os.listdir(folder_path)) if os.path.isdir(folder_path) else []:
            if name.endswith(".eml"):
                with open(os.path.join(folder_path, name), "rb") as f:
                    found.append(f.read())
        return found

    def delivered(self, address):
        return self.delivered_in(address, "INBOX")

    def break_mailbox(self, agent, address):
        os.makedirs(self.directory, exist_ok=True)
        open(os.path.join(self.directory, address), "w").close()

    def make_unavailable_agent(self):
        blocker = os.path.abspath(self.mktemp())
        open(blocker, "w").close()
        return self.agent_class(os.path.join(blocker, "mail"), make_resolver(self.realm))


# --- checks --------------------------------------------------------------------


class GoodCheck(Check):
    """Refuses a Subject with a listed word."""

    name = "subjects"

    def __init__(self, words=("viagra",)):
        self.words = words

    def _subject(self, source):
        with source.open() as f:
            head = f.read(65536).split(b"\n\n", 1)[0]
        for line in head.split(b"\n"):
            if line.lower().startswith(b"subject:"):
                return line[8:].decode("utf-8", "replace").strip().lower()
        return ""

    def data(self, session, envelope, source):
        if any(w in self._subject(source) for w in self.words):
            return Verdict.reject("message refused by a content rule", 550, "5.7.1")
        return None


class BlockingCheck(GoodCheck):
    """Asks a slow service synchronously (300 ms)."""

    def data(self, session, envelope, source):
        time.sleep(0.3)
        return GoodCheck.data(self, session, envelope, source)


class StatefulCheck(GoodCheck):
    """Remembers the last sender on the check object, shared by every session."""

    last_sender = None

    def mail(self, session, sender):
        self.last_sender = sender
        return None

    def data(self, session, envelope, source):
        if self.last_sender:
            return Verdict.tempfail("one message at a time, please", 451, "4.7.1")
        return None


class WrongCodeCheck(GoodCheck):
    """A "reject" with a 4xx code, built by hand."""

    def data(self, session, envelope, source):
        return Verdict(Verdict.REJECT, 450, "4.7.1", "refused")


class NotAVerdictCheck(GoodCheck):
    def data(self, session, envelope, source):
        return True


class AcceptsTooMuchCheck(GoodCheck):
    """Promises "no opinion" for ordinary mail, but accepts it (skipping later checks)."""

    def data(self, session, envelope, source):
        return GoodCheck.data(self, session, envelope, source) or Verdict.accept()


def _message(subject):
    return message_source(f"From: a@remote.test\nSubject: {subject}\n\nhello\n")


class CheckCase(CheckConformance, unittest.TestCase):
    check_class = GoodCheck

    @property
    def cases(self):
        from mailplat.interfaces import Envelope

        return [
            ("data", (Envelope("a@remote.test"), _message("Cheap VIAGRA")), Verdict.REJECT),
            ("data", (Envelope("a@remote.test"), _message("Lunch?")), Verdict.NEXT),
        ]

    def make_check(self):
        return self.check_class()
