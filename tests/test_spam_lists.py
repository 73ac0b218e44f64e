"""
The users' allow and block lists (docs/lists.md): the lists file and who
wins, `mailplat lists add|del|show`, the `lists` check refusing a
block-listed sender at RCPT, and local delivery keeping an allow-listed
sender's message out of the Junk folder a filter chose (over SMTP, with a
stand-in rspamd answering "add header").
"""

import email
import glob
import json
import os
import shutil
import smtplib
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from mailplat import plugin
from mailplat.delivery.addresses import AddressResolver
from mailplat.delivery.aliases import AliasesFile
from mailplat.interfaces import BackendContext, CheckSession, Verdict
from mailplat.realm import passwords
from mailplat.spam.lists import ALLOW, BLOCK, ListError, ListsCheck, SenderLists
from mailplat.testing.check import CheckConformance
from tests.helpers import MailServer, in_thread, small_config
from tests.test_check_rspamd import ANSWER, CLEAN, start_fake
from tests.test_cli import mailplat


class Lists(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-lists-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.lists = SenderLists.in_state_dir(self.dir)

    def test_nobody_is_listed_without_a_file(self):
        self.assertIsNone(self.lists.verdict("alice@example.test", "a@remote.test"))

    def test_an_address_is_listed_in_any_case(self):
        self.assertTrue(self.lists.add("Alice@Example.test", ALLOW, "Boss@Partner.test"))
        self.assertEqual(self.lists.verdict("alice@example.test", "boss@partner.TEST"), ALLOW)
        self.assertIsNone(self.lists.verdict("alice@example.test", "other@partner.test"))
        self.assertIsNone(self.lists.verdict("bob@example.test", "boss@partner.test"))

    def test_a_domain_covers_its_subdomains_only(self):
        self.lists.add("alice@example.test", BLOCK, "@spam.test")
        self.assertEqual(self.lists.verdict("alice@example.test", "x@spam.test"), BLOCK)
        self.assertEqual(self.lists.verdict("alice@example.test", "x@mail.spam.test"), BLOCK)
        self.assertIsNone(self.lists.verdict("alice@example.test", "x@notspam.test"))

    def test_the_most_specific_pattern_wins(self):
        self.lists.add("alice@example.test", BLOCK, "partner.test")
        self.lists.add("alice@example.test", ALLOW, "boss@partner.test")
        self.lists.add("alice@example.test", ALLOW, "news.partner.test")
        self.assertEqual(self.lists.verdict("alice@example.test", "boss@partner.test"), ALLOW)
        self.assertEqual(self.lists.verdict("alice@example.test", "x@news.partner.test"), ALLOW)
        self.assertEqual(self.lists.verdict("alice@example.test", "x@partner.test"), BLOCK)

    def test_the_users_word_wins_over_the_global_lists(self):
        self.lists.add("*", BLOCK, "bulk.test")
        self.lists.add("alice@example.test", ALLOW, "bulk.test")
        self.assertEqual(self.lists.verdict("alice@example.test", "x@bulk.test"), ALLOW)
        self.assertEqual(self.lists.verdict("bob@example.test", "x@bulk.test"), BLOCK)

    def test_the_null_sender_is_never_listed(self):
        self.lists.add("*", BLOCK, "example.test")
        self.assertIsNone(self.lists.verdict("alice@example.test", ""))

    def test_add_twice_and_remove(self):
        self.assertTrue(self.lists.add("alice@example.test", BLOCK, "spam.test"))
        self.assertFalse(self.lists.add("alice@example.test", BLOCK, "SPAM.test"))
        self.assertTrue(self.lists.remove("alice@example.test", BLOCK, "spam.test"))
        self.assertFalse(self.lists.remove("alice@example.test", BLOCK, "spam.test"))
        self.assertIsNone(self.lists.verdict("alice@example.test", "x@spam.test"))

    def test_the_file_is_json_by_user_and_kind_with_no_temporary_left(self):
        self.lists.add("alice@example.test", ALLOW, "b@partner.test")
        self.lists.add("*", BLOCK, "spam.test")
        with open(os.path.join(self.dir, "lists.json")) as f:
            self.assertEqual(json.load(f), {"*": {"block": ["spam.test"]},
                                            "alice@example.test": {"allow": ["b@partner.test"]}})
        self.assertEqual(sorted(os.listdir(self.dir)), ["lists.json", "lists.json.lock"])

    def test_a_change_by_another_writer_is_seen(self):
        self.assertIsNone(self.lists.verdict("alice@example.test", "x@spam.test"))
        SenderLists.in_state_dir(self.dir).add("alice@example.test", BLOCK, "spam.test")
        self.assertEqual(self.lists.verdict("alice@example.test", "x@spam.test"), BLOCK)

    def test_a_broken_file_keeps_the_last_good_lists(self):
        self.lists.add("alice@example.test", BLOCK, "spam.test")
        self.assertEqual(self.lists.verdict("alice@example.test", "x@spam.test"), BLOCK)
        with open(os.path.join(self.dir, "lists.json"), "w") as f:
            f.write("{not json, and longer than before")
        self.assertEqual(self.lists.verdict("alice@example.test", "x@spam.test"), BLOCK)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_nonsense_is_refused_by_name(self):
        for user, pattern in (("alice", "spam.test"), ("alice@example.test", "not a domain"),
                              ("alice@example.test", "localhost"), ("alice@example.test", "a@b@c.test")):
            with self.assertRaises(ListError):
                self.lists.add(user, BLOCK, pattern)
        with self.assertRaises(ListError):
            self.lists.add("alice@example.test", "maybe", "spam.test")


class Command(unittest.TestCase):
    """`mailplat lists add|del|show USER allow|block PATTERN`."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-lists-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "mailplat.toml")
        with open(self.config, "w") as f:
            f.write(small_config())

    def run_cli(self, *args):
        return mailplat(["--config", self.config, "lists", *args], self.dir)

    def test_add_show_del(self):
        code, out, err = self.run_cli("add", "alice@example.test", "allow", "boss@partner.test")
        self.assertEqual(code, 0, err)
        self.run_cli("add", "alice@example.test", "block", "spam.test")
        code, out, _ = self.run_cli("show", "alice@example.test")
        self.assertEqual(out.splitlines(), ["allow boss@partner.test", "block spam.test"])
        code, out, _ = self.run_cli("show", "alice@example.test", "block")
        self.assertEqual(out.splitlines(), ["block spam.test"])
        code, _, err = self.run_cli("del", "alice@example.test", "block", "spam.test")
        self.assertEqual(code, 0, err)
        code, _, err = self.run_cli("del", "alice@example.test", "block", "spam.test")
        self.assertEqual(code, 1)
        self.assertIn("not on the block list", err)
        lists = SenderLists.in_state_dir(os.path.join(self.dir, "var"))
        self.assertEqual(lists.verdict("alice@example.test", "boss@partner.test"), ALLOW)
        self.assertIsNone(lists.verdict("alice@example.test", "x@spam.test"))

    def test_star_is_the_global_lists(self):
        self.run_cli("add", "*", "block", "spam.test")
        lists = SenderLists.in_state_dir(os.path.join(self.dir, "var"))
        self.assertEqual(lists.verdict("anyone@example.test", "x@spam.test"), BLOCK)
        _, out, _ = self.run_cli("show", "*")
        self.assertEqual(out.splitlines(), ["block spam.test"])

    def test_a_bad_pattern_is_named_without_a_traceback(self):
        code, _, err = self.run_cli("add", "alice@example.test", "block", "not a domain")
        self.assertEqual(code, 2)
        self.assertIn("'not a domain'", err)
        self.assertNotIn("Traceback", err)

    def test_only_allow_or_block(self):
        code, _, err = self.run_cli("add", "alice@example.test", "trust", "partner.test")
        self.assertEqual(code, 2)
        self.assertIn("invalid choice", err)


def _resolver(directory, users=("alice@example.test", "bob@example.test"), aliases=""):
    """The server's own address resolver over a passwd-file realm and an aliases file."""
    path = os.path.join(directory, "users")
    with open(path, "w") as f:
        for user in users:
            f.write(f"{user}:{passwords.hash_password('pw', 'PLAIN')}\n")
    with open(os.path.join(directory, "aliases"), "w") as f:
        f.write(aliases)
    realm = plugin.build("realm", "passwd-file", {"path": path}, BackendContext(None))
    return AddressResolver(realm, AliasesFile(os.path.join(directory, "aliases")), ["example.test"])


class ListsCheckConforms(CheckConformance, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-lists-kit-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.resolver = _resolver(self.dir)
        SenderLists.in_state_dir(self.dir).add("b@example.test", BLOCK, "remote.test")

    def _session(self):
        session = CheckSession("192.0.2.1", policy="mx")
        session.sender = "a@remote.test"
        return session

    cases = [
        ("rcpt", ("alice@example.test",), Verdict.NEXT),
        ("mail", ("a@remote.test",), Verdict.NEXT),
    ]

    def make_check(self):
        return ListsCheck(SenderLists.in_state_dir(self.dir), self.resolver)


class AtRcpt(unittest.TestCase):
    """The `lists` check: a sender every mailbox behind the recipient blocks is refused."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-lists-rcpt-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.lists = SenderLists.in_state_dir(self.dir)
        aliases = "team@example.test: alice@example.test, bob@example.test\n"
        self.check = ListsCheck(self.lists, _resolver(self.dir, aliases=aliases))

    def rcpt(self, recipient, sender="x@spam.test"):
        session = CheckSession("192.0.2.1")
        session.sender = sender
        return defer.maybeDeferred(self.check.rcpt, session, recipient)

    @defer.inlineCallbacks
    def test_a_users_block_refuses_with_550_5_7_1(self):
        self.lists.add("alice@example.test", BLOCK, "spam.test")
        verdict = yield self.rcpt("alice@example.test")
        self.assertEqual((verdict.action, verdict.code, verdict.enhanced), (Verdict.REJECT, 550, "5.7.1"))
        verdict = yield self.rcpt("alice+lists@example.test")
        self.assertEqual(verdict.action, Verdict.REJECT)
        self.assertIsNone((yield self.rcpt("bob@example.test")))

    @defer.inlineCallbacks
    def test_an_alias_is_refused_only_when_every_member_blocks(self):
        self.lists.add("alice@example.test", BLOCK, "spam.test")
        self.assertIsNone((yield self.rcpt("team@example.test")))
        self.lists.add("*", BLOCK, "spam.test")
        verdict = yield self.rcpt("team@example.test")
        self.assertEqual(verdict.action, Verdict.REJECT)

    @defer.inlineCallbacks
    def test_unknown_recipients_and_remote_ones_are_not_its_business(self):
        self.lists.add("*", BLOCK, "spam.test")
        self.assertIsNone((yield self.rcpt("nobody@example.test")))
        self.assertIsNone((yield self.rcpt("someone@elsewhere.test")))
        self.assertIsNone((yield self.rcpt("alice@example.test", sender="")))


CHECKS = """
[checks]
enabled = ["lists", "rspamd"]

[checks.rspamd]
url = "{url}"
timeout = 20
"""


def send(port, sender, recipients=("alice@example.test",)):
    """One message over SMTP: {recipient: RCPT code}, and the end of data's (code, text) when any was accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail(sender)
        codes = {r: client.rcpt(r)[0] for r in recipients}
        if not any(code == 250 for code in codes.values()):
            return codes, None
        code, text = client.data(CLEAN.encode())
        return codes, (code, text.decode())


class DeliveryServer:
    """A server with the `lists` and `rspamd` checks (a stand-in rspamd answering `answer`), alice and bob."""

    answer = dict(ANSWER, action="add header", score=7.0)

    @defer.inlineCallbacks
    def setUp(self):
        self.fake = start_fake(self, self.answer)
        self.server = MailServer(self, listeners=("smtp",), extra=CHECKS.format(url=self.fake.url))
        aliases = os.path.join(self.server.dir, "aliases")
        with open(aliases, "w") as f:
            f.write("team@example.test: alice@example.test, bob@example.test\n")
        self.server.extra += f'\n[aliases]\npath = "{aliases}"\n'
        yield self.server.start(users={"alice@example.test": "pw", "bob@example.test": "pw"})
        for user in ("alice@example.test", "bob@example.test"):
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(self.server.maildir(user), ".Junk", sub))
        self.lists = SenderLists.in_state_dir(self.server.state)

    def stored(self, user, folder=""):
        base = self.server.maildir(user)
        found = []
        for path in glob.glob(os.path.join(base, f".{folder}" if folder else "", "new", "*")):
            with open(path, "rb") as f:
                found.append(email.message_from_bytes(f.read()))
        return found


class AtDelivery(DeliveryServer, unittest.TestCase):
    """Over SMTP, a filter filing into Junk (a stand-in rspamd answering "add header")."""

    @defer.inlineCallbacks
    def test_without_lists_the_filter_files_into_junk(self):
        codes, (code, text) = yield in_thread(send, self.server.port("smtp"), "a@remote.test")
        self.assertEqual(code, 250, text)
        self.assertEqual((len(self.stored("alice@example.test")), len(self.stored("alice@example.test", "Junk"))), (0, 1))

    @defer.inlineCallbacks
    def test_an_allow_listed_sender_is_never_filed_into_junk(self):
        self.lists.add("alice@example.test", ALLOW, "remote.test")
        codes, (code, text) = yield in_thread(send, self.server.port("smtp"), "a@remote.test",
                                              ("alice@example.test", "bob@example.test"))
        self.assertEqual(code, 250, text)
        (message,) = self.stored("alice@example.test")
        self.assertEqual(message["X-Spam-Flag"], "YES")  # the filter's opinion is still there to see
        self.assertEqual(self.stored("alice@example.test", "Junk"), [])
        # Bob did not allow the sender: his copy goes where the filter said.
        self.assertEqual((len(self.stored("bob@example.test")), len(self.stored("bob@example.test", "Junk"))), (0, 1))

    @defer.inlineCallbacks
    def test_the_global_allow_list_counts_for_everyone(self):
        self.lists.add("*", ALLOW, "a@remote.test")
        _, (code, text) = yield in_thread(send, self.server.port("smtp"), "a@remote.test")
        self.assertEqual(code, 250, text)
        self.assertEqual(len(self.stored("alice@example.test")), 1)

    @defer.inlineCallbacks
    def test_a_block_listed_sender_is_refused_at_rcpt(self):
        self.lists.add("alice@example.test", BLOCK, "remote.test")
        codes, data = yield in_thread(send, self.server.port("smtp"), "a@remote.test",
                                      ("alice@example.test", "bob@example.test"))
        self.assertEqual(codes, {"alice@example.test": 550, "bob@example.test": 250})
        self.assertEqual(data[0], 250, data)
        self.assertEqual(self.stored("alice@example.test") + self.stored("alice@example.test", "Junk"), [])
        self.assertEqual(len(self.fake.requests), 1)


class AtDeliveryNoFilter(DeliveryServer, unittest.TestCase):
    """A filter with no opinion ("no action"): only the lists decide."""

    answer = ANSWER

    @defer.inlineCallbacks
    def test_an_alias_member_who_blocks_the_sender_gets_it_in_junk(self):
        self.lists.add("bob@example.test", BLOCK, "remote.test")
        codes, (code, text) = yield in_thread(send, self.server.port("smtp"), "a@remote.test", ("team@example.test",))
        self.assertEqual((codes, code), ({"team@example.test": 250}, 250), text)
        self.assertEqual(len(self.stored("alice@example.test")), 1)
        self.assertEqual((len(self.stored("bob@example.test")), len(self.stored("bob@example.test", "Junk"))), (0, 1))
