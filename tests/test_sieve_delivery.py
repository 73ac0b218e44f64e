"""
What Sieve scripts do at delivery, over real SMTP: vacation replies once
per sender through the relay queue (and never to lists), redirect with
its loop guard, reject at SMTP time for one recipient and as a notice for
several, discard, and the Junk verdict of a check as the script's keep.
"""

import os
import smtplib
import time

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.helpers import MailServer, in_thread

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


class Scripts(unittest.TestCase):
    store = "maildir"
    relay = True

    sieve_extra = ""

    @defer.inlineCallbacks
    def setUp(self):
        extra = ('[relay]\nretry_first = 1\n' if self.relay else "") + self.sieve_extra
        self.server = MailServer(self, listeners=("smtp",), extra=extra)
        yield self.server.start(users={ALICE: "pw", BOB: "pw", CAROL: "pw"})

    def script(self, user, text):
        local, domain = user.split("@")
        home = os.path.join(self.server.state, "home", domain, local)
        os.makedirs(os.path.join(home, "sieve"), exist_ok=True)
        with open(os.path.join(home, "sieve", "main.sieve"), "w") as f:
            f.write(text)
        link = os.path.join(home, ".dovecot.sieve")
        if not os.path.islink(link):
            os.symlink(os.path.join("sieve", "main.sieve"), link)

    def send(self, sender, recipients, subject="hello", extra=""):
        def run():
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
                body = f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n{extra}\r\nhi\r\n"
                try:
                    s.sendmail(sender, recipients, body.encode())
                except smtplib.SMTPDataError as e:
                    return e.smtp_code, e.smtp_error
                return 250, b""

        return in_thread(run)

    def messages(self, user, folder="INBOX"):
        base = self.server.maildir(user)
        path = base if folder == "INBOX" else os.path.join(base, "." + folder)
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(path, sub)
            if os.path.isdir(d):
                for name in sorted(os.listdir(d)):
                    with open(os.path.join(d, name), "rb") as f:
                        out.append(f.read())
        return out

    @defer.inlineCallbacks
    def wait_for(self, user, count, folder="INBOX", seconds=15):
        deadline = time.time() + seconds
        while len(self.messages(user, folder)) < count and time.time() < deadline:
            yield deferLater(reactor, 0.1, lambda: None)
        return self.messages(user, folder)


class Vacation(Scripts):
    @defer.inlineCallbacks
    def test_one_reply_per_sender_and_period(self):
        self.script(ALICE, 'require "vacation";\nvacation :days 1 :subject "Away" "Back on Monday.";\n')
        yield self.send(BOB, [ALICE], subject="first")
        replies = yield self.wait_for(BOB, 1)
        self.assertEqual(len(replies), 1)
        reply = replies[0]
        self.assertIn(b"Subject: Away", reply)
        self.assertIn(b"Auto-Submitted: auto-replied", reply)
        self.assertIn(b"Back on Monday.", reply)
        self.assertIn(b"Return-Path: <>", reply)  # the null envelope sender (RFC 5230 5)
        yield self.send(BOB, [ALICE], subject="second")
        yield self.wait_for(ALICE, 2)
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(len(self.messages(BOB)), 1)  # remembered: no second reply
        self.assertEqual(len(self.messages(ALICE)), 2)  # vacation keeps the mail

    @defer.inlineCallbacks
    def test_no_reply_to_a_list(self):
        self.script(ALICE, 'require "vacation";\nvacation "away";\n')
        yield self.send(BOB, [ALICE], extra="List-Id: <x.lists.example.test>\r\n")
        yield self.wait_for(ALICE, 1)
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(self.messages(BOB), [])


    @defer.inlineCallbacks
    def test_no_reply_to_oneself_or_the_null_sender(self):
        self.script(ALICE, 'require "vacation";\nvacation "away";\n')
        yield self.send(ALICE, [ALICE], subject="note to self")
        yield self.send("", [ALICE], subject="bounce")
        yield self.wait_for(ALICE, 2)
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(len(self.messages(ALICE)), 2)  # the two messages, no reply among them


