"""
Every IMAP command gets its tagged answer (issue 17 #2), whatever the
input: a client waits for the tag, so an untagged BAD leaves it hanging.
"""

import base64

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import in_thread
from tests.imap_support import MemoryIMAP, RawClient

HOSTILE = [
    b"S1 SEARCH " + b"(" * 400 + b"ALL" + b")" * 400,
    b"S2 FETCH " + b"9" * 5000 + b" FLAGS",
    b"S3 SEARCH UID 1:" + b"9" * 5000,
    b"S4 STORE " + b"7" * 5000 + b" +FLAGS (\\Seen)",
    b"S5 STORE 1 +FLAGS (\xff\xfe)",
    b"S6 SEARCH LARGER " + b"9" * 5000,
    b"S7 SEARCH " + b"NOT " * 400 + b"ALL",
    b"S8 UID STORE 1:" + b"9" * 5000 + b" FLAGS ()",
]


class EveryCommandAnswered(unittest.TestCase):
    def setUp(self):
        self.imap = MemoryIMAP(self)
        self.imap.inbox.add(b"Subject: one\r\n\r\nbody\r\n")

    @defer.inlineCallbacks
    def test_hostile_commands_each_get_a_tagged_answer(self):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.login()
            c.command(b"A1 SELECT INBOX")
            answers = []
            for command in HOSTILE:
                tag = command.split(b" ", 1)[0]
                lines = c.command(command)
                answers.append((tag, lines[-1] if lines else b""))
            answers.append((b"N1", c.command(b"N1 NOOP")[-1]))
            return answers

        answers = yield in_thread(run)
        for tag, last in answers:
            self.assertTrue(last.startswith(tag + b" "), (tag, last))
        self.assertTrue(answers[-1][1].startswith(b"N1 OK"))


class HandlerFailuresAnswered(unittest.TestCase):
    """
    A handler that breaks, at once or later, still ends its command with a
    tagged NO and one log line; the SASL exchange is over and the session
    goes on.
    """

    def setUp(self):
        from tests.helpers import collect_log

        self.imap = MemoryIMAP(self)
        self.log = collect_log(self)

    def _authenticate(self):
        def run():
            c = RawClient(self.imap.port)
            self.addCleanup(c.close)
            c.send(b"A1 AUTHENTICATE PLAIN\r\n")
            continuation = c.line()
            c.send(base64.b64encode(b"\0alice\0pw") + b"\r\n")
            answer = c.until(b"A1")[-1]
            after = c.command(b"N1 NOOP")[-1]
            return continuation, answer, after

        return in_thread(run)

    def _check(self, result):
        continuation, answer, after = result
        self.assertTrue(continuation.startswith(b"+"), continuation)
        self.assertEqual(answer.rstrip(), b"A1 NO [SERVERBUG] internal error")
        self.assertTrue(after.startswith(b"N1 OK"), after)
        failures = [t for t in self.log if "IMAP command failed" in t]
        self.assertEqual(len(failures), 1, self.log)

    @defer.inlineCallbacks
    def test_sasl_step_raising(self):
        from mailplat.imap.server import MailplatIMAP

        def broken(protocol, line):
            raise RuntimeError("broken on purpose")

        self.patch(MailplatIMAP, "_sasl_step", broken)
        self._check((yield self._authenticate()))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_sasl_step_failing_later(self):
        from twisted.internet import reactor, task

        from mailplat.imap.server import MailplatIMAP

        def broken(protocol, tag, user, password):
            return task.deferLater(reactor, 0.05, lambda: 1 / 0)

        self.patch(MailplatIMAP, "_login", broken)
        self._check((yield self._authenticate()))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
