"""
SieveFilter.decide, the seam local delivery calls: compiled scripts over a
message in memory are decided at once, a long run still gets its whole
budget, a changed script is compiled again, the checks' scores reach
spamtest, and the flags a script sets come back with each folder.
"""

import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.sieve.filter import INLINE_STEPS, SieveFilter
from mailplat.store.source import BytesSource, PrefixedSource

USER = "alice@example.test"
MESSAGE = b"From: bob@example.org\nTo: alice@example.test\nSubject: invoice 42\n\nhello\n"


class Decide(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-sieve-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.filter = SieveFilter(os.path.join(self.dir, "%d", "%n"))
        self.home = os.path.join(self.dir, "example.test", "alice")
        os.makedirs(os.path.join(self.home, "sieve"))

    def script(self, text, name="main"):
        path = os.path.join(self.home, "sieve", name + ".sieve")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)  # as ManageSieve writes: a new file
        link = os.path.join(self.home, ".dovecot.sieve")
        if not os.path.islink(link):
            os.symlink(os.path.join("sieve", name + ".sieve"), link)

    def decide(self, scores=None):
        source = PrefixedSource(b"Return-Path: <bob@example.org>\n", BytesSource(MESSAGE))
        return self.filter.decide(USER, "bob@example.org", source, "INBOX", scores)

    @defer.inlineCallbacks
    def test_a_compiled_script_decides_at_once(self):
        self.script('require "fileinto"; if header :contains "subject" "invoice" { fileinto "Bills"; }')
        first = yield self.decide()  # compiled in a thread
        second = self.decide()
        self.assertTrue(second.called)  # no thread: the script is compiled and the message in memory
        decision = yield second
        self.assertEqual(first.folders, [("Bills", ())])
        self.assertEqual(decision.folders, [("Bills", ())])

    @defer.inlineCallbacks
    def test_a_long_run_gets_the_whole_budget(self):
        tests = 'if header :is "x-none" "y" { discard; }\n' * (INLINE_STEPS // 2 + 100)
        self.script('require "fileinto";\n' + tests + 'fileinto "Deep";\n')
        yield self.decide()
        decision = yield self.decide()
        self.assertIsNone(decision.error)
        self.assertEqual(decision.folders, [("Deep", ())])

    @defer.inlineCallbacks
    def test_a_replaced_script_of_the_same_size_is_compiled_again(self):
        self.filter.recheck = 0  # look at the file every time (by default at most once a second)
        self.script('require "fileinto"; fileinto "AAAA";')
        first = yield self.decide()
        self.script('require "fileinto"; fileinto "BBBB";')
        second = yield self.decide()
        self.assertEqual((first.folders, second.folders), ([("AAAA", ())], [("BBBB", ())]))

    @defer.inlineCallbacks
    def test_a_changed_script_is_used_within_the_recheck_period(self):
        self.filter.recheck = 0.2
        self.script('require "fileinto"; fileinto "AAAA";')
        first = yield self.decide()
        self.script('require "fileinto"; fileinto "BBBB";')
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        yield deferLater(reactor, 0.3, lambda: None)
        second = yield self.decide()
        self.assertEqual((first.folders, second.folders), ([("AAAA", ())], [("BBBB", ())]))

    @defer.inlineCallbacks
    def test_the_checks_scores_reach_spamtest(self):
        self.script('require ["spamtest", "fileinto", "variables"]; if spamtest :matches "*" { fileinto "spam-${0}"; }')
        untested = yield self.decide()
        scored = yield self.decide({"spam": (7.5, 10.0)})
        self.assertEqual(untested.folders, [("spam-0", ())])
        self.assertEqual(scored.folders, [("spam-7", ())])  # 1 + 9 * 0.75, rounded down

    @defer.inlineCallbacks
    def test_flags_come_with_each_folder(self):
        self.script('require ["imap4flags", "fileinto"]; addflag "\\\\Seen"; fileinto :flags "$Bill" "Bills"; keep;')
        decision = yield self.decide()
        self.assertEqual(decision.folders, [("Bills", ("$Bill",)), ("INBOX", ("\\Seen",))])
