"""
Inbound mail authentication on the MX port: SPF (mailplat.auth.spf), DKIM
(mailplat.auth.dkim_verify), DMARC (mailplat.auth.dmarc) and ARC
(mailplat.auth.arc_verify), one Authentication-Results field
(mailplat.auth.results) at the top of the message, and the policy of
`[authentication]` on the outcome.

L{VerifyingDelivery} wraps the delivery agent of the MX listener, as
L{mailplat.auth.dkim_sign.SigningDelivery} wraps that of submission: at
the end of data, before the message is delivered, it runs the checks and
then either hands the message on (with the header; to the Junk folder for
a quarantine) or fails with the SMTP answer (550 5.7.1 for a DMARC
reject, 451 4.7.x for a temporary DNS failure when `temperror = "defer"`),
so the verdict is known before the reply to the end of data.

A message from an authenticated client is handed on untouched (a user's
own mail is not checked against itself).
"""

import email.utils
import functools
import random
import time

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailplat.auth import arc_verify, dkim_fast, dkim_verify, dmarc, results, spf
from mailplat.auth.dkim_sign import header_block, read_header
from mailplat.auth.lookups import AnswerCache, Lookups
from mailplat.interfaces import IDeliveryAgent, IDeliveryTransaction, PermanentFailure, TemporaryFailure
from mailplat.store.source import PrefixedSource, ReplacedHeaderSource

log = Logger()

ACTIONS = ("none", "quarantine", "reject")  # mildest first
TEMPERROR_ACTIONS = ("accept", "defer")
POLICY_KEYS = ("dmarc_reject", "dmarc_quarantine", "spf_fail", "temperror")
DEFAULT_POLICY = {
    "dmarc_reject": "reject",  # DMARC fail under p=reject: 550 5.7.1
    "dmarc_quarantine": "quarantine",  # DMARC fail under p=quarantine: the Junk folder
    "spf_fail": "none",  # SPF fail when the From domain has no DMARC record: the header only
    "temperror": "accept",  # a DNS failure: delivered, temperror in the header
}


def default_settings():
    return {"verify": True, "timeout": 20, "junk_folder": "Junk", "policy": dict(DEFAULT_POLICY), "domains": {}}


