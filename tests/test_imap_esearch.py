"""
SEARCH and SORT result options over a real socket: ESEARCH (RFC 4731),
ESORT (RFC 5267 3), SEARCHRES (RFC 5182: RETURN (SAVE) and `$`) and
PARTIAL (RFC 5267 4.4, RFC 9394).

The folder holds five messages with UIDs 11, 12, 13, 15, 16 (a gap where
14 was), arriving in the order 1, 2, 3, 4, 5; messages 2 and 4 are \\Seen.
"""

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.imap.esearch import compact
from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient

BASE = 1_700_000_000


def message(subject):
    return f"Subject: {subject}\nFrom: a@example.test\n\nbody {subject}\n".encode()


class Session(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        inbox = self.imap.account._folders["INBOX"]
        inbox.uidnext = 11
        for n, subject in enumerate(["one", "two", "three", "four", "five"], 1):
            if n == 4:
                inbox.uidnext += 1  # UID 14 never given: UID sets show the gap
            inbox.add(message(subject), ["\\Seen"] if n in (2, 4) else [], BASE + n)

    def talk(self, *commands, select=True):
        """Each command's answer lines, in one logged-in session."""

        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            if select:
                c.command(b"S1 SELECT INBOX")
            return [c.command(command) for command in commands]

        return in_thread(run)

    def assertAnswer(self, lines, *untagged):
        """The answer is exactly these untagged lines and a tagged OK."""
        self.assertEqual([line.rstrip(b"\r\n") for line in lines[:-1]], list(untagged))
        self.assertEqual(lines[-1].split(b" ", 2)[1], b"OK", lines)

    def assertBad(self, lines):
        self.assertEqual(lines[-1].split(b" ", 2)[1], b"BAD", lines)


class Capability(Session):
    @defer.inlineCallbacks
    def test_esearch_esort_and_searchres_are_advertised(self):
        (lines,) = yield self.talk(b"C1 CAPABILITY", select=False)
        caps = lines[0].split()
        for cap in (b"ESEARCH", b"ESORT", b"SEARCHRES"):
            self.assertIn(cap, caps)

    @defer.inlineCallbacks
    def test_context_is_advertised_with_update_notifications(self):
        # RFC 5267 4: UPDATE and CANCELUPDATE work (tests/test_imap_context.py).
        (lines,) = yield self.talk(b"C1 CAPABILITY", select=False)
        caps = lines[0].split()
        self.assertIn(b"CONTEXT=SEARCH", caps)
        self.assertIn(b"CONTEXT=SORT", caps)


class SearchReturn(Session):
    @defer.inlineCallbacks
    def test_all_compacts_the_sequence_set(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (ALL) ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") ALL 1:5')

    @defer.inlineCallbacks
    def test_empty_return_list_means_all(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN () SEEN")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") ALL 2,4')

    @defer.inlineCallbacks
    def test_min(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (MIN) SEEN")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") MIN 2')

    @defer.inlineCallbacks
    def test_max(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (MAX) SEEN")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") MAX 4')

    @defer.inlineCallbacks
    def test_count(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (COUNT) SEEN")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") COUNT 2')

    @defer.inlineCallbacks
    def test_several_options_in_one_line(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (MIN MAX COUNT ALL) ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") MIN 1 MAX 5 COUNT 5 ALL 1:5')

    @defer.inlineCallbacks
    def test_uid_search_answers_uids_with_the_gap(self):
        (lines,) = yield self.talk(b"A1 UID SEARCH RETURN (ALL MIN MAX) ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") UID MIN 11 MAX 16 ALL 11:13,15:16')

    @defer.inlineCallbacks
    def test_return_goes_before_charset(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (COUNT) CHARSET UTF-8 SUBJECT three")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") COUNT 1')

    @defer.inlineCallbacks
    def test_nothing_found_leaves_out_min_max_and_all(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (MIN MAX ALL) 1000")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1")')

    @defer.inlineCallbacks
    def test_nothing_found_by_uid_search_still_says_uid(self):
        (lines,) = yield self.talk(b"A1 UID SEARCH RETURN () UID 1000")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") UID')

    @defer.inlineCallbacks
    def test_count_of_nothing_is_zero(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (COUNT) 1000")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") COUNT 0')

    @defer.inlineCallbacks
    def test_search_without_return_is_unchanged(self):
        (lines,) = yield self.talk(b"A1 SEARCH SEEN")
        self.assertAnswer(lines, b"* SEARCH 2 4")

    @defer.inlineCallbacks
    def test_unknown_return_option_is_bad(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (FIRST) ALL")
        self.assertBad(lines)

    @defer.inlineCallbacks
    def test_update_alone_answers_with_the_tag(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (UPDATE) ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1")')


class Sort(Session):
    @defer.inlineCallbacks
    def test_min_and_max_are_first_and_last_in_sort_order(self):
        (lines,) = yield self.talk(b"A1 SORT RETURN (MIN MAX) (REVERSE ARRIVAL) US-ASCII ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") MIN 5 MAX 1')

    @defer.inlineCallbacks
    def test_all_keeps_the_sort_order(self):
        (lines,) = yield self.talk(b"A1 SORT RETURN (ALL) (SUBJECT) US-ASCII ALL")
        # five, four, one, three, two
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") ALL 5,4,1,3,2')

    @defer.inlineCallbacks
    def test_count(self):
        (lines,) = yield self.talk(b"A1 SORT RETURN (COUNT) (ARRIVAL) US-ASCII SEEN")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") COUNT 2')

    @defer.inlineCallbacks
    def test_uid_sort(self):
        (lines,) = yield self.talk(b"A1 UID SORT RETURN (ALL) (ARRIVAL) US-ASCII ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") UID ALL 11:13,15:16')

    @defer.inlineCallbacks
    def test_sort_without_return_is_unchanged(self):
        (lines,) = yield self.talk(b"A1 SORT (REVERSE ARRIVAL) US-ASCII ALL")
        self.assertAnswer(lines, b"* SORT 5 4 3 2 1")


class Partial(Session):
    @defer.inlineCallbacks
    def test_a_window_of_the_result(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (PARTIAL 2:3) ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") PARTIAL (2:3 2:3)')

    @defer.inlineCallbacks
    def test_a_reversed_range_is_put_in_order(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (PARTIAL 4:2) ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") PARTIAL (2:4 2:4)')

    @defer.inlineCallbacks
    def test_a_window_past_the_end_is_nil(self):
        (lines,) = yield self.talk(b"A1 UID SEARCH RETURN (PARTIAL 6:9) ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") UID PARTIAL (6:9 NIL)')

    @defer.inlineCallbacks
    def test_negative_ranges_count_from_the_end(self):
        (lines,) = yield self.talk(b"A1 UID SEARCH RETURN (PARTIAL -1:-2) ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") UID PARTIAL (-1:-2 15:16)')

    @defer.inlineCallbacks
    def test_sort_window_in_sort_order(self):
        (lines,) = yield self.talk(b"A1 SORT RETURN (PARTIAL 1:3) (REVERSE ARRIVAL) US-ASCII ALL")
        self.assertAnswer(lines, b'* ESEARCH (TAG "A1") PARTIAL (1:3 5,4,3)')

    @defer.inlineCallbacks
    def test_malformed_ranges_are_bad(self):
        answers = yield self.talk(
            b"A1 SEARCH RETURN (PARTIAL 1) ALL",
            b"A2 SEARCH RETURN (PARTIAL 1:*) ALL",
            b"A3 SEARCH RETURN (PARTIAL *:1) ALL",
            b"A4 SEARCH RETURN (PARTIAL -1:2) ALL",
        )
        for lines in answers:
            self.assertBad(lines)


class SearchRes(Session):
    @defer.inlineCallbacks
    def test_save_alone_answers_no_esearch(self):
        (lines,) = yield self.talk(b"A1 SEARCH RETURN (SAVE) SEEN")
        self.assertAnswer(lines)

    @defer.inlineCallbacks
    def test_dollar_in_fetch(self):
        _, lines = yield self.talk(b"A1 SEARCH RETURN (SAVE) SEEN", b"A2 FETCH $ (UID)")
        self.assertAnswer(lines, b"* 2 FETCH (UID 12)", b"* 4 FETCH (UID 15)")

    @defer.inlineCallbacks
    def test_dollar_in_uid_fetch(self):
        _, lines = yield self.talk(b"A1 UID SEARCH RETURN (SAVE) SEEN", b"A2 UID FETCH $ (FLAGS)")
        recent_seen = b"(\\Recent \\Seen)"  # a first session sees every message \Recent
        self.assertAnswer(
            lines, b"* 2 FETCH (UID 12 FLAGS %s)" % recent_seen, b"* 4 FETCH (UID 15 FLAGS %s)" % recent_seen
        )

    @defer.inlineCallbacks
    def test_dollar_in_store(self):
        _, lines, found = yield self.talk(
            b"A1 SEARCH RETURN (SAVE) 1:2", b"A2 STORE $ +FLAGS (\\Flagged)", b"A3 SEARCH FLAGGED"
        )
        self.assertAnswer(
            lines, b"* 1 FETCH (FLAGS (\\Flagged \\Recent))", b"* 2 FETCH (FLAGS (\\Flagged \\Recent \\Seen))"
        )
        self.assertAnswer(found, b"* SEARCH 1 2")

    @defer.inlineCallbacks
    def test_dollar_in_search(self):
        _, lines = yield self.talk(b"A1 SEARCH RETURN (SAVE) 1:3", b"A2 SEARCH $ SEEN")
        self.assertAnswer(lines, b"* SEARCH 2")

    @defer.inlineCallbacks
    def test_dollar_as_uid_search_key(self):
        _, lines = yield self.talk(b"A1 SEARCH RETURN (SAVE) 4:5", b"A2 UID SEARCH UID $")
        self.assertAnswer(lines, b"* SEARCH 15 16")

    @defer.inlineCallbacks
    def test_save_with_min_max_keeps_only_those(self):
        answers = yield self.talk(b"A1 SEARCH RETURN (SAVE MIN MAX) ALL", b"A2 SEARCH $")
        self.assertAnswer(answers[0], b'* ESEARCH (TAG "A1") MIN 1 MAX 5')
        self.assertAnswer(answers[1], b"* SEARCH 1 5")

    @defer.inlineCallbacks
    def test_save_from_sort(self):
        _, lines = yield self.talk(b"A1 SORT RETURN (SAVE) (SUBJECT) US-ASCII SEEN", b"A2 SEARCH $")
        self.assertAnswer(lines, b"* SEARCH 2 4")

    @defer.inlineCallbacks
    def test_dollar_before_any_save_is_empty(self):
        answers = yield self.talk(b"A1 FETCH $ (UID)", b"A2 SEARCH $")
        self.assertAnswer(answers[0])
        self.assertAnswer(answers[1], b"* SEARCH")

    @defer.inlineCallbacks
    def test_select_forgets_the_saved_result(self):
        answers = yield self.talk(b"A1 SEARCH RETURN (SAVE) ALL", b"A2 SELECT INBOX", b"A3 SEARCH $")
        self.assertAnswer(answers[2], b"* SEARCH")

    @defer.inlineCallbacks
    def test_a_failed_save_empties_the_saved_result(self):
        answers = yield self.talk(
            b"A1 SEARCH RETURN (SAVE) ALL", b"A2 SEARCH RETURN (SAVE) CHARSET KOI8-R ALL", b"A3 SEARCH $"
        )
        self.assertEqual(answers[1][-1].split(b" ", 2)[1], b"NO")
        self.assertAnswer(answers[2], b"* SEARCH")

    @defer.inlineCallbacks
    def test_expunged_messages_leave_the_saved_result(self):
        answers = yield self.talk(
            b"A1 SEARCH RETURN (SAVE) SEEN",
            b"A2 STORE 2 +FLAGS.SILENT (\\Deleted)",
            b"A3 EXPUNGE",
            b"A4 UID SEARCH $",
        )
        self.assertAnswer(answers[3], b"* SEARCH 15")

    @defer.inlineCallbacks
    def test_dollar_in_copy(self):
        answers = yield self.talk(
            b"A0 CREATE Saved", b"A1 SEARCH RETURN (SAVE) SEEN", b"A2 COPY $ Saved", b"A3 STATUS Saved (MESSAGES)"
        )
        self.assertEqual(answers[2][-1].split(b" ", 2)[1], b"OK", answers[2])
        self.assertIn(b"MESSAGES 2", answers[3][0])

    @defer.inlineCallbacks
    def test_pipelined_dollar_waits_for_the_save(self):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.command(b"S1 SELECT INBOX")
            # RFC 5182 2.1: sent together, FETCH $ still sees what SEARCH saved.
            c.send(b"A1 SEARCH RETURN (SAVE) SEEN\r\nA2 FETCH $ (UID)\r\n")
            return c.until(b"A2")

        lines = yield in_thread(run)
        fetched = [line for line in lines if b"FETCH (" in line]
        self.assertEqual(fetched, [b"* 2 FETCH (UID 12)\r\n", b"* 4 FETCH (UID 15)\r\n"])

    @defer.inlineCallbacks
    def test_dollar_mixed_with_numbers_is_bad(self):
        _, lines = yield self.talk(b"A1 SEARCH RETURN (SAVE) ALL", b"A2 FETCH $,1 (UID)")
        self.assertBad(lines)


class Compact(unittest.TestCase):
    def test_ascending_runs_become_ranges_and_order_is_kept(self):
        self.assertEqual(compact([1, 2, 3, 7, 5, 6]), b"1:3,7,5:6")

    def test_nothing_is_empty(self):
        self.assertEqual(compact([]), b"")
