"""
Helpers for plugin authors' unit tests: a message source, a fake realm, a
fake store and an address resolver over them, all in memory.

    from mailplat.testing import FakeRealm, FakeStore, message_source, resolver

    realm = FakeRealm({"alice@example.test": "secret"})
    store = FakeStore(folders=("INBOX", "Junk"))
    agent = MyDelivery(resolver(realm), store)
    ...
    store.messages("alice@example.test", "Junk")     # [b"Return-Path: ...", ...]
"""

import itertools

from twisted.internet import defer
from zope.interface import implementer

from mailplat.interfaces import (
    IAliasSource,
    IFolder,
    IMailStore,
    IRealmAdmin,
    IRealmBackend,
    IStoredMessage,
    NoSuchUser,
    PermanentFailure,
)
from mailplat.store.source import BytesSource


def message_source(data):
    """
    An L{IMessageSource} over `data` (bytes, LF line ends), as the server
    hands one to deliver(), a check's data() or append(): readable any
    number of times; each open() is a new seekable binary file.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    return BytesSource(data)


@implementer(IRealmBackend, IRealmAdmin, IAliasSource)
class FakeRealm:
    """
    Users and their plain-text passwords in a dict; aliases too. Answers at
    once (Deferreds that have fired). Not for production: nothing is hashed.
    """

    def __init__(self, users=None, aliases=None):
        self.users = {a.lower(): p for a, p in (users or {}).items()}
        self.aliases = {a.lower(): [t.lower() for t in ts] for a, ts in (aliases or {}).items()}

    def lookup(self, address):
        address = address.lower()
        return defer.succeed(address if address in self.users else None)

    def check_password(self, address, password):
        address = address.lower()
        ok = address in self.users and self.users[address] == password
        return defer.succeed(address if ok else None)

    def list_users(self):
        return defer.succeed(sorted(self.users))

    def targets(self, address):
        return self.aliases.get(address.lower())

    # IRealmAdmin: the "hash" is kept as given.
    def add_user(self, address, password_hash):
        if address in self.users:
            raise PermanentFailure(f"user exists: {address}")
        self.users[address] = password_hash

    def set_password(self, address, password_hash):
        if address not in self.users:
            raise NoSuchUser(address)
        self.users[address] = password_hash

    def delete_user(self, address):
        if address not in self.users:
            raise NoSuchUser(address)
        del self.users[address]


@implementer(IStoredMessage)
class FakeMessage:
    def __init__(self, key, data, flags=frozenset()):
        self.key = key
        self.data = data
        self.size = len(data.replace(b"\n", b"\r\n"))
        self.flags = frozenset(flags)


@implementer(IFolder)
class FakeFolder:
    def __init__(self, name):
        self.name = name
        self.stored = {}

    def messages(self):
        return defer.succeed(list(self.stored.values()))

    def open_message(self, key):
        if key not in self.stored:
            return defer.fail(KeyError(key))
        return defer.succeed(message_source(self.stored[key].data).open())

    def remove(self, keys):
        for key in keys:
            self.stored.pop(key, None)
        return defer.succeed(None)


@implementer(IMailStore)
class FakeStore:
    """
    An L{IMailStore} in memory (no IMAP): each user has the folders
    `folders`; deliver() into a folder that does not exist files into INBOX,
    as the interface says.
    """

    def __init__(self, folders=("INBOX", "Junk")):
        self.folder_names = tuple(folders)
        self.accounts = {}
        self._keys = itertools.count(1)

    def _folder(self, address, name):
        account = self.accounts.setdefault(address, {n: FakeFolder(n) for n in self.folder_names})
        return account.get(name or "INBOX") or account["INBOX"]

    def deliver(self, address, source, folder=None):
        with source.open() as f:
            data = f.read()
        key = f"m{next(self._keys)}"
        target = self._folder(address, folder)
        target.stored[key] = FakeMessage(key, data)
        return defer.succeed(key)

    def inbox(self, address):
        return defer.succeed(self._folder(address, "INBOX"))

    def messages(self, address, folder="INBOX"):
        """The bytes of every message in a user's folder (a test's view)."""
        return [m.data for m in self._folder(address, folder).stored.values()]


def resolver(realm, domains=("example.test",), aliases=None, delimiter="+"):
    """
    The server's L{mailplat.delivery.addresses.AddressResolver} over
    `realm` (aliases from `aliases`, a dict, else from the realm when it
    keeps them): what a delivery plugin's build gets as C{context.resolver}.
    """
    from mailplat.delivery.addresses import AddressResolver

    class _Aliases:
        def targets(self, address):
            if aliases is not None:
                return aliases.get(address)
            return getattr(realm, "targets", lambda a: None)(address)

    return AddressResolver(realm, _Aliases(), list(domains), delimiter)
