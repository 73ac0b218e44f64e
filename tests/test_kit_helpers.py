"""
Helpers for plugin authors (issue 13 items 7 and 8): a message source, a
fake realm and store, the server's resolver over them, a logger per plugin;
the sources the server hands out are seekable, as IMessageSource says.
"""

import io

from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailplat.interfaces import IMailStore, IMessageSource, IRealmAdmin, IRealmBackend, NoSuchUser
from mailplat.plugin import BackendPlugin, logger
from mailplat.store.source import PrefixedSource, SpooledSource
from mailplat.testing import FakeRealm, FakeStore, message_source, resolver


class MessageSources(unittest.TestCase):
    def test_message_source_is_a_source_readable_again(self):
        source = message_source(b"Subject: hi\n\nbody\n")
        self.assertTrue(verifyObject(IMessageSource, source))
        self.assertEqual(source.size, 18)
        with source.open() as f:
            self.assertEqual(f.read(), b"Subject: hi\n\nbody\n")
        with source.open() as f:
            self.assertEqual(f.read(7), b"Subject")

    def assertSeekable(self, f, whole):
        self.assertTrue(f.seekable())
        head = f.read(10)
        f.seek(0)
        self.assertEqual(f.read(), whole)
        f.seek(len(head))
        self.assertEqual(f.tell(), len(head))
        self.assertEqual(f.read(), whole[len(head):])
        f.seek(-4, io.SEEK_END)
        self.assertEqual(f.read(), whole[-4:])

    def test_the_servers_sources_are_seekable(self):
        """What deliver() and a check's data() get: a trace header on top of the spooled message."""
        for max_memory in (1024 * 1024, 4):  # in memory, then in a spool file
            spooled = SpooledSource(self.mktemp(), max_memory=max_memory)
            spooled.write(b"Subject: hi\n\nthe body of it\n")
            source = PrefixedSource(b"Received: from x by y\n", spooled)
            with source.open() as f:
                self.assertSeekable(f, b"Received: from x by y\nSubject: hi\n\nthe body of it\n")
            spooled.discard()


class Fakes(unittest.TestCase):
    def test_the_fake_realm_answers_like_a_realm(self):
        realm = FakeRealm({"Alice@Example.Test": "pw"}, aliases={"info@example.test": ["alice@example.test"]})
        self.assertTrue(verifyObject(IRealmBackend, realm))
        self.assertTrue(verifyObject(IRealmAdmin, realm))
        self.assertEqual(self.successResultOf(realm.check_password("alice@EXAMPLE.test", "pw")), "alice@example.test")
        self.assertIsNone(self.successResultOf(realm.check_password("alice@example.test", "no")))
        self.assertEqual(realm.targets("info@example.test"), ["alice@example.test"])
        self.assertRaises(NoSuchUser, realm.delete_user, "nobody@example.test")

    def test_the_fake_store_files_into_folders_it_has(self):
        store = FakeStore(folders=("INBOX", "Junk"))
        self.assertTrue(verifyObject(IMailStore, store))
        self.successResultOf(store.deliver("alice@example.test", message_source(b"one\n"), "Junk"))
        self.successResultOf(store.deliver("alice@example.test", message_source(b"two\n"), "Nowhere"))
        self.assertEqual(store.messages("alice@example.test", "Junk"), [b"one\n"])
        self.assertEqual(store.messages("alice@example.test"), [b"two\n"])
        inbox = self.successResultOf(store.inbox("alice@example.test"))
        self.assertEqual([m.size for m in self.successResultOf(inbox.messages())], [5])

    def test_the_resolver_knows_plus_tags_and_postmaster(self):
        r = resolver(FakeRealm({"alice@example.test": "pw"}))
        self.assertEqual(self.successResultOf(r.mailbox("alice+lists@example.test")), ("alice@example.test", "lists"))
        self.assertEqual(self.successResultOf(r.mailbox("postmaster@example.test")), ("postmaster@example.test", None))
        self.failureResultOf(r.mailbox("nobody@example.test"), NoSuchUser)


class Loggers(unittest.TestCase):
    def test_a_plugins_logger_is_named_for_it(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        p = BackendPlugin("realm", "json-file", "x", lambda s, c: None)
        p.log.info("hello {who}", who="operator")
        logger("other").info("x")
        namespaces = [e.get("log_namespace") for e in seen]
        self.assertIn("mailplat.plugins.json-file", namespaces)
        self.assertIn("mailplat.plugins.other", namespaces)
