"""
RelayConformance: what a relay queue ([relay], IRelayQueue) must do for
the SMTP server's promises to hold. The server answers 250 for remote
recipients once C{enqueue} fired, so by then the message and its envelope
must be on disk, and stay there through a crash; C{cancel} takes back a
message whose SMTP transaction failed after all.

The kit never asks the queue to deliver anything: the hooks build queues
that hold mail and send none while the tests run.
"""

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mailplat.interfaces import Envelope, IRelayQueue, TemporaryFailure
from mailplat.store.source import BytesSource

MESSAGE = (
    b"Received: from client.example.test by mx.example.test\n"
    b"From: alice@example.test\n"
    b"To: bob@example.org, carol@example.net\n"
    b"Subject: relay conformance\n"
    b"\n"
    b"Hello.\n"
    b".a line starting with a dot\n"
    b"From the start of a line\n"
    b"Gr\xc3\xbc\xc3\x9fe, 8 bit\n"
)

RECIPIENTS = ["bob@example.org", "carol@example.net"]


class RelayConformance:
    """
    Mix into a twisted.trial.unittest.TestCase and implement:

      - C{make_queue()}: a fresh IRelayQueue (or a Deferred of one) over an
        empty spool, ready to accept mail, that sends nothing anywhere
        while the test runs (don't start its delivery runner, or route
        every domain to a closed local port with long retry times).
        Register its clean-up with C{self.addCleanup}.
      - C{reopen_queue(queue)}: a new queue object over the same spool, as
        after C{kill -9}: C{queue} is neither stopped nor used again.
      - C{queued(queue)}: what the queue durably holds right now, read from
        its spool and not from memory: a dict (or a Deferred of one)
        C{{queue id: (sender, [recipients], message bytes)}}, the
        recipients still waiting for delivery, in the order given.
      - C{make_unwritable_queue()}: a queue whose spool can't be written
        (a full disk, a spool directory that is gone).
        C{raise SkipTest(...)} from a hook your queue cannot support.
    """

    sender = "alice@example.test"

    def make_queue(self):
        raise NotImplementedError("return an IRelayQueue over an empty spool that sends nothing")

    def reopen_queue(self, queue):
        raise NotImplementedError("return a new queue over the spool of `queue`, as after kill -9")

    def queued(self, queue):
        raise NotImplementedError("return {queue id: (sender, [recipients], message bytes)} read from the spool")

    def make_unwritable_queue(self):
        raise NotImplementedError("return a queue whose spool can't be written")

    # --- helpers -----------------------------------------------------------

    def envelope(self, sender=None):
        return Envelope(
            self.sender if sender is None else sender,
            helo="client.example.test",
            client_address="192.0.2.1",
            protocol="ESMTPA",
            authenticated_as=self.sender,
            received_by="mx.example.test",
        )

    def _kit_queue(self):
        return defer.maybeDeferred(self.make_queue)

    def _kit_enqueue(self, queue, recipients=RECIPIENTS, message=MESSAGE, sender=None):
        return defer.maybeDeferred(queue.enqueue, self.envelope(sender), list(recipients), BytesSource(message))

    @defer.inlineCallbacks
    def _kit_held(self, queue):
        held = yield defer.maybeDeferred(self.queued, queue)
        return {queue_id: (s, list(r), m.replace(b"\r\n", b"\n")) for queue_id, (s, r, m) in held.items()}

    # --- the tests ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_queue_provides_the_interface(self):
        queue = yield self._kit_queue()
        self.assertTrue(verifyObject(IRelayQueue, queue))

    @defer.inlineCallbacks
    def test_enqueue_answers_a_queue_id(self):
        queue = yield self._kit_queue()
        queue_id = yield self._kit_enqueue(queue)
        self.assertIsInstance(queue_id, str)
        self.assertTrue(queue_id)

    @defer.inlineCallbacks
    def test_message_and_envelope_are_on_disk_when_enqueue_fires(self):
        queue = yield self._kit_queue()
        queue_id = yield self._kit_enqueue(queue)
        # No waiting: what enqueue promised is already held.
        self.assertEqual((yield self._kit_held(queue)), {queue_id: (self.sender, RECIPIENTS, MESSAGE)})

    @defer.inlineCallbacks
    def test_each_message_gets_its_own_queue_id(self):
        queue = yield self._kit_queue()
        other = MESSAGE.replace(b"relay conformance", b"the second one")
        first = yield self._kit_enqueue(queue, ["bob@example.org"])
        second = yield self._kit_enqueue(queue, ["carol@example.net"], other)
        self.assertNotEqual(first, second)
        self.assertEqual(
            (yield self._kit_held(queue)),
            {first: (self.sender, ["bob@example.org"], MESSAGE), second: (self.sender, ["carol@example.net"], other)},
        )

    @defer.inlineCallbacks
    def test_null_sender_is_kept(self):
        # RFC 5321 4.5.5: a bounce travels with MAIL FROM:<>.
        queue = yield self._kit_queue()
        queue_id = yield self._kit_enqueue(queue, sender="")
        self.assertEqual((yield self._kit_held(queue))[queue_id][0], "")

    @defer.inlineCallbacks
    def test_reopened_queue_still_holds_the_message_with_its_recipients(self):
        queue = yield self._kit_queue()
        queue_id = yield self._kit_enqueue(queue)
        again = yield defer.maybeDeferred(self.reopen_queue, queue)
        self.assertIsNot(again, queue)
        self.assertEqual((yield self._kit_held(again)), {queue_id: (self.sender, RECIPIENTS, MESSAGE)})

    @defer.inlineCallbacks
    def test_cancel_removes_a_just_enqueued_message(self):
        queue = yield self._kit_queue()
        queue_id = yield self._kit_enqueue(queue)
        yield defer.maybeDeferred(queue.cancel, queue_id)
        self.assertEqual((yield self._kit_held(queue)), {})

    @defer.inlineCallbacks
    def test_cancel_leaves_the_other_messages(self):
        queue = yield self._kit_queue()
        kept = yield self._kit_enqueue(queue, ["bob@example.org"])
        cancelled = yield self._kit_enqueue(queue, ["carol@example.net"])
        yield defer.maybeDeferred(queue.cancel, cancelled)
        self.assertEqual(list((yield self._kit_held(queue))), [kept])

    @defer.inlineCallbacks
    def test_cancelled_message_is_not_back_after_reopen(self):
        queue = yield self._kit_queue()
        queue_id = yield self._kit_enqueue(queue)
        yield defer.maybeDeferred(queue.cancel, queue_id)
        again = yield defer.maybeDeferred(self.reopen_queue, queue)
        self.assertEqual((yield self._kit_held(again)), {})

    @defer.inlineCallbacks
    def test_unwritable_spool_fails_enqueue_temporarily(self):
        queue = yield defer.maybeDeferred(self.make_unwritable_queue)
        yield self.assertFailure(self._kit_enqueue(queue), TemporaryFailure)
        self.flushLoggedErrors()  # a queue may log the failure we caused
