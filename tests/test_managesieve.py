"""
ManageSieve (RFC 5804) with a real client (sievelib's), over STARTTLS, and
the scripts it uploads filing mail delivered over SMTP, on both stores.
"""

import os
import smtplib
import imaplib
import socket
import ssl

from sievelib import managesieve
from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, in_thread

USER, PASSWORD = "sam@example.test", "pw"

FILING = b"""require ["fileinto"];
if header :contains "subject" "invoice" { fileinto "Bills"; stop; }
if address :domain :is "from" "spam.example" { discard; stop; }
"""


def _accepting(create):
    def context(*args, **kwargs):
        ctx = create(*args, **kwargs)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    return context


class Base(unittest.TestCase):
    store = "maildir"

    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp", "managesieve", "imaps"))
        yield self.server.start(users={USER: PASSWORD})
        self.port = self.server.port("managesieve")
        self._open = []
        # sievelib verifies the certificate; ours is self-signed.
        self.patch(managesieve.ssllib, "create_default_context", _accepting(managesieve.ssllib.create_default_context))

    def client(self):
        """A logged-in client (in a client thread); `close` logs it out there too."""
        c = managesieve.Client("127.0.0.1", self.port)
        self.assertTrue(c.connect(USER, PASSWORD, starttls=True, authmech="PLAIN"), c.errmsg)
        self._open.append(c)
        return c

    def session(self, f):
        """Run `f` in a client thread, logging out every client it opened afterwards."""

        def run():
            try:
                return f()
            finally:
                for c in self._open:
                    try:
                        c.logout()
                    except Exception:
                        pass
                del self._open[:]

        return in_thread(run)

    def send(self, subject, sender="friend@example.org"):
        def run():
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
                s.sendmail(sender, [USER], f"From: {sender}\r\nSubject: {subject}\r\n\r\nhello\r\n".encode())

        return in_thread(run)

    def folder_messages(self, folder):
        if self.store == "mbox":
            path = self.server.mbox(USER, folder)
            if not os.path.exists(path):
                return 0
            with open(path, "rb") as f:
                return sum(1 for line in f if line.startswith(b"From "))
        base = self.server.maildir(USER)
        path = base if folder == "INBOX" else os.path.join(base, "." + folder)
        return sum(len(os.listdir(os.path.join(path, sub))) for sub in ("new", "cur") if os.path.isdir(os.path.join(path, sub)))


class Protocol(Base):
    @defer.inlineCallbacks
    def test_capabilities_and_login_over_starttls(self):
        def run():
            c = self.client()
            return c.get_implementation(), c.get_sieve_capabilities()

        implementation, sieve = yield self.session(run)
        self.assertEqual(implementation, "mailplat")
        self.assertIn("fileinto", sieve)
        self.assertIn("imap4flags", sieve)
        for name in ("spamtest", "spamtestplus", "virustest"):  # RFC 5235, fed by the checks' scores
            self.assertIn(name, sieve)

    @defer.inlineCallbacks
    def test_no_login_before_tls(self):
        def run():
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            f = s.makefile("rb")
            greeting = []
            while True:
                line = f.readline()
                greeting.append(line)
                if line.startswith(b"OK"):
                    break
            s.sendall(b'AUTHENTICATE "PLAIN" "AHNhbUBleGFtcGxlLnRlc3QAcHc="\r\n')
            answer = f.readline()
            s.close()
            return b"".join(greeting), answer

        greeting, answer = yield self.session(run)
        self.assertIn(b'"STARTTLS"', greeting)
        self.assertNotIn(b'"SASL" "PLAIN"', greeting)
        self.assertTrue(answer.startswith(b"NO (ENCRYPT-NEEDED)"), answer)

    @defer.inlineCallbacks
    def test_put_list_get_activate_rename_delete(self):
        def run():
            c = self.client()
            self.assertTrue(c.havespace("filing", len(FILING)))
            self.assertTrue(c.putscript("filing", FILING.decode()))
            self.assertTrue(c.putscript("other", "keep;"))
            self.assertTrue(c.setactive("filing"))
            active, others = c.listscripts()
            script = c.getscript("filing")
            self.assertFalse(c.deletescript("filing"))  # the active one
            self.assertTrue(c.renamescript("other", "second"))
            self.assertTrue(c.deletescript("second"))
            return active, others, script, c.listscripts()

        active, others, script, after = yield self.session(run)
        self.assertEqual((active, others), ("filing", ["other"]))
        self.assertEqual(script.encode(), FILING[:-1])  # sievelib drops the last line end
        self.assertEqual(after, ("filing", []))
        home = os.path.join(self.server.state, "home", "example.test", "sam")
        # Pigeonhole's layout: a Dovecot user's scripts work unchanged, and back.
        self.assertEqual(os.readlink(os.path.join(home, ".dovecot.sieve")), os.path.join("sieve", "filing.sieve"))

    @defer.inlineCallbacks
    def test_a_bad_script_is_refused_with_its_line_and_column(self):
        def run():
            c = self.client()
            ok = c.putscript("bad", 'require "fileinto";\nfileinto "A"\nkeep;\n')
            checked = c.checkscript('if true { keep; }')
            return ok, c.errmsg, checked, c.listscripts()

        ok, errmsg, checked, listing = yield self.session(run)
        self.assertFalse(ok)
        self.assertIn(b"line 3, column 1", errmsg)
        self.assertTrue(checked)
        self.assertEqual(listing, (None, []))  # nothing written

    @defer.inlineCallbacks
    def test_quota_in_number_of_scripts(self):
        from mailplat.sieve import storage

        def run():
            c = self.client()
            for i in range(storage.MAX_SCRIPTS):
                self.assertTrue(c.putscript(f"s{i}", "keep;"))
            return c.putscript("one-too-many", "keep;"), c.errmsg

        ok, errmsg = yield self.session(run)
        self.assertFalse(ok)


class Filing(Base):
    @defer.inlineCallbacks
    def test_uploaded_script_files_delivered_mail(self):
        def upload():
            c = self.client()
            c.putscript("filing", FILING.decode())
            c.setactive("filing")

        def create():
            with imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls()) as c:
                c.login(USER, PASSWORD)
                c.create("Bills")

        yield self.session(upload)
        yield in_thread(create)
        yield self.send("Your invoice")
        yield self.send("hello there")
        yield self.send("buy now", sender="bulk@spam.example")
        self.assertEqual(self.folder_messages("Bills"), 1)
        self.assertEqual(self.folder_messages("INBOX"), 1)

    @defer.inlineCallbacks
    def test_a_script_that_breaks_keeps_the_mail(self):
        home = os.path.join(self.server.state, "home", "example.test", "sam")
        os.makedirs(os.path.join(home, "sieve"))
        with open(os.path.join(home, "sieve", "broken.sieve"), "w") as f:
            f.write("this is not sieve")
        os.symlink(os.path.join("sieve", "broken.sieve"), os.path.join(home, ".dovecot.sieve"))
        yield self.send("anything")
        self.assertEqual(self.folder_messages("INBOX"), 1)


class FilingMbox(Filing):
    store = "mbox"


del Base

