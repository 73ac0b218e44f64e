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
  - Store conformance lives in mailplat.testing.store (IMailStore,
    IFolderStore: UIDs, flags, folders, notifications).
  - L{LMTPServer} (mailplat.testing.lmtp): a scriptable LMTP server for
    tests of LMTP delivery.

See docs/plugins.md for a walk-through.
"""

from mailplat.testing.delivery import DeliveryConformance
from mailplat.testing.lmtp import LMTPServer
from mailplat.testing.realm import RealmConformance

__all__ = ["DeliveryConformance", "LMTPServer", "RealmConformance"]
