"""
RFC 3501 7.2.6: a keyword reaches a client in an untagged FLAGS (and
PERMANENTFLAGS) before any FETCH that shows it, in the session that added
it and in every other session with the folder selected (imaptest's
"Keyword used without being in FLAGS").
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient


def _index(lines, prefix):
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            return i
    return None


class NewKeywordAnnounced(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        self.imap.inbox.add(b"Subject: one\r\n\r\nbody\r\n")
        self.imap.inbox.add(b"Subject: two\r\n\r\nbody\r\n")

    def client(self):
        c = RawClient(self.imap.port)
        self.addCleanup(c.close)
        c.login()
        c.command(b"S1 SELECT INBOX")
        return c

    def assertFlagsBeforeFetch(self, lines, keyword, fetch_prefix):
        flags = _index(lines, b"* FLAGS ")
        permanent = _index(lines, b"* OK [PERMANENTFLAGS ")
        fetched = _index(lines, fetch_prefix)
        self.assertIsNotNone(fetched, lines)
        self.assertIsNotNone(flags, lines)
        self.assertIsNotNone(permanent, lines)
        self.assertIn(keyword, lines[flags])
        self.assertIn(keyword, lines[permanent])
        self.assertLess(flags, fetched, lines)

    @defer.inlineCallbacks
    def test_store_of_a_new_keyword_sends_flags_before_its_fetch(self):
        def run():
            return self.client().command(b"T1 STORE 1 +FLAGS ($Label1)")

        lines = yield in_thread(run)
        self.assertFlagsBeforeFetch(lines, b"$Label1", b"* 1 FETCH")
        self.assertTrue(lines[-1].startswith(b"T1 OK"))

    @defer.inlineCallbacks
    def test_other_session_gets_flags_before_the_fetch_with_the_new_keyword(self):
        def run():
            a, b = self.client(), self.client()
            a.command(b"T1 STORE 2 +FLAGS.SILENT ($Label2)")
            return b.command(b"N1 NOOP")

        lines = yield in_thread(run)
        self.assertFlagsBeforeFetch(lines, b"$Label2", b"* 2 FETCH")

    @defer.inlineCallbacks
    def test_fetch_of_a_message_appended_with_a_new_keyword_sends_flags_first(self):
        def run():
            a, b = self.client(), self.client()
            message = b"Subject: x\r\n\r\nbody\r\n"
            a.send(b"A1 APPEND INBOX ($Label3) {%d}\r\n" % len(message))
            a.line()
            a.send(message + b"\r\n")
            a.until(b"A1")
            b.command(b"N1 NOOP")  # EXISTS
            return b.command(b"F1 FETCH 3 (FLAGS)")

        lines = yield in_thread(run)
        self.assertFlagsBeforeFetch(lines, b"$Label3", b"* 3 FETCH")

    @defer.inlineCallbacks
    def test_a_keyword_announced_once_is_not_announced_again(self):
        def run():
            a = self.client()
            a.command(b"T1 STORE 1 +FLAGS ($Label4)")
            return a.command(b"T2 STORE 2 +FLAGS ($Label4)")

        lines = yield in_thread(run)
        self.assertIsNone(_index(lines, b"* FLAGS "), lines)
        self.assertIsNotNone(_index(lines, b"* 2 FETCH"), lines)

    @defer.inlineCallbacks
    def test_keywords_in_the_folder_at_select_are_not_announced_again(self):
        self.imap.inbox.store_flags([1], frozenset(["$Old"]), "+")

        def run():
            return self.client().command(b"F1 FETCH 1 (FLAGS)")

        lines = yield in_thread(run)
        self.assertIsNone(_index(lines, b"* FLAGS "), lines)
