"""
LIST-EXTENDED (RFC 5258) over a real socket: selection options SUBSCRIBED,
REMOTE, RECURSIVEMATCH; return options CHILDREN, SUBSCRIBED, SPECIAL-USE and
STATUS (RFC 5819); several patterns; CHILDINFO.

Folders: INBOX, the special folders, a, a.b, a.c, d, d.e; subscribed:
a.b, d.e.f (which does not exist) and the special folders.
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient


class Session(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        account = self.imap.account
        for name in ("a", "a.b", "a.c", "d", "d.e"):
            account.create(name)
        account._subs.update({"a.b", "d.e.f"})

    def list(self, command):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            return c.command(command)

        return in_thread(run)

    def listed(self, lines):
        """{name: (attributes, extended data)} of the LIST answers; the last line must be OK."""
        self.assertIn(b" OK ", lines[-1])
        out = {}
        for line in lines[:-1]:
            if not line.startswith(b"* LIST "):
                continue
            attrs, rest = line[len(b"* LIST (") :].split(b")", 1)
            _, _, rest = rest.strip().partition(b" ")  # the separator
            name, _, extra = rest.rstrip(b"\r\n").partition(b" ")
            out[name.strip(b'"')] = (set(attrs.split()), extra)
        return out


class Capability(Session):
    @defer.inlineCallbacks
    def test_list_extended_is_advertised(self):
        lines = yield self.list(b"C1 CAPABILITY")
        self.assertIn(b"LIST-EXTENDED", lines[0].split())


class Selection(Session):
    @defer.inlineCallbacks
    def test_subscribed_lists_only_subscribed_ones(self):
        got = self.listed((yield self.list(b'L1 LIST (SUBSCRIBED) "" "a*"')))
        self.assertEqual(set(got), {b"a.b"})
        self.assertIn(b"\\Subscribed", got[b"a.b"][0])

    @defer.inlineCallbacks
    def test_subscribed_but_gone_is_nonexistent(self):
        got = self.listed((yield self.list(b'L1 LIST (SUBSCRIBED) "" "d*"')))
        self.assertEqual(got[b"d.e.f"][0], {b"\\NonExistent", b"\\Subscribed"})

    @defer.inlineCallbacks
    def test_recursivematch_gives_childinfo_to_a_parent_of_a_subscribed_one(self):
        got = self.listed((yield self.list(b'L1 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')))
        self.assertEqual(got[b"a"][1], b'(CHILDINFO ("SUBSCRIBED"))')
        self.assertNotIn(b"\\Subscribed", got[b"a"][0])
        self.assertEqual(got[b"d"][1], b'(CHILDINFO ("SUBSCRIBED"))')

    @defer.inlineCallbacks
    def test_recursivematch_leaves_out_a_parent_whose_child_is_listed(self):
        got = self.listed((yield self.list(b'L1 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("a" "a.b")')))
        self.assertEqual(set(got), {b"a.b"})

    @defer.inlineCallbacks
    def test_remote_alone_is_an_ordinary_list(self):
        got = self.listed((yield self.list(b'L1 LIST (REMOTE) "" "%"')))
        self.assertIn(b"a", got)
        self.assertIn(b"INBOX", got)

    @defer.inlineCallbacks
    def test_unknown_selection_option_is_bad(self):
        lines = yield self.list(b'L1 LIST (BOGUS) "" "%"')
        self.assertIn(b"L1 BAD", lines[-1])

    @defer.inlineCallbacks
    def test_recursivematch_alone_is_bad(self):
        lines = yield self.list(b'L1 LIST (RECURSIVEMATCH) "" "%"')
        self.assertIn(b"L1 BAD", lines[-1])

    @defer.inlineCallbacks
    def test_recursivematch_with_remote_only_is_bad(self):
        lines = yield self.list(b'L1 LIST (RECURSIVEMATCH REMOTE) "" "%"')
        self.assertIn(b"L1 BAD", lines[-1])


class Patterns(Session):
    @defer.inlineCallbacks
    def test_several_patterns_list_the_union(self):
        got = self.listed((yield self.list(b'L1 LIST "" ("a.%" "d")')))
        self.assertEqual(set(got), {b"a.b", b"a.c", b"d"})

    @defer.inlineCallbacks
    def test_a_mailbox_matched_twice_is_listed_once(self):
        lines = yield self.list(b'L1 LIST "" ("a" "a*")')
        self.assertEqual(sum(1 for l in lines if l.endswith(b' "a"\r\n') or l.endswith(b" a\r\n")), 1)


class ReturnOptions(Session):
    @defer.inlineCallbacks
    def test_return_subscribed_marks_subscribed_ones(self):
        got = self.listed((yield self.list(b'L1 LIST "" "a%" RETURN (SUBSCRIBED)')))
        self.assertNotIn(b"\\Subscribed", got[b"a"][0])
        got = self.listed((yield self.list(b'L1 LIST "" "a.%" RETURN (SUBSCRIBED CHILDREN)')))
        self.assertIn(b"\\Subscribed", got[b"a.b"][0])
        self.assertNotIn(b"\\Subscribed", got[b"a.c"][0])

    @defer.inlineCallbacks
    def test_return_children(self):
        got = self.listed((yield self.list(b'L1 LIST "" "%" RETURN (CHILDREN)')))
        self.assertIn(b"\\HasChildren", got[b"a"][0])
        self.assertIn(b"\\HasNoChildren", got[b"Sent"][0])

    @defer.inlineCallbacks
    def test_return_special_use(self):
        got = self.listed((yield self.list(b'L1 LIST "" "Sent" RETURN (SPECIAL-USE)')))
        self.assertIn(b"\\Sent", got[b"Sent"][0])

    @defer.inlineCallbacks
    def test_return_status_follows_each_list(self):
        lines = yield self.list(b'L1 LIST "" "a.b" RETURN (STATUS (MESSAGES UIDNEXT))')
        self.assertTrue(lines[0].startswith(b"* LIST "))
        self.assertEqual(lines[1], b'* STATUS "a.b" (MESSAGES 0 UIDNEXT 1)\r\n')

    @defer.inlineCallbacks
    def test_unknown_return_option_is_bad(self):
        lines = yield self.list(b'L1 LIST "" "%" RETURN (BOGUS)')
        self.assertIn(b"L1 BAD", lines[-1])

    @defer.inlineCallbacks
    def test_selection_special_use_lists_only_special_folders(self):
        got = self.listed((yield self.list(b'L1 LIST (SPECIAL-USE) "" "*"')))
        self.assertEqual(set(got), {b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive"})
