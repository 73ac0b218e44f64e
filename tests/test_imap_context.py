"""
Results that stay up to date over a real socket (RFC 5267 4, CONTEXT=SEARCH
and CONTEXT=SORT): SEARCH / SORT RETURN (UPDATE), the untagged
`ESEARCH (TAG ...) ADDTO / REMOVEFROM` that follow the session's own
changes and other sessions', and CANCELUPDATE.

The folder holds five messages, UIDs 1-5; message 2 is \\Seen, and the
bodies of messages 1, 3 and 5 have the word "apple".
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, in_thread
from tests.imap_support import MemoryIMAP, RawClient, TLSRawClient
from tests.test_imap_maildir import drain

BASE = 1_700_000_000
SUBJECTS = ["delta", "alpha", "echo", "bravo", "charlie"]


def message(n, subject):
    fruit = "apple" if n % 2 else "pear"
    return f"Subject: {subject}\nFrom: a@example.test\n\nsome {fruit} text\n".encode()


def untagged(lines, word=b"ESEARCH"):
    return [line.rstrip(b"\r\n") for line in lines if line.startswith(b"* ") and word in line]


class Session(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        inbox = self.imap.inbox
        for n, subject in enumerate(SUBJECTS, 1):
            inbox.add(message(n, subject), ["\\Seen"] if n == 2 else [], BASE + n)

    def client(self):
        c = RawClient(self.imap.port)
        self.addCleanup(c.close)
        c.login()
        c.command(b"S0 SELECT INBOX")
        return c

    def talk(self, script):
        """`script(client factory)` in a thread; its result."""
        return in_thread(lambda: script(self.client))

    def assertOK(self, lines):
        self.assertEqual(lines[-1].split(b" ", 2)[1], b"OK", lines)

    def assertBad(self, lines):
        self.assertEqual(lines[-1].split(b" ", 2)[1], b"BAD", lines)


class Capability(Session):
    @defer.inlineCallbacks
    def test_context_search_and_sort_are_advertised(self):
        def script(client):
            return client().command(b"C1 CAPABILITY")

        lines = yield self.talk(script)
        caps = lines[0].split()
        self.assertIn(b"CONTEXT=SEARCH", caps)
        self.assertIn(b"CONTEXT=SORT", caps)


class OwnChanges(Session):
    @defer.inlineCallbacks
    def test_update_alone_answers_with_the_tag_only(self):
        def script(client):
            return client().command(b"U1 SEARCH RETURN (UPDATE) SEEN")

        lines = yield self.talk(script)
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1")'])
        self.assertOK(lines)

    @defer.inlineCallbacks
    def test_own_store_adds_before_the_tagged_answer(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) SEEN")
            return c.command(b"A1 STORE 1,4 +FLAGS (\\Seen)")

        lines = yield self.talk(script)
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") ADDTO (0 1,4)'])
        self.assertOK(lines)

    @defer.inlineCallbacks
    def test_own_store_removes(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE ALL) SEEN")
            return c.command(b"A1 STORE 2 -FLAGS (\\Seen)")

        lines = yield self.talk(script)
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") REMOVEFROM (0 2)'])

    @defer.inlineCallbacks
    def test_uid_search_updates_name_uids(self):
        def script(client):
            c = client()
            c.command(b"A0 STORE 1 +FLAGS (\\Deleted)")
            c.command(b"A1 EXPUNGE")
            first = c.command(b"U1 UID SEARCH RETURN (UPDATE ALL) SEEN")
            return first, c.command(b"A2 STORE 3 +FLAGS (\\Seen)")

        first, lines = yield self.talk(script)
        self.assertEqual(untagged(first), [b'* ESEARCH (TAG "U1") UID ALL 2'])
        # message 3 is UID 4 now
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") UID ADDTO (0 4)'])

    @defer.inlineCallbacks
    def test_a_change_that_keeps_the_result_says_nothing(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) SEEN")
            return c.command(b"A1 STORE 2 +FLAGS (\\Flagged)")

        lines = yield self.talk(script)
        self.assertEqual(untagged(lines), [])

    @defer.inlineCallbacks
    def test_expunge_removes_before_the_expunge_with_the_old_number(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE ALL) OR SEEN DELETED")
            c.command(b"A1 STORE 4 +FLAGS (\\Deleted)")
            return c.command(b"A2 EXPUNGE")

        lines = yield self.talk(script)
        self.assertEqual(
            [line.rstrip(b"\r\n") for line in lines[:-1]],
            [b'* ESEARCH (TAG "U1") REMOVEFROM (0 4)', b"* 4 EXPUNGE"],
        )

    @defer.inlineCallbacks
    def test_own_append_of_a_matching_message_is_added_after_exists(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) BODY apple")
            data = message(1, "foxtrot").replace(b"\n", b"\r\n")
            c.send(b"A1 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
            return c.until(b"A1")

        lines = yield self.talk(script)
        self.assertEqual(
            [line.rstrip(b"\r\n") for line in lines[:-1] if b"EXISTS" in line or b"ESEARCH" in line],
            [b"* 6 EXISTS", b'* ESEARCH (TAG "U1") ADDTO (0 6)'],
        )
        self.assertOK(lines)

    @defer.inlineCallbacks
    def test_body_search_follows_flag_changes_without_the_text(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) BODY apple FLAGGED")
            return c.command(b"A1 STORE 1:5 +FLAGS (\\Flagged)")

        lines = yield self.talk(script)
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") ADDTO (0 1,3,5)'])

    @defer.inlineCallbacks
    def test_count_is_updated(self):
        def script(client):
            c = client()
            first = c.command(b"U1 SEARCH RETURN (UPDATE COUNT) SEEN")
            return first, c.command(b"A1 STORE 5 +FLAGS (\\Seen)")

        first, lines = yield self.talk(script)
        self.assertEqual(untagged(first), [b'* ESEARCH (TAG "U1") COUNT 1'])
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") COUNT 2'])


class OtherSessions(Session):
    @defer.inlineCallbacks
    def test_another_sessions_flag_change_reaches_noop(self):
        def script(client):
            a, b = client(), client()
            a.command(b"U1 SEARCH RETURN (UPDATE) UNSEEN")
            b.command(b"B1 STORE 3 +FLAGS (\\Seen)")
            return a.command(b"A1 NOOP")

        lines = yield self.talk(script)
        self.assertIn(b'* ESEARCH (TAG "U1") REMOVEFROM (0 3)', untagged(lines))

    @defer.inlineCallbacks
    def test_another_sessions_expunge_removes_before_its_expunge(self):
        def script(client):
            a, b = client(), client()
            a.command(b"U1 SEARCH RETURN (UPDATE) UNSEEN")
            b.command(b"B1 STORE 3 +FLAGS (\\Deleted)")
            b.command(b"B2 EXPUNGE")
            return a.command(b"A1 NOOP")

        lines = yield self.talk(script)
        body = [line.rstrip(b"\r\n") for line in lines[:-1]]
        self.assertIn(b'* ESEARCH (TAG "U1") REMOVEFROM (0 3)', body)
        self.assertLess(body.index(b'* ESEARCH (TAG "U1") REMOVEFROM (0 3)'), body.index(b"* 3 EXPUNGE"))

    @defer.inlineCallbacks
    def test_changes_are_pushed_during_idle(self):
        def script(client):
            a, b = client(), client()
            a.command(b"U1 SEARCH RETURN (UPDATE) SEEN")
            a.send(b"I1 IDLE\r\n")
            a.line()  # + idling
            b.command(b"B1 STORE 4 +FLAGS (\\Seen)")
            pushed = []
            while not pushed or b"ESEARCH" not in pushed[-1]:
                pushed.append(a.line())
            a.send(b"DONE\r\n")
            a.until(b"I1")
            return pushed

        pushed = yield self.talk(script)
        self.assertEqual(pushed[-1].rstrip(b"\r\n"), b'* ESEARCH (TAG "U1") ADDTO (0 4)')

    @defer.inlineCallbacks
    def test_a_delivery_that_matches_is_added(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) BODY apple")
            self.imap.inbox.add(message(1, "golf"))
            return c.command(b"A1 NOOP")

        lines = yield self.talk(script)
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") ADDTO (0 6)'])

    @defer.inlineCallbacks
    def test_a_delivery_that_does_not_match_says_nothing(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) BODY apple")
            self.imap.inbox.add(message(2, "golf"))
            return c.command(b"A1 NOOP")

        lines = yield self.talk(script)
        self.assertEqual(untagged(lines), [])
        self.assertEqual(untagged(lines, b"EXISTS"), [b"* 6 EXISTS"])


class Cancel(Session):
    @defer.inlineCallbacks
    def test_cancelupdate_stops_the_updates(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) SEEN")
            cancel = c.command(b'A1 CANCELUPDATE "U1"')
            return cancel, c.command(b"A2 STORE 1 +FLAGS (\\Seen)")

        cancel, lines = yield self.talk(script)
        self.assertOK(cancel)
        self.assertEqual(untagged(lines), [])

    @defer.inlineCallbacks
    def test_cancelupdate_of_several_tags_and_twice_the_same(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) SEEN")
            c.command(b"U2 SEARCH RETURN (UPDATE) UNSEEN")
            cancel = c.command(b'A1 CANCELUPDATE "U1" "U2" "U1"')
            return cancel, c.command(b"A2 STORE 1 +FLAGS (\\Seen)")

        cancel, lines = yield self.talk(script)
        self.assertOK(cancel)
        self.assertEqual(untagged(lines), [])

    @defer.inlineCallbacks
    def test_cancelupdate_of_an_unknown_tag_is_bad(self):
        def script(client):
            return client().command(b'A1 CANCELUPDATE "nope"')

        self.assertBad((yield self.talk(script)))

    @defer.inlineCallbacks
    def test_a_tag_in_use_is_bad(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) SEEN")
            return c.command(b"U1 SEARCH RETURN (UPDATE) UNSEEN")

        self.assertBad((yield self.talk(script)))

    @defer.inlineCallbacks
    def test_a_new_select_ends_the_updates(self):
        def script(client):
            c = client()
            c.command(b"U1 SEARCH RETURN (UPDATE) SEEN")
            c.command(b"S2 SELECT INBOX")
            return c.command(b"A1 STORE 1 +FLAGS (\\Seen)")

        self.assertEqual(untagged((yield self.talk(script))), [])

    @defer.inlineCallbacks
    def test_update_of_a_partial_result_is_refused_with_noupdate(self):
        def script(client):
            return client().command(b"U1 SEARCH RETURN (UPDATE PARTIAL 1:2) ALL")

        lines = yield self.talk(script)
        self.assertTrue(any(line.startswith(b'* NO [NOUPDATE "U1"]') for line in lines), lines)
        self.assertIn(b'* ESEARCH (TAG "U1") PARTIAL (1:2 1:2)', untagged(lines))
        self.assertOK(lines)


class Sort(Session):
    @defer.inlineCallbacks
    def test_sort_update_adds_at_the_sorted_position(self):
        # by subject: alpha(2) bravo(4) charlie(5) delta(1) echo(3)
        def script(client):
            c = client()
            first = c.command(b"U1 SORT RETURN (UPDATE ALL) (SUBJECT) US-ASCII OR SEEN FLAGGED")
            return first, c.command(b"A1 STORE 1,4 +FLAGS (\\Flagged)")

        first, lines = yield self.talk(script)
        self.assertEqual(untagged(first), [b'* ESEARCH (TAG "U1") ALL 2'])
        # alpha(2) bravo(4) delta(1): 4 at position 2, 1 at position 3
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") ADDTO (2 4,1)'])

    @defer.inlineCallbacks
    def test_sort_update_removes(self):
        def script(client):
            c = client()
            c.command(b"U1 SORT RETURN (UPDATE) (REVERSE ARRIVAL) US-ASCII UNSEEN")
            return c.command(b"A1 STORE 3,5 +FLAGS (\\Seen)")

        lines = yield self.talk(script)
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") REMOVEFROM (0 5,3)'])

    @defer.inlineCallbacks
    def test_sort_update_removes_expunged_in_sort_order_before_the_expunges(self):
        def script(client):
            c = client()
            c.command(b"U1 SORT RETURN (UPDATE) (REVERSE ARRIVAL) US-ASCII ALL")
            c.command(b"A1 STORE 2,4 +FLAGS.SILENT (\\Deleted)")
            return c.command(b"A2 EXPUNGE")

        lines = yield self.talk(script)
        self.assertEqual(
            [line.rstrip(b"\r\n") for line in lines[:-1]],
            [b'* ESEARCH (TAG "U1") REMOVEFROM (0 4,2)', b"* 4 EXPUNGE", b"* 2 EXPUNGE"],
        )

    @defer.inlineCallbacks
    def test_sort_update_of_a_new_message(self):
        def script(client):
            c = client()
            c.command(b"U1 UID SORT RETURN (UPDATE) (SUBJECT) US-ASCII BODY apple")
            self.imap.inbox.add(message(1, "another"))
            return c.command(b"A1 NOOP")

        lines = yield self.talk(script)
        # "another" sorts first of 1 (delta), 3 (echo), 5 (charlie)
        self.assertEqual(untagged(lines), [b'* ESEARCH (TAG "U1") UID ADDTO (1 6)'])


class OnTheStore(unittest.TestCase):
    """The same over IMAPS on a real store: a new message is read in the thread pool first."""

    store = "maildir"

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=("smtp", "imaps")).start(users={"alice@example.test": "pw"})
        self.addCleanup(self.drain)

    def drain(self):
        return drain(self.server)

    def client(self):
        c = TLSRawClient(self.server.port("imaps"))
        self.addCleanup(c.close)
        c.command(b"L1 LOGIN alice@example.test pw")
        return c

    def append(self, c, tag, n, subject):
        data = message(n, subject).replace(b"\n", b"\r\n")
        c.send(tag + b" APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
        return c.until(tag)

    @defer.inlineCallbacks
    def test_body_search_follows_appends_flags_and_expunges(self):
        def script():
            c = self.client()
            for n, subject in enumerate(SUBJECTS[:3], 1):
                self.append(c, b"A%d" % n, n, subject)
            c.command(b"S1 SELECT INBOX")
            first = c.command(b"U1 SEARCH RETURN (UPDATE ALL) BODY apple UNSEEN")
            appended = self.append(c, b"A4", 1, "foxtrot")
            stored = c.command(b"A5 STORE 1 +FLAGS (\\Seen)")
            c.command(b"A6 STORE 3 +FLAGS (\\Deleted)")
            expunged = c.command(b"A7 EXPUNGE")
            other = self.client()
            other.command(b"S2 SELECT INBOX")
            self.append(other, b"B1", 3, "golf")
            noop = c.command(b"A8 NOOP")
            return first, appended, stored, expunged, noop

        first, appended, stored, expunged, noop = yield in_thread(script)
        self.assertEqual(untagged(first), [b'* ESEARCH (TAG "U1") ALL 1,3'])
        self.assertEqual(untagged(appended), [b'* ESEARCH (TAG "U1") ADDTO (0 4)'])
        self.assertTrue(appended[-1].startswith(b"A4 OK"), appended)
        self.assertLess(
            [line.rstrip(b"\r\n") for line in appended].index(b"* 4 EXISTS"),
            [line.rstrip(b"\r\n") for line in appended].index(b'* ESEARCH (TAG "U1") ADDTO (0 4)'),
        )
        self.assertEqual(untagged(stored), [b'* ESEARCH (TAG "U1") REMOVEFROM (0 1)'])
        self.assertEqual(
            [line.rstrip(b"\r\n") for line in expunged[:-1]], [b'* ESEARCH (TAG "U1") REMOVEFROM (0 3)', b"* 3 EXPUNGE"]
        )
        # the other session's message is number 4 now
        self.assertEqual(untagged(noop), [b'* ESEARCH (TAG "U1") ADDTO (0 4)'])


class OnTheMboxStore(OnTheStore):
    store = "mbox"
