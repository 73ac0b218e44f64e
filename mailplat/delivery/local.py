"""
Local delivery: each recipient is a final mailbox address (aliases were
expanded by the fan-out before it): a user, with an optional plus tag naming
a folder, or postmaster@. The message goes into each mailbox once, with a
Return-Path header on top (RFC 5321 4.4: added at final delivery).

All or nothing: if any recipient's copy cannot be written, the copies
already written are taken back and the whole transaction fails with a
temporary error, so the client retries and no recipient loses mail.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import (
    DeliveryOutcome,
    IDeliveryAgent,
    IDeliveryTransaction,
    PermanentFailure,
    TemporaryFailure,
)
from mailplat.store.source import PrefixedSource

log = Logger()


def return_path(sender):
    return f"Return-Path: <{sender}>\n".encode("utf-8")


@implementer(IDeliveryAgent)
class LocalDelivery:
    """Deliver to the mailboxes `resolver` names, through `store`."""

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

    def add_recipient(self, address):
        d = self.agent.resolver.mailbox(address)

        def found(mailbox):
            if mailbox not in self.recipients:
                self.recipients.append(mailbox)

        return d.addCallback(found)

    def deliver(self, source):
        if not self.recipients:
            return defer.fail(PermanentFailure("no valid recipients", "5.5.1", 554))
        prefixed = PrefixedSource(return_path(self.envelope.sender), source)
        # A check's folder (Junk) wins over a plus tag's.
        chosen = getattr(self.envelope, "folder", None)
        # The folder asked for; a store without it files into INBOX.
        folders = [chosen or folder or "INBOX" for _, folder in self.recipients]
        results = [
            self.agent.store.deliver(address, prefixed, chosen or folder) for address, folder in self.recipients
        ]
        return defer.DeferredList(results, consumeErrors=True).addCallback(self._settle, folders)

    def _settle(self, results, folders):
        failures = [r for ok, r in results if not ok]
        if not failures:
            self.outcomes = [DeliveryOutcome(addr, folder) for (addr, _), folder in zip(self.recipients, folders)]
            return [key for _, key in results]
        delivered = [(addr, key) for (addr, _), (ok, key) in zip(self.recipients, results) if ok]
        for failure in failures:
            log.failure("local delivery failed", failure)
        undo = [self._take_back(addr, key) for addr, key in delivered]
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
            for (addr, _), folder, (ok, value) in zip(self.recipients, folders, results)
        ]
        return defer.DeferredList(undo, consumeErrors=True).addCallback(lambda _: defer.fail(reason))

    def _take_back(self, address, key):
        return self.agent.store.inbox(address).addCallback(lambda folder: folder.remove([key]))

    def abort(self):
        self.recipients = []


def _reason(failure):
    """A store's Failure as the Temporary/PermanentFailure it answers."""
    if isinstance(failure.value, (TemporaryFailure, PermanentFailure)):
        return failure.value
    return TemporaryFailure(f"local delivery failed: {failure.value}")
