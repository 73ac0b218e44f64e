"""
The delivery fan-out: aliases resolved once, local mailboxes to the local
agent, remote addresses to the relay queue, and one truthful answer.
"""

import os
import tempfile

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailplat.delivery.addresses import AddressResolver
from mailplat.delivery.aliases import AliasesFile
from mailplat.delivery.fanout import FanOutDelivery
from mailplat.delivery.local import LocalDelivery
from mailplat.interfaces import Envelope, IDeliveryAgent, IRelayQueue, PermanentFailure, TemporaryFailure
from mailplat.realm.passwdfile import PasswdFileRealm
from mailplat.store.maildir import MaildirStore
from mailplat.store.source import BytesSource


@implementer(IRelayQueue)
class RecordingQueue:
    """An in-memory IRelayQueue: what the fan-out hands to relay, and takes back."""

    def __init__(self, fail=False):
        self.queued = {}
        self.cancelled = []
        self.fail = fail

    def enqueue(self, envelope, recipients, source):
        if self.fail:
            return defer.fail(TemporaryFailure("spool full"))
        queue_id = f"q{len(self.queued) + 1}"
        with source.open() as f:
            self.queued[queue_id] = (envelope.sender, list(recipients), f.read())
        return defer.succeed(queue_id)

    def cancel(self, queue_id):
        self.cancelled.append(queue_id)
        self.queued.pop(queue_id, None)
        return defer.succeed(None)


class FanOut(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        users = os.path.join(self.dir, "users")
        with open(users, "w") as f:
            f.write("alice@example.test:{PLAIN}x\nbob@example.test:{PLAIN}y\n")
        aliases = os.path.join(self.dir, "aliases")
        with open(aliases, "w") as f:
            f.write("team@example.test: alice@example.test, friend@remote.test\n")
        self.resolver = AddressResolver(PasswdFileRealm(users), AliasesFile(aliases), ["example.test"])
        self.store = MaildirStore(os.path.join(self.dir, "mail/%d/%n"))
        self.local = LocalDelivery(self.resolver, self.store)

    def inbox(self, address):
        new = os.path.join(self.dir, "mail", "example.test", address.split("@")[0], "new")
        return os.listdir(new) if os.path.isdir(new) else []

    def test_provides_the_delivery_agent_interface(self):
        verifyObject(IDeliveryAgent, FanOutDelivery(self.local, self.resolver))

    @defer.inlineCallbacks
    def test_alias_with_a_remote_target_goes_to_both_local_and_queue(self):
        queue = RecordingQueue()
        txn = yield FanOutDelivery(self.local, self.resolver, queue).start(Envelope("s@remote.test"))
        yield txn.add_recipient("team@example.test")
        yield txn.add_recipient("other@remote.test")
        queue_id = yield txn.deliver(BytesSource(b"Subject: x\n\nbody\n"))
        self.assertEqual(queue.queued[queue_id][1], ["friend@remote.test", "other@remote.test"])
        self.assertEqual(len(self.inbox("alice@example.test")), 1)

    @defer.inlineCallbacks
    def test_without_a_queue_a_remote_only_recipient_is_refused(self):
        txn = yield FanOutDelivery(self.local, self.resolver).start(Envelope("s@remote.test"))
        e = yield self.assertFailure(txn.add_recipient("x@remote.test"), PermanentFailure)
        self.assertEqual(e.enhanced, "5.7.1")

    @defer.inlineCallbacks
    def test_local_failure_takes_the_queue_entry_back(self):
        queue = RecordingQueue()
        txn = yield FanOutDelivery(self.local, self.resolver, queue).start(Envelope("s@remote.test"))
        yield txn.add_recipient("team@example.test")
        # alice's maildir cannot be made: a file stands where its directory goes
        os.makedirs(os.path.join(self.dir, "mail", "example.test"))
        with open(os.path.join(self.dir, "mail", "example.test", "alice"), "w") as f:
            f.write("not a directory")
        yield self.assertFailure(txn.deliver(BytesSource(b"Subject: x\n\nbody\n")), TemporaryFailure)
        self.flushLoggedErrors(TemporaryFailure)  # logged for the operator
        self.assertEqual(queue.queued, {})
        self.assertEqual(queue.cancelled, ["q1"])

    @defer.inlineCallbacks
    def test_queue_failure_delivers_nothing_locally(self):
        txn = yield FanOutDelivery(self.local, self.resolver, RecordingQueue(fail=True)).start(Envelope("s@r.test"))
        yield txn.add_recipient("team@example.test")
        yield self.assertFailure(txn.deliver(BytesSource(b"Subject: x\n\nbody\n")), TemporaryFailure)
        self.assertEqual(self.inbox("alice@example.test"), [])
