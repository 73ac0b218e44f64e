"""
The relay queue as a plugin kind (issue 13 item 4): `[relay] queue = "NAME"`
picks an IRelayQueue plugin (default the built-in "spool"), whose own keys
live in [relay.NAME]; `mailplat plugins` lists the kind; the relay
conformance kit is its kit.
"""

import smtplib

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from mailplat import plugin
from mailplat.interfaces import IRelayQueue, TemporaryFailure
from mailplat.plugin import BackendPlugin, Key
from mailplat.testing import RelayConformance
from tests.helpers import MailServer, client_tls, in_thread
from tests.test_plugins import mailplat

MESSAGE = b"From: alice@example.test\r\nTo: carol@remote.test\r\nSubject: out\r\n\r\nhello\r\n"


@implementer(IRelayQueue)
class MemoryQueue:
    """A queue that keeps what it is given in memory (it sends nothing)."""

    def __init__(self, label, fail=False):
        self.label = label
        self.fail = fail
        self.held = {}

    async def enqueue(self, envelope, recipients, source):
        if self.fail:
            raise TemporaryFailure("queue disk gone")
        with source.open() as f:
            data = f.read()
        queue_id = f"{self.label}-{len(self.held) + 1}"
        self.held[queue_id] = (envelope.sender, list(recipients), data)
        return queue_id

    def cancel(self, queue_id):
        self.held.pop(queue_id, None)


class Built:
    queues = []


def _memory(section, context):
    queue = MemoryQueue(section["memory"]["label"], fail=section["memory"].get("fail", False))
    Built.queues.append(queue)
    return queue


MEMORY = BackendPlugin("relay", "memory", "a relay queue in memory", _memory,
                       keys={"memory": Key(dict, required=True, doc="[relay.memory]", keys={
                           "label": Key(str, required=True, doc="queue ids start with it"),
                           "fail": Key(bool, doc="refuse every message"),
                       })})


class QueueServer(MailServer):
    def __init__(self, testcase, relay):
        super().__init__(testcase, listeners=("submission",), extra=relay)


def submit(port):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=client_tls())
        s.login("alice@example.test", "alice-pw")
        try:
            s.sendmail("alice@example.test", ["carol@remote.test"], MESSAGE)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()
        return 250, ""


class RelayPlugin(unittest.TestCase):
    def setUp(self):
        self.addCleanup(plugin.register(MEMORY))
        Built.queues = []

    @defer.inlineCallbacks
    def test_a_queue_plugin_takes_the_remote_mail(self):
        server = QueueServer(self, '\n[relay]\nqueue = "memory"\n\n[relay.memory]\nlabel = "mem"\n')
        yield server.start(users={"alice@example.test": "alice-pw"})
        self.assertEqual((yield in_thread(submit, server.port("submission"))), (250, ""))
        [queue] = Built.queues
        [(queue_id, (sender, recipients, data))] = queue.held.items()
        self.assertTrue(queue_id.startswith("mem-"))
        self.assertEqual((sender, recipients), ("alice@example.test", ["carol@remote.test"]))
        self.assertIn(b"Subject: out", data)

    @defer.inlineCallbacks
    def test_its_temporary_failure_is_a_451(self):
        server = QueueServer(self, '\n[relay]\nqueue = "memory"\n\n[relay.memory]\nlabel = "m"\nfail = true\n')
        yield server.start(users={"alice@example.test": "alice-pw"})
        code, text = yield in_thread(submit, server.port("submission"))
        self.assertEqual(code, 451)
        self.assertNotIn("queue disk gone", text)  # a plugin's text, not public

    def test_its_keys_are_checked(self):
        server = QueueServer(self, '\n[relay]\nqueue = "memory"\n\n[relay.memory]\nlabl = "m"\n')
        d = server.start(users={})
        failure = self.failureResultOf(d)
        self.assertIn("relay.memory.labl: unknown key (did you mean label?)", str(failure.value))

    def test_an_unknown_queue_names_the_choices(self):
        server = QueueServer(self, '\n[relay]\nqueue = "nope"\n')
        failure = self.failureResultOf(server.start(users={}))
        self.assertIn("relay.queue: unknown relay backend 'nope' (available:", str(failure.value))
        self.assertIn("spool", str(failure.value))

    def test_the_builtin_spool_is_listed(self):
        status, out, err = mailplat(["plugins"], ".")
        rows = {tuple(line.split(None, 3)[:3]) for line in out.splitlines()}
        self.assertIn(("relay", "spool", "plugins.mailplat_builtin"), rows, out + err)


class MemoryQueueConforms(RelayConformance, unittest.TestCase):
    """The relay kit is the kit of the kind; it runs on a plugin's queue as on the spool."""

    def make_queue(self):
        return MemoryQueue("kit")

    def reopen_queue(self, queue):
        # A new queue over the same "spool" (here a dict; a real queue rereads its files).
        again = MemoryQueue("kit")
        again.held = queue.held
        return again

    def queued(self, queue):
        return dict(queue.held)

    def make_unwritable_queue(self):
        return MemoryQueue("kit", fail=True)
