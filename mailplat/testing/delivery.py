"""
DeliveryConformance: what a local delivery agent ([delivery] local) must
do for the SMTP server's promises to hold: an answer per recipient, 250
only once the mail is durable, nothing delivered on abort or failure.
"""

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mailplat.interfaces import (
    Envelope,
    IDeliveryAgent,
    IDeliveryTransaction,
    PermanentFailure,
    TemporaryFailure,
)
from mailplat.store.source import BytesSource

MESSAGE = (
    b"From: carol@remote.test\n"
    b"To: alice@example.test\n"
    b"Subject: conformance\n"
    b"\n"
    b"Hello.\n"
    b".a line starting with a dot\n"
    b".\n"
    b"From the start of a line\n"
    b"Gr\xc3\xbc\xc3\x9fe, 8 bit\n"
)


class DeliveryConformance:
    """
    Mix into a twisted.trial.unittest.TestCase and implement:

      - C{make_agent()}: an IDeliveryAgent (or a Deferred of one) for which
        the users in C{self.users} exist and nobody else does.
      - C{delivered(address)}: the messages (list of bytes, or a Deferred of
        it) that the backend durably holds for C{address} right now (read
        from disk, or from the LMTP server): called the moment C{deliver}
        fires, so it checks that 250 comes after the mail is safe.
      - C{break_mailbox(agent, address)}: make delivery to that one mailbox
        fail (as a full or unwritable disk would) from now on.
      - C{make_unavailable_agent()}: the agent with its backend unreachable.
        C{raise SkipTest(...)} from a hook your backend cannot support.

    Set C{all_or_nothing = False} for an agent that hands mail to another
    server and cannot take back a copy it handed over (LMTP): a failed
    transaction must then still fail temporarily and leave nothing in the
    broken mailbox, but other recipients may have their copy.
    """

    users = ("alice@example.test", "bob@example.test")
    unknown = "nobody@example.test"
    all_or_nothing = True

    def make_agent(self):
        raise NotImplementedError("return an IDeliveryAgent for the users in self.users")

    def delivered(self, address):
        raise NotImplementedError("return the messages durably held for `address`")

    def break_mailbox(self, agent, address):
        raise NotImplementedError("make delivery to `address` fail")

    def make_unavailable_agent(self):
        raise NotImplementedError("return an agent whose backend cannot be reached")

    # --- helpers -----------------------------------------------------------

    def envelope(self):
        return Envelope("carol@remote.test", helo="remote.test", client_address="192.0.2.1", received_by="mx.test")

    @defer.inlineCallbacks
    def _kit_start(self, agent=None):
        if agent is None:
            agent = yield defer.maybeDeferred(self.make_agent)
        transaction = yield defer.maybeDeferred(agent.start, self.envelope())
        return transaction

    @defer.inlineCallbacks
    def _kit_held(self, address):
        messages = yield defer.maybeDeferred(self.delivered, address)
        return [m.replace(b"\r\n", b"\n") for m in messages]

    def assertHoldsTheMessage(self, messages, body=MESSAGE):
        self.assertEqual(len(messages), 1, f"expected one copy, found {len(messages)}")
        # Trace headers (Return-Path, Received) may be added on top; the
        # message itself must arrive byte for byte.
        self.assertTrue(messages[0].endswith(body), f"message altered: {messages[0][-200:]!r}")

    # --- the tests ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_agent_and_transaction_provide_the_interfaces(self):
        agent = yield defer.maybeDeferred(self.make_agent)
        self.assertTrue(verifyObject(IDeliveryAgent, agent))
        transaction = yield self._kit_start(agent)
        self.assertTrue(verifyObject(IDeliveryTransaction, transaction))
        transaction.abort()

    @defer.inlineCallbacks
    def test_unknown_user_is_refused_permanently_at_add_recipient(self):
        transaction = yield self._kit_start()
        try:
            yield defer.maybeDeferred(transaction.add_recipient, self.unknown)
        except PermanentFailure:
            transaction.abort()
            return
        self.fail(f"{self.unknown} (nobody) was accepted at add_recipient: refuse unknown users with NoSuchUser")

    @defer.inlineCallbacks
    def test_each_recipient_gets_its_own_answer(self):
        transaction = yield self._kit_start()
        yield transaction.add_recipient(self.users[0])
        yield self.assertFailure(defer.maybeDeferred(transaction.add_recipient, self.unknown), PermanentFailure)
        yield transaction.add_recipient(self.users[1])
        yield transaction.deliver(BytesSource(MESSAGE))
        for user in self.users:
            self.assertHoldsTheMessage((yield self._kit_held(user)))

    @defer.inlineCallbacks
    def test_message_is_durable_when_deliver_fires(self):
        transaction = yield self._kit_start()
        yield transaction.add_recipient(self.users[0])
        yield transaction.deliver(BytesSource(MESSAGE))
        # No waiting: what deliver promised is already held.
        self.assertHoldsTheMessage((yield self._kit_held(self.users[0])))

    @defer.inlineCallbacks
    def test_nothing_is_delivered_before_deliver(self):
        transaction = yield self._kit_start()
        yield transaction.add_recipient(self.users[0])
        self.assertEqual((yield self._kit_held(self.users[0])), [],
                         "something was delivered at add_recipient, before the message was complete")
        transaction.abort()

    @defer.inlineCallbacks
    def test_abort_delivers_nothing(self):
        transaction = yield self._kit_start()
        yield transaction.add_recipient(self.users[0])
        transaction.abort()
        self.assertEqual((yield self._kit_held(self.users[0])), [], "abort() left something delivered")

    @defer.inlineCallbacks
    def test_deliver_without_recipients_fails_permanently(self):
        transaction = yield self._kit_start()
        yield self.assertFailure(defer.maybeDeferred(transaction.deliver, BytesSource(MESSAGE)), PermanentFailure)

    @defer.inlineCallbacks
    def test_a_recipient_given_twice_gets_one_copy(self):
        transaction = yield self._kit_start()
        yield transaction.add_recipient(self.users[0])
        yield transaction.add_recipient(self.users[0])
        yield transaction.deliver(BytesSource(MESSAGE))
        self.assertHoldsTheMessage((yield self._kit_held(self.users[0])))

    @defer.inlineCallbacks
    def test_concurrent_transactions_do_not_mix(self):
        agent = yield defer.maybeDeferred(self.make_agent)
        first = yield self._kit_start(agent)
        second = yield self._kit_start(agent)
        yield first.add_recipient(self.users[0])
        yield second.add_recipient(self.users[1])
        other = MESSAGE.replace(b"conformance", b"the second one")
        yield defer.gatherResults([
            defer.maybeDeferred(first.deliver, BytesSource(MESSAGE)),
            defer.maybeDeferred(second.deliver, BytesSource(other)),
        ])
        self.assertHoldsTheMessage((yield self._kit_held(self.users[0])), MESSAGE)
        self.assertHoldsTheMessage((yield self._kit_held(self.users[1])), other)

    @defer.inlineCallbacks
    def test_a_failed_delivery_fails_temporarily_and_leaves_nothing_delivered(self):
        agent = yield defer.maybeDeferred(self.make_agent)
        yield defer.maybeDeferred(self.break_mailbox, agent, self.users[1])
        transaction = yield self._kit_start(agent)
        yield transaction.add_recipient(self.users[0])
        try:
            yield transaction.add_recipient(self.users[1])
        except TemporaryFailure:
            transaction.abort()  # refused early: a fine answer too
            self.assertEqual((yield self._kit_held(self.users[0])), [])
            return
        try:
            yield defer.maybeDeferred(transaction.deliver, BytesSource(MESSAGE))
        except TemporaryFailure:
            pass
        except Exception as e:
            self.fail(f"a mailbox that cannot be written failed the delivery with {e!r}: it must be a "
                      "TemporaryFailure (4xx: the client retries), never a bounce")
        else:
            self.fail("deliver fired although a recipient's mailbox cannot be written")
        self.flushLoggedErrors()  # a backend may log the failure we caused
        self.assertEqual((yield self._kit_held(self.users[1])), [])
        if self.all_or_nothing:
            self.assertEqual((yield self._kit_held(self.users[0])), [], "a failed transaction left a copy behind")

    @defer.inlineCallbacks
    def test_unavailable_backend_fails_temporarily(self):
        agent = yield defer.maybeDeferred(self.make_unavailable_agent)
        try:
            transaction = yield self._kit_start(agent)
            yield transaction.add_recipient(self.users[0])
            yield transaction.deliver(BytesSource(MESSAGE))
        except TemporaryFailure:
            self.flushLoggedErrors()  # a backend may log the failure we caused
            return
        self.fail("an unavailable backend accepted the message")

    # --- what breaks a running server --------------------------------------
    #
    # Set C{durability = "handed-on"} for an agent whose mail is durable
    # somewhere else (an LMTP server answered for it) rather than by its own
    # fsync; C{honours_folders = False} and C{accepts_postmaster = False}
    # for one that hands recipients on as they are, leaving folders and
    # postmaster@ to the server it hands them to.

    durability = "fsync"
    honours_folders = True
    accepts_postmaster = True
    folder = "Junk"  # a check's folder
    plus_folder = "lists"  # alice+lists@ (the server lower-cases addresses, tags too)

    def delivered_in(self, address, folder):
        """
        The messages (list of bytes, or a Deferred of it) durably held for
        `address` in `folder` (for the folder and plus-tag rules).
        """
        raise NotImplementedError("return the messages held for `address` in `folder`")

    def make_folder(self, agent, address, folder):
        """Make `folder` exist for `address` before the folder rules deliver (default: nothing)."""

    def _kit_folders(self):
        if not self.honours_folders:
            from twisted.trial.unittest import SkipTest

            raise SkipTest("honours_folders = False: folders are the next server's business")
        if type(self).delivered_in is DeliveryConformance.delivered_in:
            from twisted.trial.unittest import SkipTest

            raise SkipTest("write delivered_in(address, folder) to have the folder rules checked")

    @defer.inlineCallbacks
    def test_mail_and_its_directory_are_fsynced_before_deliver_fires(self):
        """250 means the mail survives a power cut: the file and the
        directory that names it are fsynced before deliver's Deferred fires."""
        from mailplat.testing.spies import FsyncSpy

        if self.durability != "fsync":
            from twisted.trial.unittest import SkipTest

            raise SkipTest(f"durability = {self.durability!r}: the agent does not keep the mail itself")
        transaction = yield self._kit_start()
        yield transaction.add_recipient(self.users[0])
        with FsyncSpy() as spy:
            yield transaction.deliver(BytesSource(MESSAGE))
        files = [s for s in spy.synced if not s[1]]
        directories = [s for s in spy.synced if s[1]]
        self.assertTrue(files, "deliver fired without fsyncing the message file: a crash could lose mail after 250")
        self.assertTrue(
            directories,
            "deliver fired without fsyncing the directory the message was renamed into: after a crash the file "
            "may be gone",
        )

    @defer.inlineCallbacks
    def test_postmaster_is_always_accepted(self):
        """RFC 5321 4.5.1: postmaster@ of every local domain takes mail, user or not."""
        if not self.accepts_postmaster:
            from twisted.trial.unittest import SkipTest

            raise SkipTest("accepts_postmaster = False: the next server answers for postmaster@")
        domain = self.users[0].partition("@")[2]
        postmaster = f"postmaster@{domain}"
        transaction = yield self._kit_start()
        try:
            yield transaction.add_recipient(postmaster)
        except (PermanentFailure, TemporaryFailure) as e:
            self.fail(f"{postmaster} was refused ({e}): RFC 5321 4.5.1 says it must always be accepted")
        yield transaction.deliver(BytesSource(MESSAGE))
        self.assertHoldsTheMessage((yield self._kit_held(postmaster)))

    @defer.inlineCallbacks
    def test_a_checks_folder_is_honoured(self):
        """A check's Verdict.folder("Junk") sets envelope.folder: the copy goes there."""
        self._kit_folders()
        agent = yield defer.maybeDeferred(self.make_agent)
        yield defer.maybeDeferred(self.make_folder, agent, self.users[0], self.folder)
        envelope = self.envelope()
        envelope.folder = self.folder
        transaction = yield defer.maybeDeferred(agent.start, envelope)
        yield transaction.add_recipient(self.users[0])
        yield transaction.deliver(BytesSource(MESSAGE))
        held = yield defer.maybeDeferred(self.delivered_in, self.users[0], self.folder)
        self.assertEqual(
            len(held), 1, f"envelope.folder = {self.folder!r} (a check's verdict) was not honoured: "
            f"{len(held)} copies in {self.folder}",
        )

    @defer.inlineCallbacks
    def test_a_plus_tag_names_the_folder(self):
        """alice+lists@ is alice, into her folder lists."""
        self._kit_folders()
        agent = yield defer.maybeDeferred(self.make_agent)
        yield defer.maybeDeferred(self.make_folder, agent, self.users[0], self.plus_folder)
        local, _, domain = self.users[0].partition("@")
        tagged = f"{local}+{self.plus_folder}@{domain}"
        transaction = yield self._kit_start(agent)
        yield transaction.add_recipient(tagged)
        yield transaction.deliver(BytesSource(MESSAGE))
        held = yield defer.maybeDeferred(self.delivered_in, self.users[0], self.plus_folder)
        self.assertEqual(
            len(held), 1, f"the plus tag of {tagged} was not honoured: {len(held)} copies in {self.plus_folder}"
        )
