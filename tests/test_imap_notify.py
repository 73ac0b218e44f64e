"""
NOTIFY (RFC 5465) over real sockets: NOTIFY SET / NONE, STATUS of other
mailboxes as messages arrive, go or change flags, the selected mailbox's
changes pushed without a command, and MailboxName / SubscriptionChange as
LIST responses.

Two sessions of one user: `a` asks to be told, `b` (or the store) makes
the changes. INBOX holds two messages; the folder "Other" one.
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient

MESSAGE = b"Subject: hi\nFrom: a@example.test\n\nhello\n"


def next_with(client, word):
    """The next line the server sends (unasked) that has `word`; the ones before are skipped."""
    for _ in range(20):
        line = client.line()
        if word in line:
            return line
    raise AssertionError(f"no line with {word!r}")


def lines_of(lines, word):
    return [line.rstrip(b"\r\n") for line in lines if line.startswith(b"* ") and word in line]


class Session(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        self.imap.inbox.add(MESSAGE)
        self.imap.inbox.add(MESSAGE)
        self.imap.account.create("Other")
        self.other = self.imap.account._folders["Other"]
        self.other.add(MESSAGE)

    def client(self, select=True):
        c = RawClient(self.imap.port)
        self.addCleanup(c.close)
        c.login()
        if select:
            c.command(b"S0 SELECT INBOX")
        return c

    def talk(self, script):
        return in_thread(script)

    def assertOK(self, lines):
        self.assertEqual(lines[-1].split(b" ", 2)[1], b"OK", lines)

    def status(self, items):
        return b'* STATUS "Other" (' + items + b")"


class Set(Session):
    @defer.inlineCallbacks
    def test_notify_is_advertised(self):
        lines = yield self.talk(lambda: self.client(select=False).command(b"C1 CAPABILITY"))
        self.assertIn(b"NOTIFY", lines[0].split())

    @defer.inlineCallbacks
    def test_set_status_tells_each_mailbox_now(self):
        def script():
            c = self.client()
            return c.command(b"N1 NOTIFY SET STATUS (MAILBOXES Other (MessageNew MessageExpunge))")

        lines = yield self.talk(script)
        folder = self.other
        self.assertEqual(
            lines_of(lines, b"STATUS"),
            [self.status(b"MESSAGES 1 UIDNEXT %d UIDVALIDITY %d" % (folder.uidnext, folder.uidvalidity))],
        )
        self.assertOK(lines)

    @defer.inlineCallbacks
    def test_set_without_status_tells_nothing_now(self):
        def script():
            return self.client().command(b"N1 NOTIFY SET (MAILBOXES Other (MessageNew MessageExpunge))")

        lines = yield self.talk(script)
        self.assertEqual(lines_of(lines, b"STATUS"), [])
        self.assertOK(lines)

    @defer.inlineCallbacks
    def test_expunge_alone_tells_messages(self):
        def script():
            return self.client().command(b"N1 NOTIFY SET STATUS (MAILBOXES Other (MessageExpunge))")

        lines = yield self.talk(script)
        self.assertEqual(lines_of(lines, b"STATUS"), [self.status(b"MESSAGES 1")])

    @defer.inlineCallbacks
    def test_unknown_event_is_badevent(self):
        def script():
            return self.client().command(b"N1 NOTIFY SET (PERSONAL (MessageNew Nonsense))")

        lines = yield self.talk(script)
        self.assertTrue(lines[-1].startswith(b"N1 NO [BADEVENT ("), lines)

    @defer.inlineCallbacks
    def test_mailbox_events_are_not_for_the_selected_mailbox(self):
        def script():
            return self.client().command(b"N1 NOTIFY SET (SELECTED (MailboxName))")

        lines = yield self.talk(script)
        self.assertTrue(lines[-1].startswith(b"N1 NO [BADEVENT"), lines)

    @defer.inlineCallbacks
    def test_bad_syntax_is_bad(self):
        def script():
            c = self.client()
            return [
                c.command(b"N1 NOTIFY SET"),
                c.command(b"N2 NOTIFY SET (NOWHERE (MessageNew))"),
                c.command(b"N3 NOTIFY SET (MAILBOXES (MessageNew))"),
                c.command(b"N4 NOTIFY MAYBE"),
            ]

        for lines in (yield self.talk(script)):
            self.assertEqual(lines[-1].split(b" ", 2)[1], b"BAD", lines)


class OtherMailboxes(Session):
    @defer.inlineCallbacks
    def test_a_new_message_elsewhere_is_pushed_as_status(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (MAILBOXES Other (MessageNew MessageExpunge))")
            b = self.client(select=False)
            b.send(b"B1 APPEND Other {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
            b.until(b"B1")
            return a.line()  # unsolicited: no command of a's is running

        line = yield self.talk(script)
        self.assertEqual(
            line.rstrip(b"\r\n"),
            self.status(b"MESSAGES 2 UIDNEXT %d UIDVALIDITY %d" % (self.other.uidnext, self.other.uidvalidity)),
        )

    @defer.inlineCallbacks
    def test_a_flag_change_elsewhere_is_pushed(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (MAILBOXES Other (MessageNew MessageExpunge FlagChange))")
            b = self.client(select=False)
            b.command(b"B0 SELECT Other")
            b.command(b"B1 STORE 1 +FLAGS (\\Seen)")
            return a.line()

        line = yield self.talk(script)
        self.assertTrue(line.startswith(b'* STATUS "Other" ('), line)
        self.assertIn(b"UNSEEN 0", line)

    @defer.inlineCallbacks
    def test_events_not_asked_for_are_not_told(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (MAILBOXES Other (MessageExpunge))")
            self.other.add(MESSAGE)
            return a.command(b"A1 NOOP")

        lines = yield self.talk(script)
        self.assertEqual(lines_of(lines, b"STATUS"), [])

    @defer.inlineCallbacks
    def test_inboxes_covers_inbox(self):
        def script():
            a = self.client(select=False)
            a.command(b"N1 NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
            self.imap.inbox.add(MESSAGE)
            return a.line()

        line = yield self.talk(script)
        self.assertTrue(line.startswith(b'* STATUS "INBOX" (MESSAGES 3 '), line)

    @defer.inlineCallbacks
    def test_subtree_covers_children(self):
        self.imap.account.create("Other.child")
        child = self.imap.account._folders["Other.child"]

        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (SUBTREE Other (MessageNew MessageExpunge))")
            child.add(MESSAGE)
            return a.line()

        line = yield self.talk(script)
        self.assertTrue(line.startswith(b'* STATUS "Other.child" (MESSAGES 1 '), line)

    @defer.inlineCallbacks
    def test_the_selected_mailbox_gets_no_status(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
            self.imap.inbox.add(MESSAGE)
            return a.command(b"A1 NOOP")

        lines = yield self.talk(script)
        self.assertEqual(lines_of(lines, b"STATUS"), [])
        self.assertEqual(lines_of(lines, b"EXISTS"), [b"* 3 EXISTS"])

    @defer.inlineCallbacks
    def test_notify_none_stops(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (MAILBOXES Other (MessageNew MessageExpunge))")
            none = a.command(b"N2 NOTIFY NONE")
            self.other.add(MESSAGE)
            return none, a.command(b"A1 NOOP")

        none, lines = yield self.talk(script)
        self.assertOK(none)
        self.assertEqual(lines_of(lines, b"STATUS"), [])


class SelectedMailbox(Session):
    @defer.inlineCallbacks
    def test_flag_changes_are_pushed_without_a_command(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange))")
            b = self.client()
            b.command(b"B1 STORE 2 +FLAGS (\\Flagged)")
            return a.line()

        line = yield self.talk(script)
        self.assertEqual(line.rstrip(b"\r\n"), b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))")

    @defer.inlineCallbacks
    def test_expunges_are_pushed_without_a_command(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (SELECTED (MessageNew MessageExpunge))")
            b = self.client()
            b.command(b"B1 STORE 1 +FLAGS (\\Deleted)")
            b.command(b"B2 EXPUNGE")
            return next_with(a, b"EXPUNGE")

        line = yield self.talk(script)
        self.assertEqual(line.rstrip(b"\r\n"), b"* 1 EXPUNGE")

    @defer.inlineCallbacks
    def test_selected_delayed_keeps_expunges_for_a_command(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge))")
            b = self.client()
            b.command(b"B1 STORE 1 +FLAGS (\\Deleted)")
            b.command(b"B2 EXPUNGE")
            self.imap.inbox.add(MESSAGE)
            first = next_with(a, b"EXISTS")  # the new message is told at once, the expunge is not
            return first, a.command(b"A1 NOOP")

        first, lines = yield self.talk(script)
        # EXPUNGE waited: message 3 is still number 3
        self.assertEqual(first.rstrip(b"\r\n"), b"* 3 EXISTS")
        self.assertIn(b"* 1 EXPUNGE", [line.rstrip(b"\r\n") for line in lines])

    @defer.inlineCallbacks
    def test_without_notify_changes_wait_for_a_command(self):
        def script():
            a = self.client()
            b = self.client()
            b.command(b"B1 STORE 2 +FLAGS (\\Flagged)")
            return a.command(b"A1 CAPABILITY")

        lines = yield self.talk(script)
        # nothing came unasked: the FETCH follows the command's own answer (RFC 3501 7.4.1)
        self.assertTrue(lines[0].startswith(b"* CAPABILITY "), lines)
        self.assertEqual(lines[1].rstrip(b"\r\n"), b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))")


class MessageNewFetch(Session):
    @defer.inlineCallbacks
    def test_new_messages_come_with_the_items_asked_for(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge))")
            uid = self.imap.inbox.add(MESSAGE, ["\\Flagged"])
            return uid, [a.line(), a.line(), a.line()]

        uid, lines = yield self.talk(script)
        lines = [line.rstrip(b"\r\n") for line in lines]
        self.assertEqual(lines[0], b"* 3 EXISTS")
        self.assertEqual(lines[2], b"* 3 FETCH (UID %d FLAGS (\\Flagged \\Recent))" % uid)

    @defer.inlineCallbacks
    def test_items_that_need_the_message_are_badevent(self):
        def script():
            return self.client().command(b"N1 NOTIFY SET (SELECTED (MessageNew (UID BODY[]) MessageExpunge))")

        lines = yield self.talk(script)
        self.assertTrue(lines[-1].startswith(b"N1 NO [BADEVENT"), lines)


class MailboxEvents(Session):
    @defer.inlineCallbacks
    def test_create_delete_and_rename_by_another_session(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (PERSONAL (MailboxName))")
            b = self.client(select=False)
            b.command(b"B1 CREATE New")
            created = a.line()
            b.command(b"B2 RENAME New Newer")
            renamed = a.line()
            b.command(b"B3 DELETE Newer")
            deleted = a.line()
            return created, renamed, deleted

        created, renamed, deleted = yield self.talk(script)
        self.assertEqual(created.rstrip(b"\r\n"), b'* LIST () "." "New"')
        self.assertEqual(renamed.rstrip(b"\r\n"), b'* LIST () "." "Newer" ("OLDNAME" ("New"))')
        self.assertEqual(deleted.rstrip(b"\r\n"), b'* LIST (\\NonExistent) "." "Newer"')

    @defer.inlineCallbacks
    def test_subscription_changes(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (PERSONAL (SubscriptionChange))")
            b = self.client(select=False)
            b.command(b"B1 SUBSCRIBE Other")
            on = a.line()
            b.command(b"B2 UNSUBSCRIBE Other")
            return on, a.line()

        on, off = yield self.talk(script)
        self.assertEqual(on.rstrip(b"\r\n"), b'* LIST (\\Subscribed) "." "Other"')
        self.assertEqual(off.rstrip(b"\r\n"), b'* LIST () "." "Other"')

    @defer.inlineCallbacks
    def test_the_session_that_made_the_change_is_not_told(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (PERSONAL (MailboxName))")
            return a.command(b"A1 CREATE Mine")

        lines = yield self.talk(script)
        self.assertEqual(lines_of(lines, b"LIST"), [])

    @defer.inlineCallbacks
    def test_a_new_mailbox_under_personal_is_watched(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (PERSONAL (MessageNew MessageExpunge MailboxName))")
            b = self.client(select=False)
            b.command(b"B1 CREATE Fresh")
            a.line()  # its LIST
            a.command(b"A1 NOOP")  # the watch list is renewed meanwhile
            self.imap.account._folders["Fresh"].add(MESSAGE)
            return a.line()

        line = yield self.talk(script)
        self.assertTrue(line.startswith(b'* STATUS "Fresh" (MESSAGES 1 '), line)

    @defer.inlineCallbacks
    def test_subscribed_follows_subscriptions(self):
        def script():
            a = self.client()
            a.command(b"N1 NOTIFY SET (SUBSCRIBED (MessageNew MessageExpunge))")
            b = self.client(select=False)
            b.command(b"B1 SUBSCRIBE Other")
            a.command(b"A1 NOOP")  # the watch list is renewed meanwhile
            self.other.add(MESSAGE)
            return a.line()

        line = yield self.talk(script)
        self.assertTrue(line.startswith(b'* STATUS "Other" (MESSAGES 2 '), line)
