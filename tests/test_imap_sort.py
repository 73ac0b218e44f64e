"""
SORT and UID SORT (RFC 5256 3; DISPLAYFROM/DISPLAYTO of RFC 5957) over a
real socket: each key, REVERSE, ties in mailbox order, the base subject of
RFC 5256 2.1, the sent date of 2.2, i;unicode-casemap (RFC 5051), and the
header keys kept in the folder's cache.
"""

import imaplib
import smtplib

from twisted.internet import defer, reactor
from twisted.internet.threads import blockingCallFromThread
from twisted.trial import unittest

from mailplat.imap.sortkeys import FIELD, base_subject, collate, sent_date
from tests.helpers import MailServer, client_tls, in_thread
from tests.imap_support import CountingFolder, MemoryIMAP, RawClient
from tests.test_imap_maildir import drain

BASE = 1_700_000_000  # an INTERNALDATE


def message(subject=None, date=None, body="body", **fields):
    """A message with the given header fields (from_= for From; None leaves a field out)."""
    lines = []
    names = {"from_": "From", "message_id": "Message-ID", "in_reply_to": "In-Reply-To"}
    for key, value in fields.items():
        if value is not None:
            lines.append(f"{names.get(key, key.replace('_', '-').title())}: {value}")
    if subject is not None:
        lines.append(f"Subject: {subject}")
    if date is not None:
        lines.append(f"Date: {date}")
    return ("\n".join(lines) + "\n\n" + body + "\n").encode("utf-8")


class Session(unittest.TestCase):
    folder_class = None

    def setUp(self):
        self.imap = MemoryIMAP(self)
        if self.folder_class is not None:
            self.imap.account._folders["INBOX"] = self.folder_class("INBOX")
        self.inbox = self.imap.account._folders["INBOX"]

    def add(self, data, internaldate=None, flags=()):
        n = len(self.inbox.messages())
        return self.inbox.add(data, flags, internaldate if internaldate is not None else BASE + n)

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

    @defer.inlineCallbacks
    def answer(self, command, name=b"SORT"):
        """The numbers of the untagged answer to one command (which must be OK)."""
        (lines,) = yield self.talk(command)
        self.assertTrue(lines[-1].split(b" ", 2)[1] == b"OK", lines)
        found = [line for line in lines if line.startswith(b"* " + name)]
        self.assertEqual(len(found), 1, lines)
        return found[0][len(b"* " + name) :].strip().decode()


def numbers(text):
    return [int(n) for n in text.split()]


class Capability(Session):
    @defer.inlineCallbacks
    def test_sort_and_sort_display_are_advertised(self):
        (lines,) = yield self.talk(b"C1 CAPABILITY", select=False)
        caps = lines[0].split()
        self.assertIn(b"SORT", caps)
        self.assertIn(b"SORT=DISPLAY", caps)


