"""
THREAD and UID THREAD (RFC 5256 4) over a real socket: ORDEREDSUBJECT,
and REFERENCES with its dummies (missing parents), loops, duplicate
Message-IDs, In-Reply-To, subject merging and date order.
"""

import time

from twisted.internet import defer

from tests.imap_support import CountingFolder
from tests.test_imap_sort import Session, message


class Threads(Session):
    def thread(self, command):
        return self.answer(command, name=b"THREAD")


class Capability(Threads):
    @defer.inlineCallbacks
    def test_both_algorithms_are_advertised(self):
        (lines,) = yield self.talk(b"C1 CAPABILITY", select=False)
        caps = lines[0].split()
        self.assertIn(b"THREAD=REFERENCES", caps)
        self.assertIn(b"THREAD=ORDEREDSUBJECT", caps)


class OrderedSubject(Threads):
    @defer.inlineCallbacks
    def test_one_thread_per_base_subject_the_first_message_the_parent_of_the_rest(self):
        self.add(message(subject="a"))
        self.add(message(subject="b"))
        self.add(message(subject="Re: a"))
        self.add(message(subject="[list] A"))
        self.add(message(subject="Fwd: b"))
        self.add(message(subject="c"))
        answer = yield self.thread(b"A1 THREAD ORDEREDSUBJECT UTF-8 ALL")
        self.assertEqual(answer, "(1 (3)(4))(2 5)(6)")

    @defer.inlineCallbacks
    def test_messages_and_threads_go_by_sent_date(self):
        self.add(message(subject="a", date="Mon, 1 Jan 2024 10:00:00 +0000"))
        self.add(message(subject="b", date="Mon, 1 Jan 2024 09:00:00 +0000"))
        self.add(message(subject="a", date="Mon, 1 Jan 2024 08:00:00 +0000"))
        self.add(message(subject="b", date="Mon, 1 Jan 2024 11:00:00 +0000"))
        self.add(message(subject="a", date="Mon, 1 Jan 2024 09:30:00 +0000"))
        answer = yield self.thread(b"A1 THREAD ORDEREDSUBJECT UTF-8 ALL")
        self.assertEqual(answer, "(3 (5)(1))(2 4)")

    @defer.inlineCallbacks
    def test_messages_without_a_subject_are_one_thread(self):
        self.add(message())
        self.add(message(subject=" "))
        answer = yield self.thread(b"A1 THREAD ORDEREDSUBJECT UTF-8 ALL")
        self.assertEqual(answer, "(1 2)")


