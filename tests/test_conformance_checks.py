"""The built-in SMTP checks pass the check conformance kit."""

from twisted.trial import unittest

from mailplat.interfaces import BackendContext, Envelope, Verdict
from mailplat.store.source import BytesSource
from mailplat.testing.check import CheckConformance
from plugins import mailplat_checks

SPAM = b"From: a@remote.test\nX-Spam-Flag: YES\nSubject: buy\n\nnow\n"
HAM = b"From: a@remote.test\nSubject: hello\n\nhi\n"


def data_args(message):
    return (Envelope("a@remote.test"), BytesSource(message))


class SizeCheckConforms(CheckConformance, unittest.TestCase):
    cases = [
        ("data", data_args(b"Subject: s\n\n" + b"x" * 2000 + b"\n"), Verdict.REJECT),
        ("data", data_args(HAM), Verdict.ACCEPT),
    ]

    def make_check(self):
        return mailplat_checks.size.from_config({"max_size": 1000}, BackendContext(None))


class HeaderCheckConforms(CheckConformance, unittest.TestCase):
    cases = [
        ("data", data_args(SPAM), Verdict.FOLDER),
        ("data", data_args(HAM), Verdict.ACCEPT),
        ("rcpt", ("b@example.test",), Verdict.ACCEPT),
    ]

    def make_check(self):
        section = {"header": "X-Spam-Flag", "match": "^yes$", "action": "folder", "folder": "Junk"}
        return mailplat_checks.header.from_config(section, BackendContext(None))


class KitCatchesABlockingCheck(unittest.TestCase):
    """The kit can fail: a check that sleeps on the reactor is caught."""

    def test_blocking_check_fails_the_kit(self):
        import time

        from mailplat.checks import Check

        class Sleepy(Check):
            name = "sleepy"

            def mail(self, session, sender):
                time.sleep(0.1)
                return None

        class SleepyConforms(CheckConformance, unittest.TestCase):
            def make_check(self):
                return Sleepy()

        from twisted.trial.reporter import TestResult

        result = TestResult()
        SleepyConforms("test_no_stage_blocks_the_reactor").run(result)
        self.assertEqual(len(result.failures), 1)
