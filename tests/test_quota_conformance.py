"""
The conformance kit's store suite against the stores behind the quota
wrapper (mailplat.quota.QuotaStore), with limits high enough never to
refuse: the wrapper keeps the store contract (folders, UIDs, flags,
events, copy / move / expunge) while it counts.
"""

import os

from twisted.trial import unittest

from mailplat import quota
from mailplat.store.maildir import MaildirStore
from mailplat.store.mbox import MboxStore
from mailplat.testing import StoreConformance


class Wrapped:
    store_class = None
    layout_class = None

    def make_store(self):
        self.template = os.path.join(os.path.abspath(self.mktemp()), "%d", "%n")
        return self._new()

    def _new(self):
        inner = self.store_class(self.template)
        self.addCleanup(inner.close)
        return quota.QuotaStore(inner, self.layout_class(inner), None, storage=10**9, messages=10**6)

    def reopen_store(self, store):
        return store.close().addCallback(lambda _: self._new())


class QuotaMaildirConforms(Wrapped, StoreConformance, unittest.TestCase):
    store_class = MaildirStore
    layout_class = quota.MaildirLayout


class QuotaMboxConforms(Wrapped, StoreConformance, unittest.TestCase):
    store_class = MboxStore
    layout_class = quota.MboxLayout
