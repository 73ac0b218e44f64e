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

See docs/plugins.md for a walk-through.
"""

from mailplat.testing.check import CheckConformance
from mailplat.testing.delivery import DeliveryConformance
from mailplat.testing.lmtp import LMTPServer
from mailplat.testing.realm import RealmConformance
from mailplat.testing.relay import RelayConformance
from mailplat.testing.store import StoreConformance

__all__ = [
    "CheckConformance",
    "DeliveryConformance",
    "LMTPServer",
    "RealmConformance",
    "RelayConformance",
    "StoreConformance",
]
