"""
The greylist check (docs/check-greylist.md): a new (client network,
sender, recipient) triplet is answered 451 4.7.1 at RCPT, a retry after
the delay passes and is remembered; authenticated and allow-listed
clients skip it; its memory is bounded and survives a restart. The clock
is the test's own: nothing here waits for real time to pass.
"""

import os
import shutil
import smtplib
import tempfile
import time
import types

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.checks import EnabledCheck, run_stage
from mailplat.interfaces import BackendContext, CheckSession, Verdict
from mailplat.spam.greylist import FILE_NAME, client_network
from mailplat.testing.check import CheckConformance
from plugins import mailplat_spam
from tests.helpers import MailServer, client_tls, in_thread


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def context_for(state_dir):
    return BackendContext(types.SimpleNamespace(state_dir=state_dir))


class Triplets(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-greylist-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = Clock()
        self.check = self.build()

    def build(self, **section):
        section.setdefault("delay", 60)
        section.setdefault("allow", ["198.51.100.0/24"])
        check = mailplat_spam.greylist.from_config(section, context_for(self.dir))
        check.clock = check.store.clock = self.clock
        self.addCleanup(check.store.flushed)
        return check

    def rcpt(self, client="192.0.2.1", sender="a@remote.test", recipient="alice@example.test", check=None,
             authenticated=None, state=None):
        session = CheckSession(client, policy="mx")
        session.sender = sender
        session.authenticated_as = authenticated
        session.state.update(state or {})
        return run_stage([EnabledCheck("greylist", check or self.check)], "rcpt", session, recipient)

    @defer.inlineCallbacks
    def test_a_first_try_is_tempfailed(self):
        verdict = yield self.rcpt()
        self.assertEqual((verdict.action, verdict.code, verdict.enhanced), (Verdict.TEMPFAIL, 451, "4.7.1"))
        self.assertIn("60 seconds", verdict.text)

    @defer.inlineCallbacks
    def test_a_retry_before_the_delay_is_tempfailed_again(self):
        yield self.rcpt()
        self.clock.now += 30
        verdict = yield self.rcpt()
        self.assertEqual(verdict.action, Verdict.TEMPFAIL)
        self.assertIn("30 seconds", verdict.text)

    @defer.inlineCallbacks
    def test_a_retry_after_the_delay_passes_and_is_remembered(self):
        yield self.rcpt()
        self.clock.now += 61
        self.assertEqual((yield self.rcpt()).action, Verdict.ACCEPT)
        self.clock.now += 20 * 86400
        self.assertEqual((yield self.rcpt()).action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_a_neighbour_in_the_same_network_shares_the_triplet(self):
        yield self.rcpt(client="192.0.2.1")
        self.clock.now += 61
        self.assertEqual((yield self.rcpt(client="192.0.2.200")).action, Verdict.ACCEPT)
        self.assertEqual((yield self.rcpt(client="192.0.3.1")).action, Verdict.TEMPFAIL)

    @defer.inlineCallbacks
    def test_ipv6_clients_are_greylisted_by_their_64(self):
        yield self.rcpt(client="2001:db8:1:2::1")
        self.clock.now += 61
        self.assertEqual((yield self.rcpt(client="2001:db8:1:2:ffff::9")).action, Verdict.ACCEPT)
        self.assertEqual((yield self.rcpt(client="2001:db8:1:3::1")).action, Verdict.TEMPFAIL)

    @defer.inlineCallbacks
    def test_another_sender_or_recipient_is_another_triplet(self):
        yield self.rcpt()
        self.clock.now += 61
        self.assertEqual((yield self.rcpt(sender="b@remote.test")).action, Verdict.TEMPFAIL)
        self.assertEqual((yield self.rcpt(recipient="bob@example.test")).action, Verdict.TEMPFAIL)
        self.assertEqual((yield self.rcpt(sender="A@Remote.Test")).action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_a_retry_after_the_window_starts_the_wait_again(self):
        check = self.build(retry_window=3600)
        yield self.rcpt(check=check)
        self.clock.now += 7200
        self.assertEqual((yield self.rcpt(check=check)).action, Verdict.TEMPFAIL)
        self.clock.now += 61
        self.assertEqual((yield self.rcpt(check=check)).action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_a_passed_triplet_is_forgotten_after_its_expiry(self):
        check = self.build(expiry_days=1)
        yield self.rcpt(check=check)
        self.clock.now += 61
        yield self.rcpt(check=check)
        self.clock.now += 2 * 86400
        self.assertEqual((yield self.rcpt(check=check)).action, Verdict.TEMPFAIL)

    @defer.inlineCallbacks
    def test_authenticated_clients_skip_it(self):
        verdict = yield self.rcpt(authenticated="alice@example.test")
        self.assertEqual(verdict.action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_allow_listed_networks_skip_it(self):
        self.assertEqual((yield self.rcpt(client="198.51.100.7")).action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_clients_a_dnsbl_allow_list_vouched_for_skip_it(self):
        verdict = yield self.rcpt(state={"dnsbl": {"allowed": "list.dnswl.org"}})
        self.assertEqual(verdict.action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_passed_triplets_survive_a_restart(self):
        yield self.rcpt()
        self.clock.now += 61
        yield self.rcpt()
        yield self.check.store.flushed()
        again = self.build()
        self.assertEqual((yield self.rcpt(check=again)).action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_a_waiting_triplet_survives_a_restart_with_its_first_try(self):
        yield self.rcpt()
        yield self.check.store.flushed()
        again = self.build()
        self.clock.now += 61
        self.assertEqual((yield self.rcpt(check=again)).action, Verdict.ACCEPT)

    @defer.inlineCallbacks
    def test_memory_is_bounded_the_least_recently_seen_going_first(self):
        check = self.build(max_entries=3)
        for n in range(5):
            yield self.rcpt(sender=f"s{n}@remote.test", check=check)
        self.assertEqual(len(check.store.entries), 3)
        self.assertEqual([k.split()[1] for k in check.store.entries],
                         ["s2@remote.test", "s3@remote.test", "s4@remote.test"])
        yield check.store.flushed()
        again = self.build(max_entries=3)
        self.assertEqual(len(again.store.entries), 3)

    @defer.inlineCallbacks
    def test_the_file_is_compacted_when_mostly_stale(self):
        check = self.build(max_entries=10)
        # 1,100 changes to ten triplets: the file is rewritten instead of growing past ~1,000 lines.
        for n in range(1100):
            check.store.put(f"net s{n % 10} r", self.clock.now, 0)
            yield check.store.flushed()
        with open(os.path.join(self.dir, FILE_NAME)) as f:
            lines = f.readlines()
        self.assertLess(len(lines), 1100)
        again = self.build(max_entries=10)
        self.assertEqual(len(again.store.entries), 10)

    @defer.inlineCallbacks
    def test_a_torn_last_line_is_ignored_at_start(self):
        yield self.rcpt()
        yield self.check.store.flushed()
        with open(os.path.join(self.dir, FILE_NAME), "a") as f:
            f.write('["192.0.2.0/24 x')
        again = self.build()
        self.assertEqual(len(again.store.entries), 1)

    def test_networks(self):
        self.assertEqual(client_network("192.0.2.77"), "192.0.2.0/24")
        self.assertEqual(client_network("2001:db8:1:2:3::4"), "2001:db8:1:2::/64")
        self.assertEqual(client_network("::ffff:192.0.2.77"), "192.0.2.0/24")

    def test_bad_sections_name_the_key(self):
        for section, key in [({"delay": 0}, "delay"), ({"delay": 100, "retry_window": 50}, "retry_window"),
                             ({"allow": ["nonsense"]}, "allow"), ({"ipv4_prefix": 33}, "ipv4_prefix")]:
            with self.assertRaises(ValueError) as caught:
                mailplat_spam.greylist.from_config(section, context_for(self.dir))
            self.assertIn(key, str(caught.exception))


class GreylistConforms(CheckConformance, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-greylist-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    cases = [
        ("rcpt", ("b@example.test",), Verdict.TEMPFAIL),
        ("mail", ("a@remote.test",), Verdict.NEXT),
    ]

    def make_check(self):
        # A fresh state directory each time: the kit builds a check per case.
        state = tempfile.mkdtemp(dir=self.dir)
        check = mailplat_spam.greylist.from_config({"delay": 60}, context_for(state))
        self.addCleanup(check.store.flushed)
        return check


CHECKS = """
[checks]
enabled = ["greylist"]

[checks.greylist]
delay = 60
allow = []
"""


def send(port, login=None, sender="a@remote.test"):
    """One message over SMTP: the (code, text) of the first refusal, else of the end of data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.remote.test")
        if login:
            client.starttls(context=client_tls())
            client.ehlo("client.remote.test")
            client.login(*login)
        code, text = client.mail(sender)
        if code != 250:
            return code, text.decode()
        code, text = client.rcpt("alice@example.test")
        if code != 250:
            return code, text.decode()
        code, text = client.data(b"From: a@remote.test\r\nSubject: hi\r\n\r\nhello\r\n")
        return code, text.decode()


class OnTheWire(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp", "submission"), extra=CHECKS)
        yield self.server.start(users={"alice@example.test": "pw"})
        (enabled,) = self.server.service.backends.checks
        self.check = enabled.check
        self.clock = Clock()
        self.check.clock = self.clock
        self.addCleanup(self.check.store.flushed)

    def delivered(self):
        new = os.path.join(self.server.maildir("alice@example.test"), "new")
        return os.listdir(new) if os.path.isdir(new) else []

    @defer.inlineCallbacks
    def test_first_try_451_then_accepted_after_the_delay(self):
        code, text = yield in_thread(send, self.server.port("smtp"))
        self.assertEqual(code, 451, text)
        self.assertIn("4.7.1", text)
        self.assertEqual(self.delivered(), [])
        self.clock.now += 61
        code, text = yield in_thread(send, self.server.port("smtp"))
        self.assertEqual(code, 250, text)
        self.assertEqual(len(self.delivered()), 1)

    @defer.inlineCallbacks
    def test_an_authenticated_client_is_not_greylisted(self):
        code, text = yield in_thread(send, self.server.port("submission"), login=("alice@example.test", "pw"),
                                      sender="alice@example.test")
        self.assertEqual(code, 250, text)