class Keys(Session):
    @defer.inlineCallbacks
    def test_arrival_is_the_internaldate(self):
        for t in (30, 10, 20):
            self.add(message(), BASE + t)
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (ARRIVAL) UTF-8 ALL"))), [2, 3, 1])

    @defer.inlineCallbacks
    def test_size_is_rfc822_size(self):
        for body in ("xxx", "x", "xx"):
            self.add(message(body=body))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (SIZE) UTF-8 ALL"))), [2, 3, 1])

    @defer.inlineCallbacks
    def test_date_is_the_date_field_in_utc(self):
        self.add(message(date="Mon, 1 Jan 2024 12:00:00 +0200"))  # 10:00 UTC
        self.add(message(date="Mon, 1 Jan 2024 09:00:00 -0000"))  # 09:00 UTC
        self.add(message(date="Mon, 1 Jan 2024 06:00:00 -0500"))  # 11:00 UTC
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (DATE) UTF-8 ALL"))), [2, 1, 3])

    @defer.inlineCallbacks
    def test_date_falls_back_to_the_internaldate_when_missing_or_unreadable(self):
        # 1704103200 is Mon, 1 Jan 2024 10:00:00 UTC
        self.add(message(date="Mon, 1 Jan 2024 11:00:00 +0000"), 0)
        self.add(message(), 1704103200 + 1800)  # no Date: 10:30
        self.add(message(date="not a date at all"), 1704103200 - 1800)  # 09:30
        self.add(message(date="Mon, 1 Jan 2024 10:00:00 +0000"), 0)
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (DATE) UTF-8 ALL"))), [3, 4, 2, 1])

    @defer.inlineCallbacks
    def test_subject_is_the_base_subject(self):
        self.add(message(subject="Re: beta"))
        self.add(message(subject="[list] alpha"))
        self.add(message(subject="Fwd: Re: Gamma (fwd)"))
        self.add(message(subject="Beta"))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (SUBJECT) UTF-8 ALL"))), [2, 1, 4, 3])

    @defer.inlineCallbacks
    def test_from_is_the_mailbox_of_the_first_address(self):
        self.add(message(from_="Zed <carol@a.example>"))
        self.add(message(from_="alice@z.example, zoe@a.example"))
        self.add(message(from_="Aaron <bob@a.example>"))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (FROM) UTF-8 ALL"))), [2, 3, 1])

    @defer.inlineCallbacks
    def test_to_and_cc_are_the_mailbox_of_the_first_address(self):
        self.add(message(to="b@x.example", cc="c@x.example"))
        self.add(message(to="c@x.example", cc="a@x.example"))
        self.add(message(to="a@x.example", cc="b@x.example"))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (TO) UTF-8 ALL"))), [3, 1, 2])
        self.assertEqual(numbers((yield self.answer(b"A2 SORT (CC) UTF-8 ALL"))), [2, 3, 1])

    @defer.inlineCallbacks
    def test_a_missing_address_sorts_first(self):
        self.add(message(from_="a@x.example"))
        self.add(message())
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (FROM) UTF-8 ALL"))), [2, 1])

    @defer.inlineCallbacks
    def test_displayfrom_is_the_decoded_display_name_or_the_address(self):
        self.add(message(from_="foo bar <a@b.example>"))
        self.add(message(from_="b@c.example"))
        self.add(message(from_="=?iso-8859-1?q?foo_aar?= <e@f.example>"))
        self.add(message(from_='"Zz" <a@a.example>'))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (DISPLAYFROM) UTF-8 ALL"))), [2, 3, 1, 4])

    @defer.inlineCallbacks
    def test_displayto_of_a_group_is_its_name(self):
        self.add(message(to="Mike <a@b.example>"))
        self.add(message(to="friends: x@y.example, z@y.example;"))
        self.add(message(to="undisclosed-recipients:;"))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (DISPLAYTO) UTF-8 ALL"))), [2, 1, 3])


class Order(Session):
    @defer.inlineCallbacks
    def test_ties_are_in_sequence_order(self):
        for subject in ("b", "a", "b", "a"):
            self.add(message(subject=subject))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (SUBJECT) UTF-8 ALL"))), [2, 4, 1, 3])

    @defer.inlineCallbacks
    def test_reverse_turns_its_key_around_but_not_the_ties(self):
        # RFC 5256 3: REVERSE SIZE is not the reverse of SIZE.
        for body in ("x", "xx", "x", "xx"):
            self.add(message(body=body))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (REVERSE SIZE) UTF-8 ALL"))), [2, 4, 1, 3])

    @defer.inlineCallbacks
    def test_reverse_arrival_as_last_key_reverses_the_ties(self):
        for body in ("x", "xx", "x", "xx"):
            self.add(message(body=body))
        answer = yield self.answer(b"A1 SORT (SIZE REVERSE ARRIVAL) UTF-8 ALL")
        self.assertEqual(numbers(answer), [3, 1, 4, 2])

    @defer.inlineCallbacks
    def test_later_keys_order_what_the_earlier_ones_tie(self):
        self.add(message(subject="b", body="xx"))
        self.add(message(subject="a", body="xx"))
        self.add(message(subject="b", body="x"))
        self.add(message(subject="a", body="x"))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (SUBJECT SIZE) UTF-8 ALL"))), [4, 2, 3, 1])
        self.assertEqual(numbers((yield self.answer(b"A2 SORT (REVERSE SUBJECT SIZE) UTF-8 ALL"))), [3, 1, 4, 2])

    @defer.inlineCallbacks
    def test_keys_are_case_insensitive(self):
        for subject in ("b", "C", "a"):
            self.add(message(subject=subject))
        self.assertEqual(numbers((yield self.answer(b"A1 sort (reverse subject) us-ascii all"))), [2, 1, 3])


