"""
The conformance kit: trial test-case mixins that prove a backend plugin
behaves the way mailplat's protocols rely on. Subclass one together with
twisted.trial.unittest.TestCase, implement its factory hooks, and run
`python -m twisted.trial your_tests`:

    from twisted.trial import unittest
    from mailplat.testing import RealmConformance

    class MyRealmConforms(RealmConformance, unittest.TestCase):
        def make_realm(self, users):
            ...                     # a realm holding `users`
        def make_unavailable_realm(self):
            ...                     # the same backend, unreachable

The kinds:
  - L{RealmConformance} (mailplat.testing.realm): IRealmBackend, IRealmAdmin.
  - L{DeliveryConformance} (mailplat.testing.delivery): IDeliveryAgent.
  - L{StoreConformance} (mailplat.testing.store): IMailStore,
    IFolderStore, IMailAccount, IMailFolder (UIDs, flags, folders,
    notifications).
  - L{RelayConformance} (mailplat.testing.relay): IRelayQueue.
  - L{CheckConformance} (mailplat.testing.check): ICheck.
  - L{LMTPServer} (mailplat.testing.lmtp): a scriptable LMTP server for
    tests of LMTP delivery.

Helpers for a plugin's own unit tests (mailplat.testing.fakes):
L{message_source} (an IMessageSource over bytes, as the server gives one),
L{FakeRealm}, L{FakeStore} and L{resolver} (the server's address resolver
over a realm). The kit's spies and timer: L{FsyncSpy}, L{timed_call}
(mailplat.testing.spies, .blocking); L{KitServer} runs a whole server on a
realm (mailplat.testing.server).

See docs/plugins.md for a walk-through.
"""

from mailplat.testing.blocking import BLOCKING_LIMIT, timed_call
from mailplat.testing.check import CheckConformance
from mailplat.testing.delivery import DeliveryConformance
from mailplat.testing.fakes import FakeRealm, FakeStore, message_source, resolver
from mailplat.testing.lmtp import LMTPServer
from mailplat.testing.realm import RealmConformance
from mailplat.testing.relay import RelayConformance
from mailplat.testing.server import KitServer
from mailplat.testing.spies import FsyncSpy
from mailplat.testing.store import StoreConformance

__all__ = [
    "BLOCKING_LIMIT",
    "CheckConformance",
    "DeliveryConformance",
    "FakeRealm",
    "FakeStore",
    "FsyncSpy",
    "KitServer",
    "LMTPServer",
    "RealmConformance",
    "RelayConformance",
    "StoreConformance",
    "message_source",
    "resolver",
    "timed_call",
]
