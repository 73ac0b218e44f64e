"""
The delivery transaction the SMTP server drives: each recipient is resolved
(aliases, plus tags, users, postmaster) and its final mailboxes are sent to
the local delivery agent, its remote addresses to the relay queue.

At the end of data the message is queued for the remote recipients first
(durably), then delivered locally; if the local part fails the queue entry
is taken back, so the one SMTP reply stays true for every recipient.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import IDeliveryAgent, IDeliveryTransaction, PermanentFailure

log = Logger()


@implementer(IDeliveryAgent)
class FanOutDelivery:
    """
    @param local: the local L{IDeliveryAgent} chosen by `[delivery] local`.
    @param resolver: a L{mailplat.delivery.addresses.AddressResolver}.
    @param relay: an L{IRelayQueue}, or None when mail cannot leave.
    """

    def __init__(self, local, resolver, relay=None):
        self.local = local
        self.resolver = resolver
        self.relay = relay

    def start(self, envelope):
        d = defer.maybeDeferred(self.local.start, envelope)
        return d.addCallback(lambda local: FanOutTransaction(self, envelope, local))


@implementer(IDeliveryTransaction)
class FanOutTransaction:
    def __init__(self, agent, envelope, local):
        self.agent = agent
        self.envelope = envelope
        self.local = local
        self.local_count = 0
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
            yield self.local.add_recipient(self.agent.resolver.tagged(target))
            self.local_count += 1
        self.remote += [r for r in remote if r not in self.remote]

    @defer.inlineCallbacks
    def deliver(self, source):
        queue_id = None
        if self.remote:
            queue_id = yield self.agent.relay.enqueue(self.envelope, list(self.remote), source)
        if self.local_count:
            try:
                yield self.local.deliver(source)
            except Exception:
                if queue_id is not None:
                    yield self.agent.relay.cancel(queue_id)
                raise
        return queue_id

    def abort(self):
        self.remote = []
        self.local.abort()
