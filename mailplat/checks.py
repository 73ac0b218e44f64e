"""
Checks: filters on the SMTP stages (connect, HELO, MAIL, RCPT, end of
data), each a plugin providing ICheck, enabled in order by the config:

    [checks]
    enabled = ["size", "junk"]      # run in this order
    timeout = 30                    # seconds a check may take (default)

    [checks.junk]
    plugin = "header"               # which plugin; default: the name itself
    on_error = "tempfail"           # or "continue": a failing check is skipped
    header = "X-Spam-Flag"
    match = "^yes$"
    action = "folder"
    folder = "Junk"

The SMTP server calls L{run_stage} at each stage and answers with the
verdict it returns.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.calls import calling, client_text
from mailplat.interfaces import (
    CheckSession,
    ICheck,
    PermanentFailure,
    TemporaryFailure,
    Verdict,
)

log = Logger()

STAGES = ("connect", "helo", "mail", "rcpt", "data")
ON_ERROR = ("tempfail", "continue")
DEFAULT_TIMEOUT = 30

__all__ = [
    "Check", "CheckSession", "CheckUnavailable", "EnabledCheck", "Verdict", "STAGES", "load", "record_score", "run_stage",
]

SCORE_KINDS = ("spam", "virus")


def record_score(envelope, kind, score, threshold):
    """
    Note a filter's score on the envelope at end of data, so later stages
    (Sieve's spamtest/virustest, RFC 5235) use the filter's judgement
    rather than recomputing it. C{envelope.scores[kind]} is C{(score,
    threshold)}; a later check's score for the same kind replaces it.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r}; known: {', '.join(SCORE_KINDS)}")
    scores = getattr(envelope, "scores", None)
    if scores is None:
        scores = envelope.scores = {}
    scores[kind] = (float(score), float(threshold))


class CheckUnavailable(Exception):
    """
    Raised (or failed with) by a check whose service is down or did not
    answer in time (a DNS list, a scanner): logged in one line without a
    traceback, and the check's `on_error` decides, as for a timeout.
    """


@implementer(ICheck)
class Check:
    """A base for checks: no opinion at every stage; override the ones you need."""

    name = "check"

    def connect(self, session):
        return None

    def helo(self, session, hostname):
        return None

    def mail(self, session, sender):
        return None

    def rcpt(self, session, recipient):
        return None

    def data(self, session, envelope, source):
        return None


class EnabledCheck:
    """One configured check: the ICheck and how to treat its failures."""

    def __init__(self, name, check, timeout=DEFAULT_TIMEOUT, on_error="tempfail"):
        self.name = name
        self.check = check
        self.timeout = timeout
        self.on_error = on_error

    def __repr__(self):
        return f"<EnabledCheck {self.name}>"


def _config_error(config, key, problem):
    from mailplat.config import ConfigError

    return ConfigError(config.source, key, problem)


def load(config, context):
    """
    Build the checks `[checks] enabled` names, in order.

    @return: a list of L{EnabledCheck} (empty when there is no [checks]).
    @raise ConfigError: naming the key, for a bad table, an unknown or
        broken plugin, or a plugin refusing its section.
    """
    from mailplat import plugin

    table = config.raw.get("checks", {})
    if not isinstance(table, dict):
        raise _config_error(config, "checks", "must be a table")
    enabled = table.get("enabled", [])
    if not isinstance(enabled, list) or not all(isinstance(n, str) and n for n in enabled):
        raise _config_error(config, "checks.enabled", f'must be a list of check names, not {enabled!r}')
    default_timeout = _number(config, table, "timeout", "checks.timeout", DEFAULT_TIMEOUT)
    for key, value in table.items():
        if key not in ("enabled", "timeout") and not isinstance(value, dict):
            from mailplat.config import unknown

            dotted, problem = unknown("checks", key, ("enabled", "timeout"))
            raise _config_error(config, dotted, f"{problem} (or a [checks.<name>] table)")
    # A [checks.<name>] table that is not enabled is kept for later, but
    # still checked for misspelt keys when its plugin is installed.
    for name, section in table.items():
        if isinstance(section, dict) and name not in enabled:
            kind = section.get("plugin", name)
            found = plugin.find("check", kind) if isinstance(kind, str) else None
            if found is not None:
                rest = {k: v for k, v in section.items() if k not in ("plugin", "on_error", "timeout")}
                try:
                    plugin.check_section("check", found, rest, f"checks.{name}")
                except plugin.PluginError as e:
                    raise _config_error(config, None, str(e))
    checks = []
    for name in enabled:
        if enabled.count(name) > 1:
            raise _config_error(config, "checks.enabled", f"{name!r} is listed twice")
        section = dict(table.get(name, {}))
        key = f"checks.{name}"
        kind = section.pop("plugin", name)
        if not isinstance(kind, str):
            raise _config_error(config, f"{key}.plugin", f"must be a string, not {kind!r}")
        on_error = section.pop("on_error", "tempfail")
        if on_error not in ON_ERROR:
            raise _config_error(config, f"{key}.on_error", f"must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
        timeout = _number(config, section, "timeout", f"{key}.timeout", default_timeout)
        section.pop("timeout", None)
        try:
            check = plugin.build("check", kind, section, context, key=key, table=key)
        except plugin.PluginError as e:
            raise _config_error(config, None, str(e))
        checks.append(EnabledCheck(name, check, timeout, on_error))
    return checks


def _number(config, table, name, key, default):
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _config_error(config, key, f"must be a positive number of seconds, not {value!r}")
    return value


def _call(enabled, stage, session, args, clock):
    """One check's verdict for a stage, as a Deferred (never failing)."""
    method = getattr(enabled.check, stage)
    if getattr(method, "__func__", None) is getattr(Check, stage):
        # Check's own "no opinion", not overridden: no call, no timer (~50 us a stage).
        return defer.succeed(Verdict.next())
    # Every exception goes on to `failed`, which knows the check's on_error.
    d = calling(Exception)(method, session, *args)
    if clock is None:
        from twisted.internet import reactor as clock
    d.addTimeout(enabled.timeout, clock)

    def judged(verdict):
        if verdict is None:
            return Verdict.next()
        if not isinstance(verdict, Verdict):
            raise TypeError(f"returned {verdict!r}, not a Verdict or None")
        return verdict

    def failed(failure):
        # A Verdict's text is for the client; a raised failure's only when public.
        if failure.check(PermanentFailure):
            e = failure.value
            if e.public is False:
                log.info("check {name} at {stage}: {text}", name=enabled.name, stage=stage, text=e.text)
            return Verdict(Verdict.REJECT, e.code, e.enhanced, client_text(e))
        if failure.check(TemporaryFailure):
            e = failure.value
            if e.public is False:
                log.info("check {name} at {stage}: {text}", name=enabled.name, stage=stage, text=e.text)
            return Verdict(Verdict.TEMPFAIL, 451, e.enhanced, client_text(e))
        if failure.check(CheckUnavailable):
            # A service the check needs is down or slow: one line, no traceback.
            log.warn("check {name} unavailable at {stage}: {why}", name=enabled.name, stage=stage,
                     why=failure.getErrorMessage())
        elif failure.check(defer.TimeoutError):
            log.error("check {name} took more than {t}s at {stage}", name=enabled.name, t=enabled.timeout, stage=stage)
        else:
            log.failure("check {name} failed at {stage}", failure, name=enabled.name, stage=stage)
        if enabled.on_error == "continue":
            return Verdict.next()
        return Verdict.tempfail("temporary failure checking your message", 451, "4.7.1")

    return d.addCallback(judged).addErrback(failed)


@defer.inlineCallbacks
def run_stage(checks, stage, session, *args, clock=None):
    """
    Run every enabled check's method for `stage`, in order.

    @param checks: the list from L{load}.
    @param stage: one of L{STAGES}.
    @param session: the session's L{CheckSession}.
    @param args: the stage's arguments: helo (hostname), mail (sender),
        rcpt (recipient), data (envelope, source); none for connect.
    @return: Deferred firing with the deciding L{Verdict} (never failing):
        the first reject or tempfail, else a folder verdict if a check gave
        one, else accept. C{verdict.check} names the check that decided.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown check stage {stage!r}; known: {', '.join(STAGES)}")
    folder = None
    for enabled in checks:
        verdict = yield _call(enabled, stage, session, args, clock)
        verdict.check = enabled.name
        if verdict.refused:
            log.info(
                "check {name} at {stage}: {code} {text} (client {client})",
                name=enabled.name,
                stage=stage,
                code=verdict.code,
                text=verdict.text,
                client=session.client_address,
            )
            return verdict
        if verdict.action == Verdict.ACCEPT:
            return folder or verdict
        if verdict.action == Verdict.FOLDER and folder is None:
            folder = verdict
    return folder or Verdict.accept()
