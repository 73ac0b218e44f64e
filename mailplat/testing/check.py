"""
CheckConformance: what every SMTP check plugin must do for the server to
call it safely at each stage (ICheck): answer every stage with a Verdict,
None or a Deferred of one; never block the reactor; use valid reply codes;
keep per-session memory in the session, not in the check; and give the
verdicts its author promises for the cases the author lists.
"""

import time

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mailplat.calls import calling
from mailplat.checks import STAGES, EnabledCheck, run_stage
from mailplat.interfaces import CheckSession, Envelope, ICheck, Verdict
from mailplat.store.source import BytesSource
from mailplat.testing.blocking import blocked_message, timed_call

# A stage's synchronous part may not hold the reactor longer than this.
BLOCKING_LIMIT = 0.05

ORDINARY_MESSAGE = b"From: a@remote.test\nTo: b@example.test\nSubject: hello\n\nA short, ordinary message.\n"


def stage_arguments(stage, message=ORDINARY_MESSAGE):
    """Typical arguments for one stage, after the session."""
    return {
        "connect": (),
        "helo": ("client.remote.test",),
        "mail": ("a@remote.test",),
        "rcpt": ("b@example.test",),
        "data": (Envelope("a@remote.test", helo="client.remote.test"), BytesSource(message)),
    }[stage]


class CheckConformance:
    """
    Mix into a twisted.trial.unittest.TestCase and implement:

      - C{make_check()}: the check under test (an ICheck), built as its
        plugin would build it from a config section.

    and optionally set C{cases}: a list of C{(stage, args, expected)} where
    C{args} are the stage's arguments after the session (see
    L{stage_arguments}) and C{expected} one of C{Verdict.NEXT},
    C{ACCEPT}, C{REJECT}, C{TEMPFAIL}, C{FOLDER}: the verdict the check
    promises, checked through the same runner the server uses (NEXT,
    "no opinion", is checked on the check's own answer: the runner turns
    it into ACCEPT when no check is left).
    """

    cases = ()

    def _session(self):
        return CheckSession("192.0.2.1", policy="mx", secure=False)

    def _call(self, stage, *args):
        check = self.make_check()
        session = self._session()
        started = time.perf_counter()
        result = getattr(check, stage)(session, *args)
        spent = time.perf_counter() - started
        return check, session, result, spent

    def test_provides_the_check_interface(self):
        check = self.make_check()
        verifyObject(ICheck, check)
        self.assertIsInstance(check.name, str)
        self.assertTrue(check.name)

    @defer.inlineCallbacks
    def test_every_stage_answers_a_verdict_or_none(self):
        for stage in STAGES:
            _, _, result, _ = self._call(stage, *stage_arguments(stage))
            verdict = yield defer.maybeDeferred(lambda: result)
            self.assertTrue(
                verdict is None or isinstance(verdict, Verdict),
                f"{stage} answered {verdict!r}, not a Verdict or None",
            )

    @defer.inlineCallbacks
    def test_no_stage_blocks_the_reactor(self):
        """The call and, for an async def stage, each step of its coroutine."""
        for stage in STAGES:
            check = self.make_check()
            d, spent = timed_call(getattr(check, stage), self._session(), *stage_arguments(stage))
            yield d.addErrback(lambda f: None)
            problem = blocked_message(stage, spent, BLOCKING_LIMIT)
            if problem:
                self.fail(problem)

    @defer.inlineCallbacks
    def test_refusals_use_codes_of_their_kind(self):
        for stage in STAGES:
            _, _, result, _ = self._call(stage, *stage_arguments(stage))
            verdict = yield defer.maybeDeferred(lambda: result)
            if verdict is None:
                continue
            if verdict.action == Verdict.REJECT:
                self.assertTrue(500 <= verdict.code <= 599 and verdict.enhanced.startswith("5."),
                                f"{stage}: a reject needs a 5xx code and a 5.x.x status, not {verdict.code} "
                                f"{verdict.enhanced}")
            elif verdict.action == Verdict.TEMPFAIL:
                self.assertTrue(400 <= verdict.code <= 499 and verdict.enhanced.startswith("4."),
                                f"{stage}: a tempfail needs a 4xx code and a 4.x.x status, not {verdict.code} "
                                f"{verdict.enhanced}")
            elif verdict.action == Verdict.FOLDER:
                self.assertTrue(verdict.folder_name, f"{stage}: a folder verdict names no folder")

    @defer.inlineCallbacks
    def test_two_sessions_do_not_share_state(self):
        """A check object serves every session at once: what it learns of one
        session lives in that session (CheckSession.state), not in the check."""
        check = self.make_check()
        first, second = self._session(), self._session()
        for stage in STAGES[:-1]:
            yield defer.maybeDeferred(getattr(check, stage), first, *stage_arguments(stage))
        verdicts = []
        for session in (first, second):
            verdicts.append((yield defer.maybeDeferred(check.data, session, *stage_arguments("data"))))
        fresh = yield defer.maybeDeferred(self.make_check().data, self._session(), *stage_arguments("data"))
        action = lambda v: None if v is None else v.action  # noqa: E731
        self.assertEqual(action(verdicts[1]), action(fresh), "a second session saw the first one's state")

    @defer.inlineCallbacks
    def test_promised_verdicts_through_the_server_runner(self):
        for stage, args, expected in self.cases:
            if expected == Verdict.NEXT:
                # "No opinion": the runner goes on to the next check, and
                # with none left answers ACCEPT, so ask the check itself.
                verdict = yield calling(Exception)(getattr(self.make_check(), stage), self._session(), *args)
                self.assertTrue(
                    verdict is None or verdict.action == Verdict.NEXT,
                    f"{stage}{args!r}: promised no opinion (NEXT), answered {verdict!r}",
                )
                continue
            enabled = [EnabledCheck(getattr(self.make_check(), "name", "check"), self.make_check())]
            verdict = yield run_stage(enabled, stage, self._session(), *args)
            self.assertEqual(verdict.action, expected, f"{stage}{args!r}: promised {expected}, the server acts on "
                                                       f"{verdict!r}")
