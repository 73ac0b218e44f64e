"""
The delivery transaction the SMTP server drives: each recipient is resolved
(aliases, plus tags, users, postmaster) and its final mailboxes are sent to
the local delivery agent, its remote addresses to the relay queue.

At the end of data the message is queued for the remote recipients first
(durably), then delivered locally; if the local part fails the queue entry
is taken back, so the one SMTP reply stays true for every recipient.

The fan-out is where each local recipient's outcome is known, so it writes
the `delivered` and `delivery-failed` lines (docs/operating.md) for every
local agent, from the agent's per-recipient outcomes when it gives them.
"""

import time

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat import oplog
from mailplat.calls import call_backend
from mailplat.interfaces import DeliveryOutcome, IDeliveryAgent, IDeliveryTransaction, PermanentFailure, TemporaryFailure

log = Logger()


@implementer(IDeliveryAgent)
class FanOutDelivery:
    """
    @param local: the local L{IDeliveryAgent} chosen by `[delivery] local`.
    @param resolver: a L{mailplat.delivery.addresses.AddressResolver}.
    @param relay: an L{IRelayQueue}, or None when mail cannot leave.
    @param backend: the `[delivery] local` name (maildir, mbox, lmtp) for
        the log lines.
    """

    def __init__(self, local, resolver, relay=None, backend=None, clock=time.time):
        self.local = local
        self.resolver = resolver
        self.relay = relay
        self.backend = backend
        self.clock = clock

    def start(self, envelope):
        d = call_backend(self.local.start, envelope)
        return d.addCallback(lambda local: FanOutTransaction(self, envelope, local))


@implementer(IDeliveryTransaction)
class FanOutTransaction:
    def __init__(self, agent, envelope, local):
        self.agent = agent
        self.envelope = envelope
        self.local = local
        if hasattr(local, "set_aside_allowed"):
            # Recipients over quota at end of data can wait in the queue (mailplat.delivery.local).
            local.set_aside_allowed = agent.relay is not None
        self.local_count = 0
        self.local_addresses = []  # as handed to the local agent, for agents without outcomes
        self.remote = []

    @defer.inlineCallbacks
    def add_recipient(self, address):
        targets = yield self.agent.resolver.resolve(address)
        local = [t for t in targets if not t.remote]
        remote = [t.address for t in targets if t.remote]
        if remote and self.agent.relay is None:
            if not local:
                raise PermanentFailure("relay to remote addresses is not configured", "5.7.1", 550)
            log.warn(
                "{address}: remote alias targets {remote} skipped: relay is not configured",
                address=address,
                remote=remote,
            )
            remote = []
        for target in local:
            tagged = self.agent.resolver.tagged(target)
            if hasattr(self.local, "rcpt_quota_check"):
                # One full member doesn't refuse an alias: with a queue it waits there (end of data).
                self.local.rcpt_quota_check = len(local) == 1 or self.agent.relay is None
            yield call_backend(self.local.add_recipient, tagged)
            self.local_count += 1
            if tagged not in self.local_addresses:
                self.local_addresses.append(tagged)
        self.remote += [r for r in remote if r not in self.remote]

    @defer.inlineCallbacks
    def deliver(self, source):
        queue_id = None
        if self.remote:
            queue_id = yield call_backend(self.agent.relay.enqueue, self.envelope, list(self.remote), source)
        if self.local_count:
            started = self.agent.clock()
            try:
                yield call_backend(self.local.deliver, source)
            except Exception as e:
                self._log_outcomes(started, e)
                if queue_id is not None:
                    yield call_backend(self.agent.relay.cancel, queue_id)
                raise
            self._log_outcomes(started)
            aside = getattr(self.local, "set_aside", None)
            if aside:
                # Over quota while the others got their copy: the queue retries
                # them (4.2.2) or bounces (5.2.2), as an MTA keeps mail for a full mailbox.
                held = yield call_backend(self.agent.relay.enqueue, self.envelope, list(aside), source)
                log.info("{rcpts}: over quota; queued as {held} for retry", rcpts=", ".join(aside), held=held)
        return queue_id

    def _log_outcomes(self, started, error=None):
        """One `delivered` or `delivery-failed` line per local recipient."""
        outcomes = getattr(self.local, "outcomes", None)
        if not outcomes:
            if error is not None and not isinstance(error, (TemporaryFailure, PermanentFailure)):
                error = TemporaryFailure(f"local delivery failed: {error}")
            outcomes = [DeliveryOutcome(a, None, error) for a in self.local_addresses]
        received = getattr(self.envelope, "received_at", None) or started
        delay = f"{max(0.0, self.agent.clock() - received):.3f}"
        queue_id = getattr(self.envelope, "queue_id", None)
        for outcome in outcomes:
            if outcome.delivered:
                oplog.emit(
                    "delivered", id=queue_id, rcpt=f"<{outcome.recipient}>", mailbox=outcome.mailbox,
                    backend=self.agent.backend, delay=delay,
                )
                continue
            e = outcome.error
            permanent = isinstance(e, PermanentFailure)
            oplog.emit(
                "delivery-failed", level="warn", id=queue_id, rcpt=f"<{outcome.recipient}>", mailbox=outcome.mailbox,
                backend=self.agent.backend, outcome="refused" if permanent else "deferred",
                code=e.code if permanent else 451, status=getattr(e, "enhanced", None),
                reason=getattr(e, "text", str(e)), delay=delay,
            )

    def abort(self):
        self.remote = []
        call_backend(self.local.abort).addErrback(lambda f: None)  # logged by call_backend
