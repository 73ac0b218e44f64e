"""
MULTIAPPEND (RFC 3502) over a real socket: several messages in one APPEND,
stored all or none, with APPENDUID naming every new UID (RFC 4315 3).
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import in_thread
from tests.imap_support import MemoryFolder, MemoryIMAP, RawClient


def literal(data, nonsync=True):
    return b"{%d%s}\r\n" % (len(data), b"+" if nonsync else b"") + data


class FailingFolder(MemoryFolder):
    """A folder whose append fails after `allowed` messages."""

    def __init__(self, name, allowed):
        super().__init__(name)
        self.allowed = allowed

    def append(self, source, flags=(), internaldate=None, origin=None):
        if self.allowed <= 0:
            return defer.fail(OSError("disk full"))
        self.allowed -= 1
        return super().append(source, flags, internaldate, origin)


class Session(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        self.inbox = self.imap.account._folders["INBOX"]

    def send(self, data, tag=b"A1"):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.send(data)
            return b"".join(c.until(tag))

        return in_thread(run)


class MultiAppend(Session):
    @defer.inlineCallbacks
    def test_multiappend_is_advertised(self):
        answer = yield self.send(b"A1 CAPABILITY\r\n")
        self.assertIn(b" MULTIAPPEND", answer)

    @defer.inlineCallbacks
    def test_two_messages_in_one_append_are_both_stored(self):
        one, two = b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n"
        answer = yield self.send(b"A1 APPEND INBOX " + literal(one) + b" " + literal(two) + b"\r\n")
        self.assertIn(b"A1 OK [APPENDUID %d 1:2]" % self.inbox.uidvalidity, answer)
        self.assertEqual([m.data for m in self.inbox.messages()], [b"Subject: one\n\n1\n", b"Subject: two\n\n2\n"])

    @defer.inlineCallbacks
    def test_each_message_has_its_own_flags_and_date(self):
        one, two = b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n"
        answer = yield self.send(
            b"A1 APPEND INBOX (\\Seen) " + literal(one) + b' (\\Flagged) "01-Jan-2020 00:00:00 +0000" ' + literal(two) + b"\r\n"
        )
        self.assertIn(b"A1 OK", answer)
        first, second = self.inbox.messages()
        self.assertEqual(set(first.flags), {"\\Seen"})
        self.assertEqual(set(second.flags), {"\\Flagged"})
        self.assertEqual(second.internaldate, 1577836800)

    @defer.inlineCallbacks
    def test_synchronizing_literals_each_get_a_continuation(self):
        one, two = b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n"

        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.send(b"A1 APPEND INBOX {%d}\r\n" % len(one))
            first = c.line()
            c.send(one + b" {%d}\r\n" % len(two))
            second = c.line()
            c.send(two + b"\r\n")
            return first, second, b"".join(c.until(b"A1"))

        first, second, answer = yield in_thread(run)
        self.assertTrue(first.startswith(b"+") and second.startswith(b"+"))
        self.assertIn(b"A1 OK [APPENDUID", answer)
        self.assertEqual(len(self.inbox.messages()), 2)

    @defer.inlineCallbacks
    def test_a_failure_stores_none_of_them(self):
        box = FailingFolder("Box", allowed=1)
        self.imap.account._folders["Box"] = box
        one, two = b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n"
        answer = yield self.send(b"A1 APPEND Box " + literal(one) + b" " + literal(two) + b"\r\n")
        self.assertIn(b"A1 NO", answer)
        self.assertEqual(box.messages(), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    @defer.inlineCallbacks
    def test_a_syntax_error_in_a_later_message_stores_none(self):
        one = b"Subject: one\r\n\r\n1\r\n"
        answer = yield self.send(b"A1 APPEND INBOX " + literal(one) + b" (\\Seen\r\n")
        self.assertIn(b"A1 BAD", answer)
        self.assertEqual(self.inbox.messages(), [])

    @defer.inlineCallbacks
    def test_too_much_in_one_append_is_toobig(self):
        self.imap.factory.limits["message_size"] = 100
        part = b"x" * 90
        answer = yield self.send(b"A1 APPEND INBOX" + b"".join(b" " + literal(part) for _ in range(6)) + b"\r\n")
        self.assertIn(b"A1 NO [TOOBIG]", answer)
        self.assertEqual(self.inbox.messages(), [])

    @defer.inlineCallbacks
    def test_missing_mailbox_is_trycreate(self):
        one = b"Subject: one\r\n\r\n1\r\n"
        answer = yield self.send(b"A1 APPEND Nowhere " + literal(one) + b" " + literal(one) + b"\r\n")
        self.assertIn(b"A1 NO [TRYCREATE]", answer)


class OnMaildir(unittest.TestCase):
    """MULTIAPPEND on the real store: both messages, or after a failure neither."""

    store = "maildir"

    def folder_class(self):
        from mailplat.store.maildir.mailfolder import MaildirMailFolder

        return MaildirMailFolder

    @defer.inlineCallbacks
    def setUp(self):
        from tests.helpers import MailServer
        from tests.test_imap_maildir import drain

        self.server = yield MailServer(self, listeners=("smtp", "imap")).start(users={"alice@example.test": "pw"})
        self.addCleanup(drain, self.server)

    def session(self, *commands):
        def run():
            c = RawClient(self.server.port("imap"))
            self.addCleanup(c.close)
            c.command(b"T1 STARTTLS")
            c.starttls()
            c.command(b"L1 LOGIN alice@example.test pw")
            return [b"".join(c.command(command)) for command in commands]

        return in_thread(run)

    def two(self):
        one, two = b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n"
        return b"A1 APPEND INBOX " + literal(one) + b" " + literal(two)

    @defer.inlineCallbacks
    def test_both_are_stored_with_their_uids(self):
        appended, fetched = yield self.session(self.two(), b"S1 SELECT INBOX")
        self.assertRegex(appended, rb"A1 OK \[APPENDUID \d+ 1:2\]")
        self.assertIn(b"* 2 EXISTS", fetched)

    @defer.inlineCallbacks
    def test_a_failed_second_message_takes_the_first_back(self):
        cls = self.folder_class()
        original = cls.append
        calls = []

        def failing(folder, source, flags=(), internaldate=None, origin=None):
            calls.append(1)
            if len(calls) == 2:
                return defer.fail(OSError("disk full"))
            return original(folder, source, flags=flags, internaldate=internaldate, origin=origin)

        self.patch(cls, "append", failing)
        appended, selected = yield self.session(self.two(), b"S1 SELECT INBOX")
        self.assertIn(b"A1 NO", appended)
        self.assertIn(b"* 0 EXISTS", selected)
        self.flushLoggedErrors(OSError)


class OnMbox(OnMaildir):
    store = "mbox"

    def folder_class(self):
        from mailplat.store.mbox.folder import MboxFolder

        return MboxFolder