class Redirect(Scripts):
    @defer.inlineCallbacks
    def test_redirect_sends_it_on(self):
        self.script(ALICE, f'redirect "{BOB}";\n')
        yield self.send(CAROL, [ALICE], subject="for bob")
        got = yield self.wait_for(BOB, 1)
        self.assertIn(b"Subject: for bob", got[0])
        self.assertIn(b"Delivered-To: alice@example.test", got[0])
        self.assertEqual(self.messages(ALICE), [])

    @defer.inlineCallbacks
    def test_a_redirect_loop_stops_and_keeps_the_message(self):
        self.script(ALICE, f'redirect "{BOB}";\n')
        self.script(BOB, f'redirect "{ALICE}";\n')
        yield self.send(CAROL, [ALICE], subject="loop")
        kept = yield self.wait_for(ALICE, 1)
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(len(kept), 1)
        self.assertEqual(len(self.messages(ALICE)), 1)
        self.assertEqual(self.messages(BOB), [])


class Reject(Scripts):
    @defer.inlineCallbacks
    def test_reject_for_one_recipient_is_the_smtp_reply(self):
        self.script(ALICE, 'require "reject";\nreject "I do not want this.";\n')
        code, text = yield self.send(BOB, [ALICE])
        self.assertEqual(code, 550)
        self.assertIn(b"I do not want this.", text)
        self.assertEqual(self.messages(ALICE), [])

    @defer.inlineCallbacks
    def test_reject_among_several_recipients_sends_a_notice(self):
        self.script(ALICE, 'require "reject";\nreject "No thanks.";\n')
        code, _ = yield self.send(BOB, [ALICE, CAROL], subject="to two")
        self.assertEqual(code, 250)
        self.assertEqual(len((yield self.wait_for(CAROL, 1))), 1)
        notice = yield self.wait_for(BOB, 1)
        self.assertIn(b"Subject: Rejected: to two", notice[0])
        self.assertIn(b"No thanks.", notice[0])
        self.assertEqual(self.messages(ALICE), [])


class Discard(Scripts):
    @defer.inlineCallbacks
    def test_discard(self):
        self.script(ALICE, 'if header :contains "subject" "spam" { discard; }\n')
        code, _ = yield self.send(BOB, [ALICE], subject="spam offer")
        self.assertEqual(code, 250)
        yield self.send(BOB, [ALICE], subject="real")
        self.assertEqual(len(self.messages(ALICE)), 1)


class Chain(Scripts):
    def write(self, path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    @defer.inlineCallbacks
    def test_include_return_and_global_variables(self):
        home = os.path.join(self.server.state, "home", "example.test", "alice")
        self.write(os.path.join(home, "sieve", "lists.sieve"),
                   'require ["include", "variables", "fileinto"];\nglobal "box";\n'
                   'if header :contains "subject" "list" { fileinto "${box}"; stop; }\nreturn;\ndiscard;\n')
        self.script(ALICE, 'require ["include", "variables"];\nglobal "box";\nset "box" "Lists";\n'
                    'include :personal "lists";\ninclude :optional "missing";\n')
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.server.maildir(ALICE), ".Lists", sub))
        yield self.send(BOB, [ALICE], subject="a list post")
        yield self.send(BOB, [ALICE], subject="personal")
        self.assertEqual(len(self.messages(ALICE, "Lists")), 1)  # the global variable reached the included script
        self.assertEqual(len(self.messages(ALICE)), 1)  # `return` skipped the discard

    @defer.inlineCallbacks
    def test_an_include_loop_keeps_the_message(self):
        home = os.path.join(self.server.state, "home", "example.test", "alice")
        self.write(os.path.join(home, "sieve", "a.sieve"), 'require "include";\ninclude "b";\ndiscard;\n')
        self.write(os.path.join(home, "sieve", "b.sieve"), 'require "include";\ninclude "a";\n')
        self.script(ALICE, 'require "include";\ninclude "a";\n')
        yield self.send(BOB, [ALICE])
        self.assertEqual(len(self.messages(ALICE)), 1)

    @defer.inlineCallbacks
    def test_duplicate_message_ids_are_dropped(self):
        self.script(ALICE, 'require "duplicate";\nif duplicate { discard; }\n')
        for _ in range(2):
            yield self.send(BOB, [ALICE], extra="Message-ID: <same@example.test>\r\n")
        yield self.send(BOB, [ALICE], extra="Message-ID: <other@example.test>\r\n")
        self.assertEqual(len(self.messages(ALICE)), 2)