class SearchCriteria(Session):
    @defer.inlineCallbacks
    def test_only_the_matching_messages_are_sorted(self):
        self.add(message(subject="c"), flags=["\\Seen"])
        self.add(message(subject="b"))
        self.add(message(subject="a"), flags=["\\Seen"])
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (SUBJECT) UTF-8 SEEN"))), [3, 1])

    @defer.inlineCallbacks
    def test_header_search_keys_work_in_sort(self):
        self.add(message(subject="z", from_="ann@x.example"))
        self.add(message(subject="y", from_="bob@x.example"))
        self.add(message(subject="x", from_="ann@x.example"))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (SUBJECT) UTF-8 FROM ann"))), [3, 1])

    @defer.inlineCallbacks
    def test_no_match_is_an_empty_sort_response(self):
        self.add(message(subject="a"))
        (lines,) = yield self.talk(b"A1 SORT (SUBJECT) UTF-8 DELETED")
        self.assertEqual(lines[0], b"* SORT\r\n")
        self.assertTrue(lines[-1].startswith(b"A1 OK"), lines)

    @defer.inlineCallbacks
    def test_uid_sort_answers_uids(self):
        for subject in ("c", "b", "a", "d"):
            self.add(message(subject=subject))
        self.inbox._messages = self.inbox._messages[1:]  # UID 1 gone: sequence numbers and UIDs differ
        self.assertEqual(numbers((yield self.answer(b"A1 UID SORT (SUBJECT) UTF-8 ALL"))), [3, 2, 4])
        self.assertEqual(numbers((yield self.answer(b"A2 SORT (SUBJECT) UTF-8 ALL"))), [2, 1, 3])

    @defer.inlineCallbacks
    def test_uid_sort_with_a_uid_search_key(self):
        for subject in ("c", "b", "a"):
            self.add(message(subject=subject))
        self.assertEqual(numbers((yield self.answer(b"A1 UID SORT (SUBJECT) UTF-8 UID 1:2"))), [2, 1])


class Errors(Session):
    def setUp(self):
        super().setUp()
        self.add(message(subject="a"))

    @defer.inlineCallbacks
    def bad(self, command):
        lines, after = yield self.talk(command, b"A9 NOOP")
        self.assertTrue(lines[-1].startswith(command.split(b" ")[0] + b" BAD"), lines)
        self.assertTrue(after[-1].startswith(b"A9 OK"), after)

    def test_an_unknown_sort_key_is_bad(self):
        return self.bad(b"A1 SORT (SUBJECT COLOR) UTF-8 ALL")

    def test_an_empty_criteria_list_is_bad(self):
        return self.bad(b"A1 SORT () UTF-8 ALL")

    def test_reverse_alone_is_bad(self):
        return self.bad(b"A1 SORT (REVERSE) UTF-8 ALL")

    def test_reverse_twice_is_bad(self):
        return self.bad(b"A1 SORT (REVERSE REVERSE DATE) UTF-8 ALL")

    def test_criteria_without_parentheses_are_bad(self):
        return self.bad(b"A1 SORT SUBJECT UTF-8 ALL")

    def test_a_missing_charset_is_bad(self):
        return self.bad(b"A1 SORT (SUBJECT) ALL")

    def test_missing_search_keys_are_bad(self):
        return self.bad(b"A1 SORT (SUBJECT) UTF-8")

    def test_a_bad_search_key_is_bad(self):
        return self.bad(b"A1 SORT (SUBJECT) UTF-8 NOSUCHKEY")

    @defer.inlineCallbacks
    def test_an_unsupported_charset_is_no_badcharset(self):
        lines, after = yield self.talk(b"A1 SORT (SUBJECT) KOI8-R ALL", b"A9 NOOP")
        self.assertTrue(lines[-1].startswith(b"A1 NO [BADCHARSET"), lines)
        self.assertTrue(after[-1].startswith(b"A9 OK"), after)

    @defer.inlineCallbacks
    def test_sort_needs_a_selected_mailbox(self):
        (lines,) = yield self.talk(b"A1 SORT (SUBJECT) UTF-8 ALL", select=False)
        self.assertTrue(lines[-1].startswith(b"A1 BAD"), lines)


