"""
Recipient resolution over SMTP (issue 4): the aliases file, plus-addressing,
postmaster, and loops.
"""

import os
import smtplib
import time

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.delivery.aliases import parse
from tests.helpers import LineClient, MailServer, in_thread
from tests.test_smtp_extensions import delivered

USERS = {"alice@example.test": "pw-a", "bob@example.test": "pw-b", "carol@example.org": "pw-c"}


def aliased_server(testcase, aliases):
    server = MailServer(testcase)
    path = os.path.join(server.dir, "aliases")
    with open(path, "w") as f:
        f.write(aliases)
    server.extra = f'[aliases]\npath = "{path}"\n'
    server.aliases_path = path
    return server


def send(server, recipients, body=b"Subject: t\r\n\r\nhello\r\n", port="smtp"):
    def run():
        with smtplib.SMTP("127.0.0.1", server.port(port)) as s:
            return s.sendmail("someone@remote.test", recipients, body)

    return in_thread(run)


def rcpt_reply(server, address):
    def run():
        c = LineClient(server.port("smtp"))
        c.smtp_reply()
        c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<" + address.encode() + b">\r\n")
        c.smtp_reply()
        c.smtp_reply()
        reply = c.smtp_reply()
        c.close()
        return reply

    return in_thread(run)


class AliasFile(unittest.TestCase):
    def test_lines_are_parsed_with_comments_and_commas(self):
        table, problems = parse(
            "# team\nteam@example.test: alice@example.test, bob@example.test # both\n\n"
            "sales@example.test:carol@example.org\n",
            "aliases",
        )
        self.assertEqual(
            table,
            {
                "team@example.test": ["alice@example.test", "bob@example.test"],
                "sales@example.test": ["carol@example.org"],
            },
        )
        self.assertEqual(problems, [])

    def test_broken_line_is_named_by_number_and_others_kept(self):
        table, problems = parse("good@example.test: alice@example.test\nno colon here\nx@example.test: not-an-address\n", "etc/aliases")
        self.assertEqual(list(table), ["good@example.test"])
        self.assertEqual(len(problems), 2)
        self.assertTrue(problems[0].startswith("etc/aliases:2:"))
        self.assertTrue(problems[1].startswith("etc/aliases:3:"))


class Aliases(unittest.TestCase):
    @defer.inlineCallbacks
    def test_alias_fans_out_to_every_target_once(self):
        server = yield aliased_server(
            self,
            "team@example.test: alice@example.test, bob@example.test\n"
            "all@example.test: team@example.test, alice@example.test\n",
        ).start(users=USERS)
        yield send(server, ["all@example.test"])
        self.assertEqual(len(delivered(server, "alice@example.test")), 1)
        self.assertEqual(len(delivered(server, "bob@example.test")), 1)

    @defer.inlineCallbacks
    def test_the_same_user_reached_twice_in_one_message_gets_one_copy(self):
        server = yield aliased_server(self, "team@example.test: alice@example.test\n").start(users=USERS)
        yield send(server, ["team@example.test", "alice@example.test"])
        self.assertEqual(len(delivered(server, "alice@example.test")), 1)

    @defer.inlineCallbacks
    def test_alias_loop_reaching_nobody_is_refused_at_rcpt(self):
        server = yield aliased_server(
            self, "a@example.test: b@example.test\nb@example.test: a@example.test\n"
        ).start(users=USERS)
        code, lines = yield rcpt_reply(server, "a@example.test")
        self.assertEqual(code, 550)
        self.assertTrue(lines[0].startswith("5.4.6"), lines)
        self.assertIn("loop", lines[0])

    @defer.inlineCallbacks
    def test_alias_naming_itself_still_reaches_the_user_and_the_others(self):
        server = yield aliased_server(
            self, "alice@example.test: alice@example.test, bob@example.test\n"
        ).start(users=USERS)
        yield send(server, ["alice@example.test"])
        self.assertEqual(len(delivered(server, "alice@example.test")), 1)
        self.assertEqual(len(delivered(server, "bob@example.test")), 1)

    @defer.inlineCallbacks
    def test_aliases_file_is_reread_when_it_changes(self):
        server = yield aliased_server(self, "old@example.test: alice@example.test\n").start(users=USERS)
        code, _ = yield rcpt_reply(server, "new@example.test")
        self.assertEqual(code, 550)
        with open(server.aliases_path, "a") as f:
            f.write("new@example.test: bob@example.test\n")
        # mtime granularity: make sure the change is visible as a change
        os.utime(server.aliases_path, (time.time() + 2, time.time() + 2))
        yield send(server, ["new@example.test"])
        self.assertEqual(len(delivered(server, "bob@example.test")), 1)

    @defer.inlineCallbacks
    def test_alias_to_a_remote_address_is_refused_while_relay_is_not_configured(self):
        server = yield aliased_server(self, "fwd@example.test: someone@elsewhere.test\n").start(users=USERS)
        code, lines = yield rcpt_reply(server, "fwd@example.test")
        self.assertEqual(code, 550)
        self.assertIn("relay", lines[0])


class Postmaster(unittest.TestCase):
    @defer.inlineCallbacks
    def test_postmaster_of_every_local_domain_is_accepted_without_a_user(self):
        server = yield MailServer(self).start(users=USERS)
        for domain in ("example.test", "example.org"):
            code, _ = yield rcpt_reply(server, f"postmaster@{domain}")
            self.assertEqual(code, 250, domain)
        yield send(server, ["Postmaster@example.org"])
        self.assertEqual(len(delivered(server, "postmaster@example.org")), 1)

    @defer.inlineCallbacks
    def test_postmaster_alias_is_followed(self):
        server = yield aliased_server(self, "postmaster@example.test: alice@example.test\n").start(users=USERS)
        yield send(server, ["postmaster@example.test"])
        self.assertEqual(len(delivered(server, "alice@example.test")), 1)


class PlusAddressing(unittest.TestCase):
    @defer.inlineCallbacks
    def test_plus_tag_reaches_the_user(self):
        server = yield MailServer(self).start(users=USERS)
        yield send(server, ["alice+anything@example.test"])
        self.assertEqual(len(delivered(server, "alice@example.test")), 1)

    @defer.inlineCallbacks
    def test_plus_tag_naming_an_existing_folder_delivers_there(self):
        server = yield MailServer(self).start(users=USERS)
        folder = os.path.join(server.maildir("alice@example.test"), ".lists")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(folder, sub))
        yield send(server, ["alice+lists@example.test"])
        self.assertEqual(len(os.listdir(os.path.join(folder, "new"))), 1)
        self.assertEqual(delivered(server, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_plus_tag_of_an_unknown_user_is_refused(self):
        server = yield MailServer(self).start(users=USERS)
        code, lines = yield rcpt_reply(server, "nobody+x@example.test")
        self.assertEqual(code, 550)
        self.assertTrue(lines[0].startswith("5.1.1"))

    @defer.inlineCallbacks
    def test_delimiter_is_configurable(self):
        server = MailServer(self)
        text = server.config_text
        server.config_text = lambda: text().replace('local = "maildir"', 'local = "maildir"\nrecipient_delimiter = "-"')
        yield server.start(users=USERS)
        yield send(server, ["bob-news@example.test"])
        self.assertEqual(len(delivered(server, "bob@example.test")), 1)