class BeforeAndAfter(Scripts):
    sieve_extra = '[sieve]\nbefore = "before.sieve"\nafter = ["after.sieve"]\n'

    @defer.inlineCallbacks
    def test_global_scripts_run_around_the_users(self):
        with open(os.path.join(self.server.dir, "before.sieve"), "w") as f:
            f.write('if header :is "x-spam" "yes" { discard; stop; }\n')
        with open(os.path.join(self.server.dir, "after.sieve"), "w") as f:
            f.write('require "fileinto";\nif header :contains "subject" "late" { fileinto "INBOX"; }\n')
        self.script(ALICE, 'require "fileinto";\nif header :contains "subject" "keepme" { keep; }\n')
        yield self.send(BOB, [ALICE], subject="spam", extra="X-Spam: yes\r\n")  # stopped by before
        yield self.send(BOB, [ALICE], subject="keepme")
        yield self.send(CAROL, [ALICE], subject="late")  # carol has no script: the chain still runs
        self.assertEqual(len(self.messages(ALICE)), 2)
        yield self.send(BOB, [CAROL], subject="spam", extra="X-Spam: yes\r\n")
        self.assertEqual(self.messages(CAROL), [])  # before applies to users without a script


class EditHeader(Scripts):
    @defer.inlineCallbacks
    def test_the_stored_copy_and_a_redirect_carry_the_edits(self):
        self.script(ALICE, f'require ["editheader", "copy"];\ndeleteheader "x-secret";\n'
                           f'addheader "X-Filed-By" "alice\'s rules";\nredirect :copy "{BOB}";\n')
        yield self.send(CAROL, [ALICE], subject="edited", extra="X-Secret: 42\r\n")
        kept = self.messages(ALICE)[0]
        self.assertTrue(kept.startswith(b"X-Filed-By: alice's rules\n"), kept[:80])
        self.assertNotIn(b"X-Secret", kept)
        self.assertIn(b"Return-Path: <carol@example.test>", kept)
        self.assertTrue(kept.endswith(b"\n\nhi\n"), kept[-40:])  # the body after the new header, whole
        sent = (yield self.wait_for(BOB, 1))[0]
        self.assertIn(b"X-Filed-By: alice's rules", sent)
        self.assertNotIn(b"X-Secret", sent)
        self.assertEqual(sent.count(b"Return-Path:"), 1)  # bob's own, not alice's

    @defer.inlineCallbacks
    def test_received_is_protected(self):
        self.script(ALICE, 'require "editheader";\ndeleteheader "received";\naddheader "Received" "forged";\n')
        yield self.send(CAROL, [ALICE])
        kept = self.messages(ALICE)[0]
        self.assertIn(b"Received: from", kept)
        self.assertNotIn(b"forged", kept)


class NoRelay(Scripts):
    relay = False

    @defer.inlineCallbacks
    def test_without_a_relay_queue_a_redirect_keeps_the_message(self):
        self.script(ALICE, f'redirect "{BOB}";\n')
        yield self.send(CAROL, [ALICE])
        self.assertEqual(len(self.messages(ALICE)), 1)


del Scripts