class Expunges(Session):
    @defer.inlineCallbacks
    def test_no_expunge_is_sent_during_sort(self):
        # RFC 3501 7.4.1 as for SEARCH: the numbers must stay valid.
        for subject in ("b", "a", "c"):
            self.add(message(subject=subject), flags=["\\Deleted"])

        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.command(b"S1 SELECT INBOX")
            blockingCallFromThread(reactor, lambda: self.inbox.expunge([1]))
            return c.command(b"A1 SORT (SUBJECT) UTF-8 ALL"), c.command(b"A2 NOOP")

        sort, noop = yield in_thread(run)
        self.assertEqual(sort[0], b"* SORT 2 3\r\n")
        self.assertFalse([line for line in sort if b"EXPUNGE" in line], sort)
        self.assertIn(b"* 1 EXPUNGE\r\n", noop)


class Cache(Session):
    folder_class = CountingFolder

    @defer.inlineCallbacks
    def test_header_keys_are_read_once_then_cached(self):
        for subject in ("b", "a", "c"):
            self.add(message(subject=subject, from_=f"{subject}@x.example"))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (SUBJECT) UTF-8 ALL"))), [2, 1, 3])
        self.assertEqual(self.inbox.single_opens, 3)
        self.assertEqual(numbers((yield self.answer(b"A2 SORT (REVERSE FROM) UTF-8 ALL"))), [3, 1, 2])
        self.assertEqual(numbers((yield self.answer(b"A3 SORT (DATE) UTF-8 ALL"))), [1, 2, 3])
        self.assertEqual(self.inbox.single_opens, 3)

    @defer.inlineCallbacks
    def test_arrival_and_size_open_no_message(self):
        for body in ("xx", "x"):
            self.add(message(body=body))
        self.assertEqual(numbers((yield self.answer(b"A1 SORT (SIZE REVERSE ARRIVAL) UTF-8 ALL"))), [2, 1])
        self.assertEqual(self.inbox.single_opens, 0)


class BaseSubject(unittest.TestCase):
    """RFC 5256 2.1, step by step, and what counts as a reply or forward."""

    def check(self, subject, base, reply):
        self.assertEqual(base_subject(subject), (base, reply))

    def test_re_and_fwd_leaders_go(self):
        self.check("Re: hello", "hello", True)
        self.check("RE:hello", "hello", True)
        self.check("fw: fwd: re : hello", "hello", True)

    def test_a_counted_re_goes(self):
        self.check("Re[2]: hello", "hello", True)

    def test_blobs_before_a_leader_go(self):
        self.check("[list] Re: [other] Fwd: hello", "hello", True)

    def test_a_leading_blob_goes_when_text_follows(self):
        self.check("[list] hello", "hello", False)

    def test_a_blob_that_is_the_whole_subject_stays(self):
        self.check("[xyz]", "[xyz]", False)
        self.check("Re: [xyz]", "[xyz]", True)

    def test_fwd_trailers_go(self):
        self.check("hello (fwd)", "hello", True)
        self.check("hello (FWD)  (fwd) ", "hello", True)

    def test_a_fwd_wrapper_is_unwrapped_and_extraction_starts_again(self):
        self.check("[Fwd: Re: hello]", "hello", True)
        self.check("re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon", True)

    def test_words_that_only_start_like_re_stay(self):
        self.check("Reply needed: hello", "Reply needed: hello", False)
        self.check("Ad: Re: x", "Ad: Re: x", False)

    def test_white_space_is_collapsed_and_trimmed(self):
        self.check("  hello \t  world  ", "hello world", False)

    def test_encoded_words_are_decoded_first(self):
        self.check("=?iso-8859-1?q?RE:_C?=", "C", True)
        self.check("=?us-ascii?b?UmU6IGM=?=", "c", True)
        self.check("=?utf-8?q?a?= =?utf-8?q?b?=", "ab", False)

    def test_a_mailing_list_blob_alone_is_not_a_reply(self):
        self.assertFalse(base_subject("[list] hello")[1])

    def test_an_empty_subject(self):
        self.check("", "", False)
        self.check("=?iso-8859-1?q?_?=", "", False)


