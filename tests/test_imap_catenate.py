"""
CATENATE (RFC 4469) over a real socket: APPEND builds a message from TEXT
literals and IMAP URLs (RFC 5092) to messages in the user's own account;
a URL that cannot be used is NO [BADURL url] and nothing is stored.
"""

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.imap import urls
from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient

ORIGINAL = b"From: foo@example.com\nSubject: original\n\nHello world body\n"


def literal(data):
    return b"{%d+}\r\n" % len(data) + data


class Catenate(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        self.inbox = self.imap.account._folders["INBOX"]
        self.uid = self.inbox.add(ORIGINAL)

    def send(self, data, tag=b"A1"):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.send(data)
            return b"".join(c.until(tag))

        return in_thread(run)

    def stored(self, folder="INBOX"):
        return [m.data for m in self.imap.account._folders[folder].messages()]

    @defer.inlineCallbacks
    def test_catenate_is_advertised(self):
        answer = yield self.send(b"A1 CAPABILITY\r\n")
        self.assertIn(b" CATENATE", answer)

    @defer.inlineCallbacks
    def test_text_and_url_parts_are_joined_in_order(self):
        url = b'"/INBOX/;UID=%d/;SECTION=HEADER"' % self.uid
        answer = yield self.send(b"A1 APPEND INBOX (\\Seen) CATENATE (URL " + url + b" TEXT " + literal(b"new body\r\n") + b")\r\n")
        self.assertIn(b"A1 OK [APPENDUID", answer)
        self.assertEqual(self.stored()[1], b"From: foo@example.com\nSubject: original\n\nnew body\n")
        self.assertEqual(set(self.inbox.messages()[1].flags), {"\\Seen"})

    @defer.inlineCallbacks
    def test_url_to_another_mailbox_of_the_user(self):
        url = b'"/INBOX;UIDVALIDITY=%d/;UID=%d/;SECTION=TEXT"' % (self.inbox.uidvalidity, self.uid)
        answer = yield self.send(b"A1 APPEND Drafts CATENATE (TEXT " + literal(b"Subject: copy\r\n\r\n") + b" URL " + url + b")\r\n")
        self.assertIn(b"A1 OK", answer)
        self.assertEqual(self.stored("Drafts"), [b"Subject: copy\n\nHello world body\n"])

    @defer.inlineCallbacks
    def test_partial_range_of_a_url(self):
        url = b'"/INBOX/;UID=%d/;SECTION=TEXT/;PARTIAL=6.5"' % self.uid
        answer = yield self.send(b"A1 APPEND Drafts CATENATE (TEXT " + literal(b"X: y\r\n\r\n") + b" URL " + url + b")\r\n")
        self.assertIn(b"A1 OK", answer)
        self.assertEqual(self.stored("Drafts"), [b"X: y\n\nworld"])

    @defer.inlineCallbacks
    def test_wrong_uidvalidity_is_badurl_and_stores_nothing(self):
        url = b"/INBOX;UIDVALIDITY=12345/;UID=%d" % self.uid
        answer = yield self.send(b'A1 APPEND Drafts CATENATE (TEXT ' + literal(b"X: 1\r\n\r\n") + b' URL "' + url + b'")\r\n')
        self.assertIn(b"A1 NO [BADURL " + url + b"]", answer)
        self.assertEqual(self.stored("Drafts"), [])

    @defer.inlineCallbacks
    def test_unknown_uid_is_badurl(self):
        answer = yield self.send(b'A1 APPEND Drafts CATENATE (URL "/INBOX/;UID=99")\r\n')
        self.assertIn(b"A1 NO [BADURL /INBOX/;UID=99]", answer)

    @defer.inlineCallbacks
    def test_url_into_another_users_tree_is_badurl(self):
        answer = yield self.send(b'A1 APPEND Drafts CATENATE (URL "/../bob/INBOX/;UID=1")\r\n')
        self.assertIn(b"A1 NO [BADURL /../bob/INBOX/;UID=1]", answer)
        self.assertEqual(self.stored("Drafts"), [])

    @defer.inlineCallbacks
    def test_absolute_url_naming_another_user_is_badurl(self):
        answer = yield self.send(b'A1 APPEND Drafts CATENATE (URL "imap://bob@localhost/INBOX/;UID=1")\r\n')
        self.assertIn(b"A1 NO [BADURL imap://bob@localhost/INBOX/;UID=1]", answer)

    @defer.inlineCallbacks
    def test_absolute_url_naming_the_user_is_resolved(self):
        answer = yield self.send(b'A1 APPEND Drafts CATENATE (URL "imap://alice@localhost/INBOX/;UID=%d")\r\n' % self.uid)
        self.assertIn(b"A1 OK", answer)
        self.assertEqual(self.stored("Drafts"), [ORIGINAL])

    @defer.inlineCallbacks
    def test_missing_target_is_trycreate_before_badurl(self):
        answer = yield self.send(b'A1 APPEND Nowhere CATENATE (URL "/INBOX;UIDVALIDITY=1/;UID=1")\r\n')
        self.assertIn(b"A1 NO [TRYCREATE]", answer)

    @defer.inlineCallbacks
    def test_catenate_with_multiappend_stores_all(self):
        url = b'"/INBOX/;UID=%d"' % self.uid
        answer = yield self.send(
            b"A1 APPEND Drafts CATENATE (URL " + url + b") (\\Answered) " + literal(b"New: Message\r\n\r\nbody\r\n") + b"\r\n"
        )
        self.assertIn(b"A1 OK [APPENDUID", answer)
        self.assertEqual(self.stored("Drafts"), [ORIGINAL, b"New: Message\n\nbody\n"])

    @defer.inlineCallbacks
    def test_catenate_with_multiappend_stores_none_on_a_bad_url(self):
        good, bad = b'"/INBOX/;UID=%d"' % self.uid, b'"/INBOX;UIDVALIDITY=12345/;UID=1"'
        answer = yield self.send(b"A1 APPEND Drafts CATENATE (URL " + good + b") CATENATE (URL " + bad + b")\r\n")
        self.assertIn(b"A1 NO [BADURL", answer)
        self.assertEqual(self.stored("Drafts"), [])

    @defer.inlineCallbacks
    def test_assembled_message_over_message_size_is_toobig(self):
        self.imap.factory.limits["message_size"] = 60
        url = b'"/INBOX/;UID=%d"' % self.uid
        answer = yield self.send(b"A1 APPEND Drafts CATENATE (URL " + url + b" URL " + url + b")\r\n")
        self.assertIn(b"A1 NO [TOOBIG]", answer)
        self.assertEqual(self.stored("Drafts"), [])


class ParseURL(unittest.TestCase):
    def test_relative_url_with_every_component(self):
        ref = urls.parse("/Sent%20Items;UIDVALIDITY=7/;UID=3/;SECTION=1.MIME/;PARTIAL=10.20", "alice")
        self.assertEqual(
            (ref.mailbox, ref.uidvalidity, ref.uid, ref.section, ref.start, ref.length), ("Sent Items", 7, 3, "1.MIME", 10, 20)
        )

    def test_inbox_is_case_insensitive(self):
        self.assertEqual(urls.parse("/inbox/;uid=1", "alice").mailbox, "INBOX")

    def test_a_url_without_uid_is_not_a_message(self):
        self.assertRaises(urls.BadURL, urls.parse, "/INBOX", "alice")

    def test_urlauth_and_search_urls_are_refused(self):
        self.assertRaises(urls.BadURL, urls.parse, "/INBOX/;UID=1;URLAUTH=user+alice", "alice")
        self.assertRaises(urls.BadURL, urls.parse, "/INBOX?SUBJECT%20x", "alice")

    def test_network_path_to_another_server_is_refused(self):
        self.assertRaises(urls.BadURL, urls.parse, "//other.example/INBOX/;UID=1", "alice")

    def test_dot_segments_are_refused(self):
        self.assertRaises(urls.BadURL, urls.parse, "/../bob/INBOX/;UID=1", "alice")
        self.assertRaises(urls.BadURL, urls.parse, "/INBOX/../../bob/INBOX/;UID=1", "alice")
