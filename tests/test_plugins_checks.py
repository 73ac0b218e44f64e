"""
Checks: the SMTP-stage hook point. Loading from [checks], the runner's
rules (order, first refusal wins, folder verdicts, errors and timeouts),
and the built-in `size` and `header` checks.
"""

import os
import shutil
import tempfile

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailplat import checks
from mailplat import config as configuration
from mailplat.config import ConfigError
from mailplat.interfaces import BackendContext, CheckSession, Envelope, ICheck, PermanentFailure, TemporaryFailure, Verdict
from mailplat.store.source import BytesSource

BASE = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]
"""


class Fixed(checks.Check):
    """A check answering the same at every stage (or raising it)."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def _answer(self, stage):
        self.calls.append(stage)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def connect(self, session):
        return self._answer("connect")

    def rcpt(self, session, recipient):
        return self._answer("rcpt")


def enabled(*answers, on_error="tempfail", timeout=30):
    return [checks.EnabledCheck(f"c{i}", Fixed(a), timeout, on_error) for i, a in enumerate(answers)]


def result(d):
    box = []
    d.addBoth(box.append)
    assert box, "not fired"
    return box[0]


class Runner(unittest.TestCase):
    def setUp(self):
        self.session = CheckSession("192.0.2.1")

    def run_rcpt(self, configured):
        return result(checks.run_stage(configured, "rcpt", self.session, "alice@example.test"))

    def test_no_checks_accept(self):
        self.assertEqual(self.run_rcpt([]).action, Verdict.ACCEPT)

    def test_no_opinion_from_all_accepts(self):
        verdict = self.run_rcpt(enabled(None, Verdict.next()))
        self.assertEqual(verdict.action, Verdict.ACCEPT)

    def test_the_first_refusal_decides_and_later_checks_do_not_run(self):
        configured = enabled(None, Verdict.reject("go away", 554, "5.7.1"), Verdict.tempfail("later"))
        verdict = self.run_rcpt(configured)
        self.assertEqual((verdict.action, verdict.code, verdict.text, verdict.check), ("reject", 554, "go away", "c1"))
        self.assertEqual(configured[2].check.calls, [])

    def test_accept_skips_the_rest_of_the_stage(self):
        configured = enabled(Verdict.accept(), Verdict.reject("no"))
        self.assertEqual(self.run_rcpt(configured).action, Verdict.ACCEPT)
        self.assertEqual(configured[1].check.calls, [])

    def test_a_folder_verdict_holds_unless_a_later_check_refuses(self):
        self.assertEqual(self.run_rcpt(enabled(Verdict.folder("Junk"), None)).folder_name, "Junk")
        later = self.run_rcpt(enabled(Verdict.folder("Junk"), Verdict.tempfail("busy")))
        self.assertEqual(later.action, Verdict.TEMPFAIL)

    def test_backend_errors_become_their_smtp_answers(self):
        rejected = self.run_rcpt(enabled(PermanentFailure("listed in a DNSBL", "5.7.1", 554)))
        self.assertEqual((rejected.action, rejected.code, rejected.enhanced), ("reject", 554, "5.7.1"))
        deferred = self.run_rcpt(enabled(TemporaryFailure("DNS timeout", "4.4.3")))
        self.assertEqual((deferred.action, deferred.code, deferred.enhanced), ("tempfail", 451, "4.4.3"))

    def test_a_crashing_check_tempfails_and_is_logged(self):
        verdict = self.run_rcpt(enabled(RuntimeError("bug")))
        self.assertEqual((verdict.action, verdict.code), ("tempfail", 451))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_crashing_check_with_on_error_continue_is_skipped(self):
        verdict = self.run_rcpt(enabled(RuntimeError("bug"), Verdict.reject("no"), on_error="continue"))
        self.assertEqual(verdict.check, "c1")
        self.flushLoggedErrors(RuntimeError)

    def test_a_wrong_answer_counts_as_a_crash(self):
        verdict = self.run_rcpt(enabled("yes"))
        self.assertEqual(verdict.action, Verdict.TEMPFAIL)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_a_slow_check_times_out_as_tempfail(self):
        clock = task.Clock()
        configured = enabled(defer.Deferred(), timeout=5)
        d = checks.run_stage(configured, "rcpt", self.session, "alice@example.test", clock=clock)
        self.assertFalse(d.called)
        clock.advance(5)
        self.assertEqual(result(d).action, Verdict.TEMPFAIL)

    def test_an_unknown_stage_is_an_error(self):
        self.failureResultOf(checks.run_stage([], "quit", self.session), ValueError)

    def test_verdicts_refuse_the_wrong_code_class(self):
        self.assertRaises(ValueError, Verdict.reject, "x", 451)
        self.assertRaises(ValueError, Verdict.tempfail, "x", 550)

    def test_the_base_check_provides_the_interface(self):
        self.assertTrue(verifyObject(ICheck, checks.Check()))


