"""
Local delivery: each recipient is a final mailbox address (aliases were
expanded by the fan-out before it): a user, with an optional plus tag naming
a folder, or postmaster@. The message goes into each mailbox once, with a
Return-Path header on top (RFC 5321 4.4: added at final delivery).

All or nothing: if any recipient's copy cannot be written, the copies
already written are taken back and the whole transaction fails with a
temporary error, so the client retries and no recipient loses mail.

Quotas (a store providing IQuotaStore, mailplat.quota): a recipient whose
mailbox is full is refused at RCPT (452 4.2.2; 552 5.2.2 when MAIL FROM's
SIZE= can never fit). At end of data every recipient is checked before any
copy is written: when none can take the message the transaction fails with
the quota's answer; when only some can't and the fan-out has a relay queue
(`set_aside_allowed`), those are set aside (`set_aside`) for the queue to
retry (4.2.2) or bounce (5.2.2), and the others get their copy; without a
queue the whole message is deferred (452), since one SMTP reply covers all.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import (
    DeliveryOutcome,
    Envelope,
    IDeliveryAgent,
    IDeliveryTransaction,
    IFolderStore,
    IQuotaStore,
    OverQuota,
    PermanentFailure,
    QuotaExceeded,
    TemporaryFailure,
)
from mailplat.calls import call_backend
from mailplat.store.source import BytesSource, PrefixedSource

log = Logger()


def return_path(sender):
    return f"Return-Path: <{sender}>\n".encode("utf-8")


@implementer(IDeliveryAgent)
class LocalDelivery:
    """Deliver to the mailboxes `resolver` names, through `store`."""

    sieve = None  # a L{mailplat.sieve.filter.SieveFilter} when [sieve] is on (set by the service)
    outbound = None  # the relay queue, for what Sieve scripts send (redirect, vacation)
    sender_lists = None  # mailplat.spam.lists.SenderLists: the users' allow/block lists (set by the service)

    def __init__(self, resolver, store):
        self.resolver = resolver
        self.store = store

    def start(self, envelope):
        return LocalTransaction(self, envelope)


@implementer(IDeliveryTransaction)
class LocalTransaction:
    def __init__(self, agent, envelope):
        self.agent = agent
        self.envelope = envelope
        self.recipients = []  # (canonical address, folder or None), no duplicates
        self.outcomes = []  # DeliveryOutcome per recipient, after deliver
        self.given = {}  # (address, folder) -> the address as given, for set_aside
        self.set_aside_allowed = False  # the fan-out has a queue for recipients over quota
        self.rcpt_quota_check = True  # refuse a full mailbox at RCPT (the fan-out: not an alias's members)
        self.set_aside = []  # addresses (as given) over quota at end of data, for the queue
        self._aside_outcomes = []
        self._discarded = []  # recipients whose Sieve script discarded the message

    def add_recipient(self, address):
        d = self.agent.resolver.mailbox(address)

        def found(mailbox):
            quota = IQuotaStore(self.agent.store, None)
            if quota is None or not self.rcpt_quota_check:
                return keep(mailbox)
            # RFC 1870 6.1, RFC 3463 4.2.2 / 5.2.2: a full mailbox, or one
            # MAIL FROM's SIZE= can never fit, is refused here, per recipient.
            size = getattr(self.envelope, "size_hint", None)
            return call_backend(quota.check_quota, mailbox[0], size).addCallback(lambda _: keep(mailbox))

        def keep(mailbox):
            if mailbox not in self.recipients:
                self.recipients.append(mailbox)
                self.given[mailbox] = address

        return d.addCallback(found)

    def deliver(self, source):
        if not self.recipients:
            return defer.fail(PermanentFailure("no valid recipients", "5.5.1", 554))
        prefixed = PrefixedSource(return_path(self.envelope.sender), source)
        quota = IQuotaStore(self.agent.store, None)
        if quota is None:
            return self._write(prefixed)
        checks = [call_backend(quota.check_quota, address, prefixed.size) for address, _ in self.recipients]
        return defer.DeferredList(checks, consumeErrors=True).addCallback(self._sort_out, prefixed)

    def _sort_out(self, results, prefixed):
        """Before any copy is written: the recipients whose mailbox can't take the message."""
        for ok, value in results:
            if not ok and not value.check(QuotaExceeded):
                return value  # the realm can't say: the whole message waits
        over = {r: value.value for r, (ok, value) in zip(self.recipients, results) if not ok}
        prefixed.quota_checked = True  # the store need not check again (mailplat.quota)
        if not over:
            return self._write(prefixed)
        chosen = getattr(self.envelope, "folder", None)
        if len(over) < len(self.recipients) and self.set_aside_allowed:
            self.set_aside = [self.given.get(r, r[0]) for r in self.recipients if r in over]
            self._aside_outcomes = [
                DeliveryOutcome(r[0], chosen or r[1] or "INBOX", over[r]) for r in self.recipients if r in over
            ]
            self.recipients = [r for r in self.recipients if r not in over]
            return self._write(prefixed).addBoth(self._with_aside)
        everyone = len(over) == len(self.recipients)
        temporary = [e for e in over.values() if not isinstance(e, PermanentFailure)]
        if everyone:
            # 552 5.2.2 when it can never fit anywhere, else 452 4.2.2.
            reason = temporary[0] if temporary else next(iter(over.values()))
        else:
            # Some could take it, but one reply covers all and no queue can hold the rest.
            reason = OverQuota("mailbox full: " + ", ".join(r[0] for r in over))
        self.outcomes = [
            DeliveryOutcome(r[0], chosen or r[1] or "INBOX", over.get(r, reason)) for r in self.recipients
        ]
        return defer.fail(reason)

    def _with_aside(self, result):
        self.outcomes = list(self.outcomes) + self._aside_outcomes
        return result

    def _write(self, prefixed):
        # A check's folder (Junk) wins over a plus tag's.
        chosen = getattr(self.envelope, "folder", None)
        # The folder asked for; a store without it files into INBOX. The
        # user's allow list overrides a check's Junk (mailplat.spam.lists).
        lists = self.agent.sender_lists
        if lists is None:
            defaults = [chosen or folder or "INBOX" for _, folder in self.recipients]
        else:
            from mailplat.spam.lists import folder_for

            defaults = [folder_for(lists, address, self.envelope.sender, chosen, folder or "INBOX")
                        for address, folder in self.recipients]
        sieve = self.agent.sieve
        if sieve is None:
            return self._write_copies([(r[0], f, prefixed) for r, f in zip(self.recipients, defaults)])
        # Each recipient's active Sieve script says where its copies go
        # (mailplat.sieve.filter); the default folder is the script's keep.
        decisions = [
            sieve.decide(address, self.envelope.sender, prefixed, default, getattr(self.envelope, "scores", None))
            .addErrback(self._sieve_failed, address, default)
            for (address, _), default in zip(self.recipients, defaults)
        ]

        def write(done):
            refused = [d.reject for d in done if d.reject is not None]
            if refused and len(self.recipients) == 1:
                # RFC 5429 2.1: reject at SMTP time, the reason in the reply.
                return defer.fail(
                    PermanentFailure("rejected by the recipient's filter: " + _one_line(refused[0]), "5.7.1", 550, public=True)
                )
            outbound = self._sieve_outbound(prefixed, done, defaults)
            copies = [
                (r[0], folder, decision.source(prefixed), flags)  # editheader's changes go into the copies
                for r, decision in zip(self.recipients, done)
                for folder, flags in decision.folders
            ]
            self._discarded = [r[0] for r, decision in zip(self.recipients, done) if not decision.folders]
            if not outbound:
                return self._write_copies(copies)
            return self._queue_then_write(outbound, copies)

        return defer.gatherResults(decisions).addCallback(write)

    def _sieve_outbound(self, prefixed, decisions, defaults):
        """[(envelope, recipients, source)] the scripts send: redirects, vacation replies, reject notices."""
        from mailplat.sieve.filter import reject_notice

        relay = self.agent.outbound
        out = []
        for (address, _), decision, default in zip(self.recipients, decisions, defaults):
            wants = decision.redirects or decision.reply is not None or decision.reject is not None
            if wants and relay is None:
                log.warn("sieve: {user}: no relay queue ([relay] is off): redirect, vacation and reject notices "
                         "are not sent; the message is kept", user=address)
                if not decision.folders:
                    decision.folders = [(default, ())]
                continue
            if decision.reject is not None:
                # Several recipients share one reply: this one's copy is refused and the sender told.
                decision.folders = []
                if self.envelope.sender:
                    notice = reject_notice(prefixed.source, address, self.envelope.sender, decision.reject, self.envelope.received_by)
                    out.append((Envelope(sender="", received_by=self.envelope.received_by), [self.envelope.sender], notice))
            for target in decision.redirects:
                # RFC 5228 4.2: sent on as received, from the user (so SPF holds for our
                # domain and bounces reach the user); Delivered-To stops loops.
                source = decision.redirect_source(prefixed, f"Delivered-To: {address}\n".encode("utf-8"))
                out.append((Envelope(sender=address, received_by=self.envelope.received_by), [target], source))
            if decision.reply is not None and self.envelope.sender:
                # RFC 5230 5: the reply goes with the null envelope sender.
                out.append((Envelope(sender="", received_by=self.envelope.received_by), [self.envelope.sender], BytesSource(decision.reply)))
        return out

    @defer.inlineCallbacks
    def _queue_then_write(self, outbound, copies):
        """Queue what the scripts send, then write the copies; a failure takes the queued ones back."""
        relay, queued = self.agent.outbound, []
        try:
            for envelope, recipients, source in outbound:
                queued.append((yield call_backend(relay.enqueue, envelope, recipients, source)))
            result = yield self._write_copies(copies)
        except BaseException:
            for queue_id in queued:
                try:
                    yield call_backend(relay.cancel, queue_id)
                except Exception:
                    log.failure("sieve: cannot take back queued message {id}", id=queue_id)
            raise
        return result

    def _sieve_failed(self, failure, address, default):
        from mailplat.sieve.filter import Decision

        log.failure("sieve: {user}: the filter failed; the message is kept", failure, user=address)
        return Decision([(default, ())])

    def _write_copies(self, copies):
        """One store.deliver per (address, folder, source[, flags]) copy, all or nothing (L{_settle})."""
        results = [
            _deliver(self.agent.store, address, source, None if folder == "INBOX" else folder, *flags)
            for address, folder, source, *flags in copies
        ]
        return defer.DeferredList(results, consumeErrors=True).addCallback(self._settle, [c[:2] for c in copies])

    def _settle(self, results, copies):
        discarded = [DeliveryOutcome(addr, "(discarded by the recipient's Sieve script)") for addr in self._discarded]
        failures = [r for ok, r in results if not ok]
        if not failures:
            self.outcomes = [DeliveryOutcome(addr, folder) for addr, folder in copies] + discarded
            return [key for _, key in results]
        delivered = [(addr, folder, key) for (addr, folder), (ok, key) in zip(copies, results) if ok]
        for failure in failures:
            log.failure("local delivery failed", failure)
        undo = [self._take_back(addr, folder, key) for addr, folder, key in delivered]
        first = failures[0]
        temporary = [f for f in failures if not f.check(PermanentFailure)]
        reason = (temporary or [first])[0].value
        if not isinstance(reason, (TemporaryFailure, PermanentFailure)):
            reason = TemporaryFailure("local delivery failed")
        # All or nothing: a copy taken back is deferred like the one that failed.
        text = f"copy taken back: another recipient's failed ({reason.text})"
        if isinstance(reason, PermanentFailure):
            taken_back = PermanentFailure(text, reason.enhanced, reason.code)
        else:
            taken_back = TemporaryFailure(text, reason.enhanced)
        self.outcomes = [
            DeliveryOutcome(addr, folder, taken_back if ok else _reason(value))
            for (addr, folder), (ok, value) in zip(copies, results)
        ]
        return defer.DeferredList(undo, consumeErrors=True).addCallback(lambda _: defer.fail(reason))

    def _take_back(self, address, folder, key):
        store = self.agent.store
        if folder != "INBOX" and IFolderStore.providedBy(store):
            # A copy Sieve (or a plus tag) filed elsewhere is taken back from there.
            d = call_backend(store.account, address).addCallback(lambda account: call_backend(account.folder, folder))
            d.addErrback(lambda _: call_backend(store.inbox, address))  # the folder was missing: it went to INBOX
        else:
            d = call_backend(store.inbox, address)
        return d.addCallback(lambda box: call_backend(box.remove, [key]))

    def abort(self):
        self.recipients = []