def author_domain(header):
    """
    (the From address's domain, problem): RFC 7489 6.6.1 wants exactly one
    From field; several, or addresses of different domains, are a permerror.
    """
    values, current = [], None
    for line in header.split(b"\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        current = None
        if line.split(b":", 1)[0].strip().lower() == b"from" and b":" in line:
            current = [line.split(b":", 1)[1]]
            values.append(current)
    if not values:
        return None, "no From field"
    if len(values) > 1:
        return None, "more than one From field"
    return _from_value_domain(b" ".join(values[0]))


@functools.lru_cache(maxsize=4096)
def _from_value_domain(value):
    # A pure function of the From field's value (~40 us of email.utils and
    # IDNA): the same sender's From comes again and again.
    text = value.decode("utf-8", "replace")
    domains = {a.rpartition("@")[2].strip().rstrip(".").lower() for _, a in email.utils.getaddresses([text]) if "@" in a}
    if len(domains) != 1:
        return None, "no single From domain"
    domain = domains.pop()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None, "From domain is not a domain name"
    if not spf.valid_domain(domain) or any(c in domain for c in " ;()\"\\"):
        return None, "From domain is not a domain name"
    return domain, None


class Verdict:
    """The outcome of the checks for one message."""

    def __init__(self, spf_result, spf_identity, dkim_results, dmarc_result, from_problem=None):
        self.spf = spf_result
        self.spf_identity = spf_identity  # ("mailfrom", address) or ("helo", name)
        self.dkim = dkim_results
        self.dmarc = dmarc_result
        self.from_problem = from_problem
        self.arc = arc_verify.ARCResult("none")
        self.action = "none"  # none, quarantine, reject, defer
        self.reason = ""
        self.elapsed = 0.0
        self.head = None  # the header block checked (bytes), so it is read once

    def clean(self):
        """Nothing failed and nothing is done about it: every result pass or none, no action."""
        results = [self.spf.result, self.dmarc.result, self.arc.result] + [r.result for r in self.dkim]
        return self.action == "none" and all(r in ("pass", "none") for r in results)

    def clauses(self):
        kind, identity = self.spf_identity
        out = [
            results.result_clause(
                "spf",
                self.spf.result,
                self.spf.reason if self.spf.result not in ("pass", "none") else "",
                [("smtp.mailfrom" if kind == "mailfrom" else "smtp.helo", identity)],
            )
        ]
        if not self.dkim:
            out.append("dkim=none")
        for r in self.dkim:
            out.append(
                results.result_clause(
                    "dkim", r.result, r.reason, [("header.d", r.domain), ("header.s", r.selector)]
                )
            )
        d = self.dmarc
        note = d.reason if d.result != "pass" else ""
        if d.record is not None:
            note = f"p={d.record.p} sp={d.record.sp} dis={self.action if self.action != 'defer' else 'none'}" + (
                f"; {note}" if note and d.result != "fail" else ""
            )
        out.append(results.result_clause("dmarc", d.result, note, [("header.from", d.domain)]))
        if self.arc.instances or self.arc.result != "none":
            arc_note = f"i={self.arc.instances}" + (f"; {self.arc.reason}" if self.arc.result != "pass" and self.arc.reason else "")
            out.append(results.result_clause("arc", self.arc.result, arc_note))
        return out


class Verifier:
    """
    The checks and the policy of `[authentication]`, for every MX message.

    @param resolver: the server's resolver (mailplat.dns.SharedResolver).
    @param settings: the checked `[authentication]` table (mailplat.config._authentication).
    @param hostname: our authserv-id (`[server] hostname`).
    """

    def __init__(self, resolver, settings, hostname, clock=reactor):
        self.resolver = resolver
        self.settings = settings or default_settings()
        self.enabled = self.settings["verify"]
        self.hostname = hostname
        self.clock = clock
        self.random = random.random  # the draw for pct= (RFC 7489 6.6.4); tests replace it
        self.cache = AnswerCache(clock)  # DNS answers for their TTL, across messages
        if self.enabled:
            # Loaded now, not on the first message (~0.3 s each).
            dmarc.public_suffix_list()
            dkim_fast.install()

    def policy_for(self, recipients):
        """
        The policy for a message: per recipient domain from `domains`, the
        mildest of them when recipients differ (one SMTP answer serves all:
        a domain that wants the mail gets it).
        """
        base = self.settings["policy"]
        if not self.settings["domains"]:
            return base  # no per-domain policy: the same for every recipient
        chosen = [self.settings["domains"].get(r.rpartition("@")[2].lower(), {}) for r in recipients] or [{}]
        policy = {}
        for key in POLICY_KEYS:
            values = [{**base, **c}[key] for c in chosen]
            order = TEMPERROR_ACTIONS if key == "temperror" else ACTIONS
            policy[key] = min(values, key=order.index)
        return policy

    @defer.inlineCallbacks
    def check(self, envelope, source, recipients=()):
        """
        A Deferred firing with the L{Verdict} for one message (never fails).

        @param recipients: the accepted RCPT addresses (their domains choose the policy).
        """
        started = time.perf_counter()
        lookups = Lookups(self.resolver, deadline=self.settings["timeout"], clock=self.clock, cache=self.cache)
        with source.open() as f:
            head = header_block(read_header(f))
        domain, from_problem = author_domain(head)
        sender = envelope.sender or ""
        identity = ("mailfrom", sender) if sender else ("helo", envelope.helo)
        spf_domain = sender.rpartition("@")[2] if sender else envelope.helo
        if domain is not None:
            # The DMARC record does not depend on SPF or DKIM: ask for it now
            # (the answer waits in `lookups` for dmarc.evaluate).
            lookups.txt(f"_dmarc.{domain}").addErrback(lambda _: None)
        spf_d = spf.check(lookups, envelope.client_address, sender, envelope.helo, self.hostname)
        lowered = head.lower()
        # An unsigned (unsealed) message has nothing for dkimpy: the modules
        # would answer [] (none) after the same test.
        if b"dkim-signature" in lowered:
            dkim_d = dkim_verify.verify(lookups, head, lambda: _read_all(_original(source)), size=_original(source).size)
        else:
            dkim_d = defer.succeed([])
        if b"arc-" in lowered:
            arc_d = arc_verify.verify(lookups, head, lambda: _read_all(_original(source)))
        else:
            arc_d = defer.succeed(arc_verify.ARCResult("none"))
        # SPF and DKIM have one time limit together (they run side by side).
        until = self.clock.seconds() + self._remaining(lookups)
        try:
            spf_result = yield _within(spf_d, until - self.clock.seconds(), self.clock)
            dkim_results = yield _within(dkim_d, max(0.0, until - self.clock.seconds()), self.clock)
        except defer.TimeoutError:
            spf_result = spf.SPFResult("temperror", "DNS lookups took too long")
            signed = b"\ndkim-signature" in b"\n" + lowered
            dkim_results = [dkim_verify.DKIMResult("temperror", reason="DNS lookups took too long")] if signed else []
        if domain is None:
            result = "permerror" if from_problem != "no From field" else "none"
            dmarc_result = dmarc.DMARCResult(result, reason=from_problem)
        else:
            try:
                dmarc_result = yield _within(
                    dmarc.evaluate(lookups, domain, spf_result.result, spf_domain, dkim_results),
                    self._remaining(lookups),
                    self.clock,
                )
            except defer.TimeoutError:
                dmarc_result = dmarc.DMARCResult("temperror", domain, reason="DNS lookups took too long")
        verdict = Verdict(spf_result, identity, dkim_results, dmarc_result, from_problem)
        verdict.head = head
        try:
            verdict.arc = yield _within(arc_d, self._remaining(lookups), self.clock)
        except defer.TimeoutError:
            verdict.arc = arc_verify.ARCResult("temperror", reason="DNS lookups took too long")
        except Exception:
            log.failure("ARC verification failed")
            verdict.arc = arc_verify.ARCResult("temperror", reason="internal error")
        self._decide(verdict, self.policy_for(recipients))
        verdict.elapsed = time.perf_counter() - started
        return verdict

    def _remaining(self, lookups):
        return max(0.0, lookups.deadline - self.clock.seconds()) + 0.05

    def _decide(self, verdict, policy):
        d = verdict.dmarc
        if d.result == "fail":
            applied = dmarc.applied_policy(d, self.random())
            if applied != "none":
                verdict.action = policy[f"dmarc_{applied}"]
                verdict.reason = f"DMARC policy of {d.domain} (p={applied}): {d.reason}"
        elif d.result in ("none", "permerror") and verdict.spf.result == "fail":
            verdict.action = policy["spf_fail"]
            verdict.reason = f"SPF fail for {verdict.spf_identity[1]}"
            if verdict.spf.explanation:
                verdict.reason += f": {verdict.spf.explanation}"
        temporary = d.result == "temperror" or verdict.spf.result == "temperror"
        if verdict.action == "none" and temporary and d.result != "pass" and policy["temperror"] == "defer":
            verdict.action = "defer"
            verdict.reason = "temporary DNS failure in the SPF/DKIM/DMARC checks"

    def header(self, verdict):
        return results.header(self.hostname, verdict.clauses())


def _original(source):
    # The MX prefixes our Received field (mailplat.smtp.transaction); DKIM
    # verifies the message as the client sent it.
    return source.source if isinstance(source, PrefixedSource) else source


def _read_all(source):
    with source.open() as f:
        return f.read()


def _within(d, seconds, clock):
    """`d`, or a TimeoutError after `seconds` (the work goes on, its result unused)."""
    if d.called and not d.paused:
        return d  # answered already (from the cache, the usual case): no timer to set and cancel
    out = defer.Deferred()
    timer = clock.callLater(seconds, lambda: out.called or out.errback(defer.TimeoutError()))

    def done(result):
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(result) if not isinstance(result, Failure) else out.errback(result)
        return None

    d.addBoth(done)
    return out


@implementer(IDeliveryAgent)
class VerifyingDelivery:
    """A delivery agent that checks each MX message, then hands it to `inner` (or refuses it)."""

    def __init__(self, inner, verifier):
        self.inner = inner
        self.verifier = verifier

    def start(self, envelope):
        d = defer.maybeDeferred(self.inner.start, envelope)
        return d.addCallback(lambda transaction: VerifyingTransaction(self.verifier, envelope, transaction))


@implementer(IDeliveryTransaction)
class VerifyingTransaction:
    def __init__(self, verifier, envelope, inner):
        self.verifier = verifier
        self.envelope = envelope
        self.inner = inner
        self.recipients = []

    def add_recipient(self, address):
        d = defer.maybeDeferred(self.inner.add_recipient, address)

        def added(result):
            self.recipients.append(address)
            return result

        return d.addCallback(added)

    def abort(self):
        return self.inner.abort()

    @defer.inlineCallbacks
    def deliver(self, source):
        verifier = self.verifier
        if self.envelope.authenticated_as:
            result = yield self.inner.deliver(source)
            return result
        if not verifier.enabled:
            # No checks, but still no forged results under our name (RFC 8601 5).
            result = yield self.inner.deliver(_with_header(source, b"", verifier.hostname))
            return result
        try:
            verdict = yield verifier.check(self.envelope, source, self.recipients)
        except Exception:
            log.failure("mail authentication checks failed; delivered without a verdict")
            verdict = None
        message = source
        if verdict is not None:
            if not verdict.clean():
                # A line for what an operator may look into; a message that
                # passed (or had nothing to check) has its verdict in its
                # header only: this line cost more than the checks did.
                dkim_results = ",".join(r.result for r in verdict.dkim) or "none"
                log.info(
                    "{auth_line}",
                    auth_line=f"auth {self.envelope.sender} from {self.envelope.client_address}: "
                    f"spf={verdict.spf.result} dkim={dkim_results} dmarc={verdict.dmarc.result} "
                    f"action={verdict.action} ({verdict.elapsed * 1000:.1f} ms)",
                )
            if verdict.action == "reject":
                raise PermanentFailure(_reply_text(verdict.reason), "5.7.1", 550)
            if verdict.action == "defer":
                raise TemporaryFailure(_reply_text(verdict.reason + "; try again later"), "4.7.24" if verdict.spf.result == "temperror" else "4.7.0")
            if verdict.action == "quarantine" and not self.envelope.folder:
                self.envelope.folder = verifier.settings["junk_folder"]
            message = _with_header(source, verifier.header(verdict), verifier.hostname, verdict.head)
        result = yield self.inner.deliver(message)
        return result


def _reply_text(text):
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:400]


def _with_header(source, field, hostname, head=None):
    """
    Our field on top; any field claiming our authserv-id taken out (RFC 8601 5).

    @param head: the header block of `source`, when it has been read already.
    """
    if head is None:
        with source.open() as f:
            head = header_block(read_header(f))
    spoofed = results.claiming(head, hostname)
    if not spoofed:
        return PrefixedSource(field, source) if field else source
    return ReplacedHeaderSource(field + results.without(head, spoofed), source, len(head))
