"""The conformance kit's store suite, run against the built-in maildir and mbox stores."""

import os

from twisted.trial import unittest

from mailplat.store.maildir import MaildirStore
from mailplat.store.mbox import MboxStore
from mailplat.testing import StoreConformance


class MaildirConforms(StoreConformance, unittest.TestCase):
    def make_store(self):
        self.template = os.path.join(os.path.abspath(self.mktemp()), "%d", "%n")
        return self._new()

    def _new(self):
        store = MaildirStore(self.template)
        self.addCleanup(store.close)
        return store

    def reopen_store(self, store):
        return store.close().addCallback(lambda _: self._new())


class MboxConforms(StoreConformance, unittest.TestCase):
    def make_store(self):
        self.template = os.path.join(os.path.abspath(self.mktemp()), "%d", "%n")
        return self._new()

    def _new(self):
        store = MboxStore(self.template)
        self.addCleanup(store.close)
        return store

    def reopen_store(self, store):
        return store.close().addCallback(lambda _: self._new())