def _deliver(store, address, source, folder, flags=()):
    """
    store.deliver; the flags a Sieve script set (imap4flags, RFC 5232) go
    along only when there are some and the store takes them (an older
    plugin's deliver has no `flags`: its copy is stored without them).
    """
    if flags:
        if _takes_flags(store):
            return call_backend(store.deliver, address, source, folder, flags=tuple(flags))
        log.warn("sieve: {user}: the store takes no flags; {flags} not kept", user=address, flags=" ".join(flags))
    return call_backend(store.deliver, address, source, folder)


_TAKES_FLAGS = {}  # (store class, wrapped store's class) -> whether deliver has a `flags` parameter


def _takes_flags(store):
    kind = (type(store), type(getattr(store, "inner", None)))
    known = _TAKES_FLAGS.get(kind)
    if known is None:
        import inspect

        try:
            parameters = inspect.signature(store.deliver).parameters
        except (TypeError, ValueError):
            parameters = {}
        known = "flags" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        inner = getattr(store, "inner", None)  # a wrapper (the quota store): what it wraps must take them too
        known = _TAKES_FLAGS[kind] = known and (inner is None or _takes_flags(inner))
    return known


def _one_line(text):
    """A reason fit for one SMTP reply line."""
    text = " ".join(str(text).split())
    return "".join(c for c in text if c.isprintable())[:200] or "no reason given"


def _reason(failure):
    """A store's Failure as the Temporary/PermanentFailure it answers."""
    if isinstance(failure.value, (TemporaryFailure, PermanentFailure)):
        return failure.value
    return TemporaryFailure(f"local delivery failed: {failure.value}")
