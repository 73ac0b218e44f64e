"""
Checks on the wire: a server with [checks] enabled answers each SMTP stage
as its checks decide (connect, HELO, MAIL, RCPT, end of data), and a
"folder" verdict files the message into that folder. Skipped until the SMTP
server calls mailplat.checks.run_stage (SMTPFactory takes `checks`).
"""

import os
import shutil
import smtplib
import sys
import tempfile
import textwrap

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, in_thread


# A check plugin refusing what its section names, at each stage.
SCRIPTED = """
from mailplat.checks import Check, Verdict
from mailplat.plugin import BackendPlugin


class Scripted(Check):
    def __init__(self, section):
        self.section = section

    def connect(self, session):
        if session.client_address in self.section.get("refuse_clients", []):
            return Verdict.reject("no service for you", 554, "5.7.1")

    def helo(self, session, hostname):
        if hostname == self.section.get("refuse_helo"):
            return Verdict.reject("bad HELO", 550, "5.7.1")

    def mail(self, session, sender):
        if sender == self.section.get("tempfail_sender"):
            return Verdict.tempfail("greylisted, try again later", 451, "4.7.1")

    def rcpt(self, session, recipient):
        if recipient in self.section.get("refuse_rcpt", []):
            return Verdict.reject(f"{recipient} does not take mail from {session.sender}", 550, "5.7.1")


scripted = BackendPlugin("check", "scripted", "refuses what its section says (tests)", lambda s, c: Scripted(s))
"""

CHECKS = """
[checks]
enabled = ["scripted", "size", "junk"]

[checks.scripted]
refuse_clients = {refuse_clients}
refuse_helo = "bad.example"
tempfail_sender = "grey@remote.test"
refuse_rcpt = ["bob@example.test"]

[checks.size]
max_size = 2000

[checks.junk]
plugin = "header"
header = "X-Spam-Flag"
match = "^yes$"
action = "folder"
folder = "Junk"
"""

USERS = {"alice@example.test": "pw-a", "bob@example.test": "pw-b"}


class ChecksOnTheWire(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-checks-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.makedirs(os.path.join(self.dir, "plugins"))
        with open(os.path.join(self.dir, "plugins", "mailplat_scripted_check.py"), "w") as f:
            f.write(textwrap.dedent(SCRIPTED))
        sys.path.insert(0, self.dir)
        self.addCleanup(self._forget)

    def _forget(self):
        import plugins

        sys.path.remove(self.dir)
        folder = os.path.join(self.dir, "plugins")
        if folder in plugins.__path__:
            plugins.__path__.remove(folder)
        sys.modules.pop("plugins.mailplat_scripted_check", None)

    def start(self, refuse_clients="[]"):
        server = MailServer(self, listeners=("smtp",), extra=CHECKS.format(refuse_clients=refuse_clients))
        return server.start(users=USERS)

    @defer.inlineCallbacks
    def test_a_refused_client_gets_554_instead_of_the_greeting(self):
        server = yield self.start('["127.0.0.1"]')
        e = yield self.assertFailure(
            in_thread(smtplib.SMTP, "127.0.0.1", server.port("smtp"), timeout=10), smtplib.SMTPConnectError
        )
        self.assertEqual(e.smtp_code, 554)

    @defer.inlineCallbacks
    def test_each_stage_gets_the_checks_answer(self):
        server = yield self.start()

        def session():
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
                helo = s.helo("bad.example")
                s.ehlo("good.example")
                grey = s.mail("grey@remote.test")
                s.mail("carol@remote.test", ["SIZE=5000"])
                big = s.mail("carol@remote.test", ["SIZE=5000"])
                s.rset()
                s.mail("carol@remote.test")
                bob = s.rcpt("bob@example.test")
                alice = s.rcpt("alice@example.test")
                data = s.data(b"Subject: hi\r\n\r\nhello\r\n")
                return helo, grey, big, bob, alice, data

        helo, grey, big, bob, alice, data = yield in_thread(session)
        self.assertEqual(helo[0], 550)
        self.assertEqual((grey[0], grey[1][:5]), (451, b"4.7.1"))
        self.assertEqual(big[0], 552)
        self.assertEqual(bob[0], 550)
        self.assertIn(b"carol@remote.test", bob[1])
        self.assertEqual((alice[0], data[0]), (250, 250))
        self.assertEqual(len(os.listdir(os.path.join(server.maildir("alice@example.test"), "new"))), 1)

    @defer.inlineCallbacks
    def test_a_big_message_is_refused_at_end_of_data(self):
        server = yield self.start()

        def send():
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
                s.ehlo("good.example")
                s.mail("carol@remote.test")
                s.rcpt("alice@example.test")
                return s.data(b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n")

        code, text = yield in_thread(send)
        self.assertEqual(code, 552)
        self.assertFalse(os.path.exists(os.path.join(server.maildir("alice@example.test"), "new")) and os.listdir(
            os.path.join(server.maildir("alice@example.test"), "new")))

    @defer.inlineCallbacks
    def test_a_folder_verdict_files_the_message_into_junk(self):
        server = yield self.start()
        junk = os.path.join(server.maildir("alice@example.test"), ".Junk")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(junk, sub))

        def send(flag):
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
                s.ehlo("good.example")
                return s.sendmail("carol@remote.test", ["alice@example.test"], f"X-Spam-Flag: {flag}\r\nSubject: x\r\n\r\nhi\r\n")

        yield in_thread(send, "YES")
        yield in_thread(send, "NO")
        self.assertEqual(len(os.listdir(os.path.join(junk, "new"))), 1)
        self.assertEqual(len(os.listdir(os.path.join(server.maildir("alice@example.test"), "new"))), 1)