class Loading(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-checks-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def load(self, text):
        path = os.path.join(self.dir, "mailplat.toml")
        with open(path, "w") as f:
            f.write(BASE + text)
        config = configuration.load(path, cwd=self.dir)
        return checks.load(config, BackendContext(config))

    def test_no_checks_table_means_no_checks(self):
        self.assertEqual(self.load(""), [])

    def test_enabled_checks_load_in_order_with_their_sections(self):
        loaded = self.load(
            """
[checks]
enabled = ["junk", "size"]
timeout = 7

[checks.size]
max_size = 1000
on_error = "continue"

[checks.junk]
plugin = "header"
header = "X-Spam-Flag"
match = "^yes$"
timeout = 3
"""
        )
        self.assertEqual([c.name for c in loaded], ["junk", "size"])
        self.assertEqual(loaded[1].check.max_size, 1000)
        self.assertEqual((loaded[0].timeout, loaded[1].timeout), (3, 7))
        self.assertEqual((loaded[0].on_error, loaded[1].on_error), ("tempfail", "continue"))

    def test_an_unknown_check_names_the_key_and_the_choices(self):
        e = self.assertRaises(ConfigError, self.load, '[checks]\nenabled = ["clamav"]\n')
        self.assertIn("checks.clamav", str(e))
        self.assertIn("available: dnsbl, greylist, header, lists, rspamd, size", str(e))

    def test_a_bad_section_names_the_check_and_the_key(self):
        e = self.assertRaises(ConfigError, self.load, '[checks]\nenabled = ["size"]\n[checks.size]\nmax_size = "big"\n')
        self.assertIn("checks.size", str(e))
        self.assertIn("max_size", str(e))

    def test_bad_tables_are_named(self):
        for text, key in [
            ('[checks]\nenabled = "size"\n', "checks.enabled"),
            ('[checks]\nenabled = ["size"]\n[checks.size]\nmax_size = 1\non_error = "ignore"\n', "checks.size.on_error"),
            ('[checks]\nenabled = []\ntimeout = 0\n', "checks.timeout"),
            ('[checks]\nenabled = []\nlevel = 3\n', "checks.level"),
        ]:
            e = self.assertRaises(ConfigError, self.load, text)
            self.assertEqual(e.key, key, text)


MESSAGE = b"From: x@remote.test\nX-Spam-Flag: YES\nSubject: buy\n\nbody\n"


class BuiltinChecks(unittest.TestCase):
    def setUp(self):
        self.session = CheckSession("192.0.2.1")
        self.envelope = Envelope("x@remote.test")

    def build(self, name, section):
        from mailplat import plugin

        return plugin.available("check")[name].from_config(section, None)

    def data(self, check, message=MESSAGE):
        return result(checks.run_stage([checks.EnabledCheck("t", check)], "data", self.session, self.envelope, BytesSource(message)))

    def test_size_refuses_a_big_message_at_end_of_data(self):
        check = self.build("size", {"max_size": 20})
        verdict = self.data(check)
        self.assertEqual((verdict.action, verdict.code, verdict.enhanced), ("reject", 552, "5.3.4"))
        self.assertEqual(self.data(check, b"Subject: x\n\nhi\n").action, Verdict.ACCEPT)

    def test_size_refuses_at_mail_when_size_is_announced(self):
        check = self.build("size", {"max_size": 20})
        self.session.size_hint = 21
        verdict = result(checks.run_stage([checks.EnabledCheck("t", check)], "mail", self.session, "x@remote.test"))
        self.assertEqual(verdict.code, 552)

    def test_size_needs_a_positive_max_size(self):
        self.assertRaises(ValueError, self.build, "size", {})
        self.assertRaises(ValueError, self.build, "size", {"max_size": 10, "other": 1})

    def test_header_files_a_flagged_message_into_junk(self):
        check = self.build("header", {"header": "X-Spam-Flag", "match": "^yes$"})
        verdict = self.data(check)
        self.assertEqual((verdict.action, verdict.folder_name), ("folder", "Junk"))

    def test_header_is_found_below_the_trace_headers(self):
        from mailplat.store.source import PrefixedSource

        check = self.build("header", {"header": "X-Spam-Flag", "match": "^yes$"})
        source = PrefixedSource(b"Received: from remote.test\n\tby mx.example.test\n", BytesSource(MESSAGE))
        verdict = result(checks.run_stage([checks.EnabledCheck("t", check)], "data", self.session, self.envelope, source))
        self.assertEqual(verdict.folder_name, "Junk")

    def test_header_leaves_other_messages_alone(self):
        check = self.build("header", {"header": "X-Spam-Flag", "match": "^yes$"})
        self.assertEqual(self.data(check, b"Subject: hi\nX-Spam-Flag: NO\n\nX-Spam-Flag: YES\n").action, Verdict.ACCEPT)

    def test_header_can_reject_or_tempfail(self):
        rejecting = self.build("header", {"header": "Subject", "match": "buy", "action": "reject", "text": "no ads"})
        self.assertEqual((self.data(rejecting).code, self.data(rejecting).text), (550, "no ads"))
        deferring = self.build("header", {"header": "Subject", "match": "buy", "action": "tempfail"})
        self.assertEqual(self.data(deferring).code, 451)

    def test_header_refuses_bad_settings(self):
        self.assertRaises(ValueError, self.build, "header", {})
        self.assertRaises(ValueError, self.build, "header", {"header": "X", "match": "("})
        self.assertRaises(ValueError, self.build, "header", {"header": "X", "action": "drop"})