class UnicodeCasemap(unittest.TestCase):
    """RFC 5051: simple titlecase, then NFKD."""

    def test_ascii_is_upper_cased(self):
        self.assertEqual(collate("Hello [x]"), "HELLO [X]")

    def test_letters_sort_before_brackets_and_underscore(self):
        self.assertLess(collate("z"), collate("[a]"))
        self.assertLess(collate("[a]"), collate("_"))

    def test_accented_letters_sort_after_their_base_letter(self):
        keys = sorted(["f", "\u00e9", "e", "E"], key=collate)
        self.assertEqual(keys[-1], "f")
        self.assertEqual(keys[-2], "\u00e9")

    def test_compatibility_forms_are_decomposed(self):
        self.assertEqual(collate("\uff41"), collate("a"))  # fullwidth a

    def test_no_multi_character_mappings(self):
        self.assertEqual(collate("\u00df"), "\u00df")  # sharp s has no simple titlecase


class SentDate(unittest.TestCase):
    def test_zones_are_normalised_to_utc(self):
        self.assertEqual(sent_date("Fri, 22 Feb 2008 02:00:00 +0200"), sent_date("Fri, 22 Feb 2008 00:00:00 +0000"))

    def test_no_zone_is_utc(self):
        self.assertEqual(sent_date("22 Feb 2008 00:00:00"), 1203638400)

    def test_missing_or_garbage_is_none(self):
        self.assertIsNone(sent_date(None))
        self.assertIsNone(sent_date("yesterday"))


class OnTheStore(unittest.TestCase):
    """imaplib's sort() and thread() against the real server and store; the keys land in the folder's cache."""

    store = "maildir"

    @defer.inlineCallbacks
    def test_sort_and_thread_over_imaps_keep_their_keys_in_the_folder_cache(self):
        alice = "alice@example.test"
        server = yield MailServer(self, listeners=("smtp", "imaps")).start(users={alice: "pw"})
        self.addCleanup(drain, server)
        messages = [
            message(subject="Re: b", message_id="<2@x>", references="<1@x>", from_="zed@x.example", to=alice),
            message(subject="a", message_id="<3@x>", from_="amy@x.example", to=alice),
            message(subject="b", message_id="<1@x>", from_="bob@x.example", to=alice),
        ]

        def run():
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
                for data in messages:
                    s.sendmail("bob@example.org", [alice], data)
            c = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=client_tls(), timeout=10)
            try:
                c.login(alice, "pw")
                c.select("INBOX")
                return (
                    c.sort("(SUBJECT)", "UTF-8", "ALL"),
                    c.sort("(REVERSE FROM)", "UTF-8", "ALL"),
                    c.uid("SORT", "(SUBJECT)", "UTF-8", "ALL"),
                    c.thread("REFERENCES", "UTF-8", "ALL"),
                    c.thread("ORDEREDSUBJECT", "UTF-8", "ALL"),
                )
            finally:
                c.logout()

        by_subject, by_from, uids, references, ordered = yield in_thread(run)
        self.assertEqual(by_subject, ("OK", [b"2 1 3"]))
        self.assertEqual(by_from, ("OK", [b"1 3 2"]))
        self.assertEqual(uids, ("OK", [b"2 1 3"]))
        self.assertEqual(references, ("OK", [b"(2)(3 1)"]))
        self.assertEqual(ordered, ("OK", [b"(1 3)(2)"]))
        account = yield server.service.backends.store.account(alice)
        folder = yield account.folder("INBOX")
        self.assertEqual([folder.cached(info.uid, FIELD)[1] for info in folder.messages()], ["B", "A", "B"])


class OnTheMboxStore(OnTheStore):
    store = "mbox"