class References(Threads):
    @defer.inlineCallbacks
    def test_replies_hang_under_their_parents(self):
        self.add(message(message_id="<a@x>"))
        self.add(message(message_id="<b@x>", references="<a@x>"))
        self.add(message(message_id="<c@x>", references="<a@x> <b@x>"))
        self.add(message(message_id="<d@x>", references="<a@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1 (2 3)(4))")

    @defer.inlineCallbacks
    def test_in_reply_to_is_used_without_references(self):
        self.add(message(message_id="<a@x>"))
        self.add(message(message_id="<b@x>", in_reply_to="<a@x> <zz@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1 2)")

    @defer.inlineCallbacks
    def test_a_missing_parent_with_one_child_leaves_the_child_at_the_root(self):
        self.add(message(message_id="<b@x>", references="<gone@x>"))
        self.add(message(message_id="<c@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1)(2)")

    @defer.inlineCallbacks
    def test_a_missing_parent_with_two_children_stays_as_an_empty_parent(self):
        self.add(message(references="<gone@x>"))
        self.add(message(references="<gone@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "((1)(2))")

    @defer.inlineCallbacks
    def test_a_missing_message_in_the_middle_of_a_chain_is_spliced_out(self):
        self.add(message(message_id="<a@x>"))
        self.add(message(message_id="<c@x>", references="<a@x> <gone@x>"))
        self.add(message(message_id="<d@x>", references="<a@x> <gone@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1 (2)(3))")

    @defer.inlineCallbacks
    def test_a_reference_loop_is_broken(self):
        # imaptest's thread: a's child c, whose child b says c is its parent.
        self.add(message(message_id="<a@b>"), 1000)
        self.add(message(message_id="<b@b>", references="<a@b> <c@b>"), 100)
        self.add(message(message_id="<c@b>", references="<b@b>"), 500)
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(3 2)(1)")

    @defer.inlineCallbacks
    def test_a_message_that_references_itself_is_a_root(self):
        self.add(message(message_id="<a@x>", references="<a@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1)")

    @defer.inlineCallbacks
    def test_a_duplicate_message_id_is_a_message_of_its_own(self):
        self.add(message(message_id="<a@x>"))
        self.add(message(message_id="<b@x>", references="<a@x>"))
        self.add(message(message_id="<c@x>", references="<b@x>"))
        self.add(message(message_id="<b@x>", references="<a@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1 (2 3)(4))")

    @defer.inlineCallbacks
    def test_message_ids_are_case_sensitive(self):
        self.add(message(message_id="<a@x>"))
        self.add(message(message_id="<b@x>", references="<A@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1)(2)")

    @defer.inlineCallbacks
    def test_a_reply_by_subject_joins_the_thread_of_its_original(self):
        self.add(message(message_id="<a@x>", subject="plans"))
        self.add(message(message_id="<b@x>", subject="Re: plans", references="<lost@x>"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1 2)")

    @defer.inlineCallbacks
    def test_two_originals_with_one_subject_get_an_empty_parent(self):
        self.add(message(message_id="<a@x>", subject="plans"))
        self.add(message(message_id="<b@x>", subject="[list] plans"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "((1)(2))")

    @defer.inlineCallbacks
    def test_a_thread_with_an_empty_parent_takes_the_others_of_its_subject(self):
        self.add(message(subject="plans", references="<lost@x>"))
        self.add(message(subject="Re: plans", references="<lost@x>"))
        self.add(message(subject="plans"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "((1)(2)(3))")

    @defer.inlineCallbacks
    def test_empty_subjects_are_not_merged(self):
        self.add(message(message_id="<a@x>"))
        self.add(message(message_id="<b@x>", subject="Re:"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1)(2)")

    @defer.inlineCallbacks
    def test_threads_and_siblings_go_by_sent_date_ties_by_sequence(self):
        self.add(message(message_id="<a@x>", date="Mon, 1 Jan 2024 12:00:00 +0000"))
        self.add(message(message_id="<b@x>", references="<a@x>", date="Mon, 1 Jan 2024 14:00:00 +0000"))
        self.add(message(message_id="<c@x>", references="<a@x>", date="Mon, 1 Jan 2024 13:00:00 +0000"))
        self.add(message(message_id="<d@x>", date="Mon, 1 Jan 2024 11:00:00 +0000"))
        self.add(message(message_id="<e@x>", date="Mon, 1 Jan 2024 11:00:00 +0000"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(4)(5)(1 (3)(2))")

    @defer.inlineCallbacks
    def test_only_the_matching_messages_are_threaded(self):
        self.add(message(message_id="<a@x>"))
        self.add(message(message_id="<b@x>", references="<a@x>"), flags=["\\Seen"])
        self.add(message(message_id="<c@x>", references="<a@x> <b@x>"), flags=["\\Seen"])
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 SEEN")
        self.assertEqual(answer, "(2 3)")

    @defer.inlineCallbacks
    def test_uid_thread_answers_uids(self):
        self.add(message(message_id="<z@x>"))
        self.add(message(message_id="<a@x>"))
        self.add(message(message_id="<b@x>", references="<a@x>"))
        self.inbox._messages = self.inbox._messages[1:]
        self.assertEqual((yield self.thread(b"A1 UID THREAD REFERENCES UTF-8 ALL")), "(2 3)")
        self.assertEqual((yield self.thread(b"A2 THREAD REFERENCES UTF-8 ALL")), "(1 2)")

    @defer.inlineCallbacks
    def test_no_match_is_an_empty_thread_response(self):
        self.add(message())
        (lines,) = yield self.talk(b"A1 THREAD REFERENCES UTF-8 DELETED")
        self.assertEqual(lines[0], b"* THREAD\r\n")

    @defer.inlineCallbacks
    def test_a_references_field_longer_than_one_read_of_the_file(self):
        refs = " ".join(f"<r{i}@x>" for i in range(3000))  # about 30 KB
        self.add(message(message_id="<r2999@x>", subject="last"))
        self.add(message(message_id="<b@x>", references=refs, subject="reply"))
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(1 2)")

    @defer.inlineCallbacks
    def test_a_chain_thousands_deep(self):
        count = 3000
        self.add(message(message_id="<m0@x>"))
        for i in range(1, count):
            self.add(message(message_id=f"<m{i}@x>", in_reply_to=f"<m{i - 1}@x>"))
        start = time.monotonic()
        answer = yield self.thread(b"A1 THREAD REFERENCES UTF-8 ALL")
        self.assertEqual(answer, "(" + " ".join(str(i) for i in range(1, count + 1)) + ")")
        self.assertLess(time.monotonic() - start, 10)


class Cache(Threads):
    folder_class = CountingFolder

    @defer.inlineCallbacks
    def test_sort_and_thread_share_the_cached_keys(self):
        self.add(message(message_id="<a@x>", subject="x"))
        self.add(message(message_id="<b@x>", references="<a@x>", subject="y"))
        yield self.answer(b"A1 SORT (SUBJECT) UTF-8 ALL")
        self.assertEqual(self.inbox.single_opens, 2)
        self.assertEqual((yield self.thread(b"A2 THREAD REFERENCES UTF-8 ALL")), "(1 2)")
        self.assertEqual((yield self.thread(b"A3 THREAD ORDEREDSUBJECT UTF-8 ALL")), "(1)(2)")
        self.assertEqual(self.inbox.single_opens, 2)


class Errors(Threads):
    def setUp(self):
        super().setUp()
        self.add(message(subject="a"))

    @defer.inlineCallbacks
    def test_an_unknown_algorithm_is_bad(self):
        lines, after = yield self.talk(b"A1 THREAD JWZ UTF-8 ALL", b"A9 NOOP")
        self.assertTrue(lines[-1].startswith(b"A1 BAD"), lines)
        self.assertTrue(after[-1].startswith(b"A9 OK"), after)

    @defer.inlineCallbacks
    def test_missing_search_keys_are_bad(self):
        (lines,) = yield self.talk(b"A1 THREAD REFERENCES UTF-8")
        self.assertTrue(lines[-1].startswith(b"A1 BAD"), lines)

    @defer.inlineCallbacks
    def test_an_unsupported_charset_is_no_badcharset(self):
        (lines,) = yield self.talk(b"A1 THREAD REFERENCES KOI8-R ALL")
        self.assertTrue(lines[-1].startswith(b"A1 NO [BADCHARSET"), lines)

    @defer.inlineCallbacks
    def test_uid_with_an_unknown_command_names_thread_and_sort(self):
        (lines,) = yield self.talk(b"A1 UID FROB 1")
        self.assertTrue(lines[-1].startswith(b"A1 BAD"), lines)
        self.assertIn(b"SORT", lines[-1])
        self.assertIn(b"THREAD", lines[-1])
