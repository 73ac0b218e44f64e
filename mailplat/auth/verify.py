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
import random
import time

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailplat.auth import arc_verify, dkim_verify, dmarc, results, spf
from mailplat.auth.dkim_sign import HEADER_LIMIT, _read_up_to, header_block
from mailplat.auth.lookups import AnswerCache, Lookups
from mailplat.interfaces import IDeliveryAgent, IDeliveryTransaction, IMessageSource, PermanentFailure, TemporaryFailure
from mailplat.store.source import Concatenated, PrefixedSource

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
    text = b" ".join(values[0]).decode("utf-8", "replace")
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
            dmarc.public_suffix_list()  # loaded now, not on the first message

    def policy_for(self, recipients):
        """
        The policy for a message: per recipient domain from `domains`, the
        mildest of them when recipients differ (one SMTP answer serves all:
        a domain that wants the mail gets it).
        """
        base = self.settings["policy"]
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
            head = header_block(_read_up_to(f, HEADER_LIMIT))
        domain, from_problem = author_domain(head)
        sender = envelope.sender or ""
        identity = ("mailfrom", sender) if sender else ("helo", envelope.helo)
        spf_domain = sender.rpartition("@")[2] if sender else envelope.helo
        if domain is not None:
            # The DMARC record does not depend on SPF or DKIM: ask for it now
            # (the answer waits in `lookups` for dmarc.evaluate).
            lookups.txt(f"_dmarc.{domain}").addErrback(lambda _: None)
        spf_d = spf.check(lookups, envelope.client_address, sender, envelope.helo, self.hostname)
        dkim_d = dkim_verify.verify(lookups, head, lambda: _read_all(_original(source)), size=_original(source).size)
        arc_d = arc_verify.verify(lookups, head, lambda: _read_all(_original(source)))
        checks = defer.gatherResults([spf_d, dkim_d], consumeErrors=True)
        try:
            spf_result, dkim_results = yield _within(checks, self._remaining(lookups), self.clock)
        except defer.TimeoutError:
            spf_result = spf.SPFResult("temperror", "DNS lookups took too long")
            signed = b"\ndkim-signature" in b"\n" + head.lower()
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


@implementer(IMessageSource)
class ReplacedHeaderSource:
    """A source whose first `skip` octets (its header) are replaced by `head`."""

    def __init__(self, head, source, skip):
        self.head = head
        self.source = source
        self.skip = skip
        self.size = len(head) + source.size - skip

    def open(self):
        f = self.source.open()
        left = self.skip
        while left:
            chunk = f.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        return Concatenated(self.head, f)


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
            log.info(
                "auth {sender} from {client}: spf={spf} dkim={dkim} dmarc={dmarc} action={action} ({ms:.1f} ms)",
                sender=self.envelope.sender,
                client=self.envelope.client_address,
                spf=verdict.spf.result,
                dkim=",".join(r.result for r in verdict.dkim) or "none",
                dmarc=verdict.dmarc.result,
                action=verdict.action,
                ms=verdict.elapsed * 1000,
            )
            if verdict.action == "reject":
                raise PermanentFailure(_reply_text(verdict.reason), "5.7.1", 550)
            if verdict.action == "defer":
                raise TemporaryFailure(_reply_text(verdict.reason + "; try again later"), "4.7.24" if verdict.spf.result == "temperror" else "4.7.0")
            if verdict.action == "quarantine" and not self.envelope.folder:
                self.envelope.folder = verifier.settings["junk_folder"]
            message = _with_header(source, verifier.header(verdict), verifier.hostname)
        result = yield self.inner.deliver(message)
        return result


def _reply_text(text):
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:400]


def _with_header(source, field, hostname):
    """Our field on top; any field claiming our authserv-id taken out (RFC 8601 5)."""
    with source.open() as f:
        head = header_block(_read_up_to(f, HEADER_LIMIT))
    spoofed = results.claiming(head, hostname)
    if not spoofed:
        return PrefixedSource(field, source) if field else source
    return ReplacedHeaderSource(field + results.without(head, spoofed), source, len(head))
