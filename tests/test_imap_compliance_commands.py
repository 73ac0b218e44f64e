"""
Commands as imaptest's scripts check them, over a real socket: names that
are not modified UTF-7 (atoms), a long ID (id), LSUB's \\Noselect parents
(subscribe), and SEARCH on addresses (search-addresses).
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient

# Every ATOM-CHAR imaptest's atoms script uses; "&'" is not modified UTF-7.
ATOMS = b"!#$&'+,-.0123456789:;<=>?@^_`|[}"


class Session(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)

    def talk(self, commands, login=True):
        """Each command's answer lines, in one session."""

        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            if login:
                c.login()
            return [c.command(command) for command in commands]

        return in_thread(run)


class NamesThatAreNotModifiedUTF7(Session):
    @defer.inlineCallbacks
    def test_select_of_such_a_name_is_no_not_bad(self):
        select, after = yield self.talk([b"A1 SELECT " + ATOMS, b"A2 NOOP"])
        self.assertTrue(select[-1].startswith(b"A1 NO "), select)
        self.assertTrue(after[-1].startswith(b"A2 OK"), after)

    @defer.inlineCallbacks
    def test_list_with_such_a_pattern_is_ok_and_lists_nothing(self):
        listed, after = yield self.talk([b'A1 LIST "" ' + ATOMS + b"%*", b"A2 NOOP"])
        self.assertEqual(len(listed), 1, listed)
        self.assertTrue(listed[-1].startswith(b"A1 OK"), listed)
        self.assertTrue(after[-1].startswith(b"A2 OK"), after)

    @defer.inlineCallbacks
    def test_lsub_with_such_a_pattern_is_ok(self):
        (listed,) = yield self.talk([b'A1 LSUB "" ' + ATOMS])
        self.assertEqual(len(listed), 1, listed)
        self.assertTrue(listed[-1].startswith(b"A1 OK"), listed)

    @defer.inlineCallbacks
    def test_create_of_such_a_name_is_no(self):
        (created,) = yield self.talk([b"A1 CREATE a&b"])
        self.assertTrue(created[-1].startswith(b"A1 NO "), created)
        self.assertNotIn("a&b", self.imap.account._folders)


class LongID(Session):
    # RFC 2971 3.3: up to 30 pairs, names up to 30 octets, values up to 1024.
    pairs = b" ".join(b'"%s" "%s"' % ((b"n%02d" % i).ljust(30, b"x"), b"v" * 1024) for i in range(30))

    @defer.inlineCallbacks
    def test_id_with_thirty_long_pairs_is_answered_before_login(self):
        answer, after = yield self.talk([b"I1 ID (" + self.pairs + b")", b"I2 NOOP"], login=False)
        self.assertTrue(answer[0].startswith(b"* ID ("), answer)
        self.assertTrue(answer[-1].startswith(b"I1 OK"), answer)
        self.assertTrue(after[-1].startswith(b"I2 OK"), after)

    @defer.inlineCallbacks
    def test_a_line_far_longer_than_any_id_is_still_refused(self):
        answer, after = yield self.talk([b"I1 ID (" + self.pairs * 3 + b")", b"I2 NOOP"], login=False)
        self.assertIn(b"too long", answer[-1])
        self.assertTrue(after[-1].startswith(b"I2 OK"), after)


class LsubParents(Session):
    def setUp(self):
        super().setUp()
        account = self.imap.account
        for name in ("box", "box.test", "box.test2", "box.test2.test", "box.test3.test3"):
            account.create(name)
        account._subs = {"box.test", "box.test2.test", "box.test3.test3"}

    @defer.inlineCallbacks
    def test_percent_lists_an_unsubscribed_parent_of_a_subscribed_child_as_noselect(self):
        (listed,) = yield self.talk([b'L1 LSUB "" box.%'])
        self.assertEqual(
            listed[:-1],
            [
                b'* LSUB () "." "box.test"\r\n',
                b'* LSUB (\\Noselect) "." "box.test2"\r\n',
                b'* LSUB (\\Noselect) "." "box.test3"\r\n',
            ],
        )

    @defer.inlineCallbacks
    def test_star_lists_only_the_subscribed_names(self):
        (listed,) = yield self.talk([b'L1 LSUB "" *test'])
        self.assertEqual(listed[:-1], [b'* LSUB () "." "box.test"\r\n', b'* LSUB () "." "box.test2.test"\r\n'])

    @defer.inlineCallbacks
    def test_a_parent_that_is_subscribed_is_listed_once_and_selectable(self):
        self.imap.account._subs.add("box.test2")
        (listed,) = yield self.talk([b'L1 LSUB "" box.%'])
        self.assertIn(b'* LSUB () "." "box.test2"\r\n', listed)
        self.assertEqual(sum(1 for line in listed if b'"box.test2"\r\n' in line), 1)


class SearchAddresses(Session):
    def setUp(self):
        super().setUp()
        for from_ in (
            b"user-from@domain.org",
            b"RealFrom <user-from@domain.org>",
            b"<user-from (comment)@ (comment) domain.org>",
            b"user-from@domain.org (RealFrom)",
            b"user-from1@domain.org, user-from2@domain.org",
            b"group: user-from@domain.org;",
        ):
            self.imap.inbox.add(b"From: " + from_ + b"\r\nSubject: s\r\n\r\nbody\r\n")

    def search(self, key):
        def found(answers):
            untagged = [line for line in answers[1] if line.startswith(b"* SEARCH")]
            return untagged[0].split()[2:]

        return self.talk([b"S0 SELECT INBOX", b"S1 SEARCH " + key]).addCallback(found)

    @defer.inlineCallbacks
    def test_an_address_with_comments_inside_matches_its_plain_form(self):
        found = yield self.search(b"FROM user-from@domain.org")
        self.assertEqual(found, [b"1", b"2", b"3", b"4", b"6"])

    @defer.inlineCallbacks
    def test_display_names_and_comments_match(self):
        found = yield self.search(b"FROM realfrom")
        self.assertEqual(found, [b"2", b"4"])

    @defer.inlineCallbacks
    def test_substrings_match(self):
        found = yield self.search(b"FROM ser-fro")
        self.assertEqual(found, [b"1", b"2", b"3", b"4", b"5", b"6"])

    @defer.inlineCallbacks
    def test_group_names_match(self):
        found = yield self.search(b"FROM group")
        self.assertEqual(found, [b"6"])
