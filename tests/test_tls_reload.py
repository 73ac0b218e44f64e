"""
Certificates reload without a restart: replacing the PEM files (as certbot
or an operator would) and sending SIGHUP hands new connections the new
certificate, while connections already open keep theirs; a broken
replacement is refused, logged, and the old certificate stays.
"""

import os
import signal
import socket
import time

from cryptography import x509
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mailplat import tls
from tests.helpers import MailServer, client_tls, collect_log, free_port, in_thread


def served(port):
    """The certificate a new TLS client sees on `port`, and the greeting it reads."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_tls().wrap_socket(raw, server_hostname="localhost") as s:
            greeting = s.recv(100)
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)), greeting


def common_name(cert):
    return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value


class ReloadTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.log = collect_log(self)
        self.server = MailServer(self, listeners=("smtp", "imaps", "submission"))
        yield self.server.start()
        self.cert_path = self.server.config.tls_certificate
        self.key_path = self.server.config.tls_key

    def replace(self, hostname):
        """Write a new pair over the files, as an outside renewal would."""
        tmp_cert, tmp_key = self.cert_path + ".tmp", self.key_path + ".tmp"
        tls.make_self_signed(tmp_cert, tmp_key, hostname)
        os.replace(tmp_key, self.key_path)
        os.replace(tmp_cert, self.cert_path)

    @defer.inlineCallbacks
    def wait_for_name(self, name, port, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            cert, _ = yield in_thread(served, port)
            if common_name(cert) == name or time.monotonic() > deadline:
                return cert
            yield deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def test_sighup_serves_replaced_files_to_new_connections(self):
        port = self.server.port("imaps")
        before, _ = yield in_thread(served, port)
        self.assertEqual(common_name(before), "mail.example.test")
        self.replace("renewed.example.test")
        # The handler is this server's (else SIGHUP would end the test process).
        handler = signal.getsignal(signal.SIGHUP)
        self.assertEqual(getattr(getattr(handler, "__self__", None), "reload", None), self.server.service.reload)
        os.kill(os.getpid(), signal.SIGHUP)
        after = yield self.wait_for_name("renewed.example.test", port)
        self.assertEqual(common_name(after), "renewed.example.test")
        self.assertTrue([t for t in self.log if t.startswith("reload signal=HUP")], self.log)
        self.assertTrue([t for t in self.log if t.startswith("certificate-loaded ") and "renewed.example.test" in t])

    @defer.inlineCallbacks
    def test_without_reload_files_are_not_reread(self):
        port = self.server.port("imaps")
        self.replace("renewed.example.test")
        cert, _ = yield in_thread(served, port)
        self.assertEqual(common_name(cert), "mail.example.test")

    @defer.inlineCallbacks
    def test_open_connection_keeps_its_certificate(self):
        port = self.server.port("imaps")

        def open_session():
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            s = client_tls().wrap_socket(raw, server_hostname="localhost")
            s.makefile("rb").readline()  # the greeting
            return s

        old = yield in_thread(open_session)
        self.addCleanup(old.close)
        self.replace("renewed.example.test")
        self.server.service.reload()
        after, _ = yield in_thread(served, port)
        self.assertEqual(common_name(after), "renewed.example.test")

        def noop():
            old.sendall(b"a1 NOOP\r\n")
            lines = old.makefile("rb")
            while True:
                line = lines.readline()
                if not line or line.startswith(b"a1 "):
                    return line

        answer = yield in_thread(noop)
        self.assertIn(b"a1 OK", answer)
        self.assertEqual(common_name(x509.load_der_x509_certificate(old.getpeercert(binary_form=True))), "mail.example.test")

    @defer.inlineCallbacks
    def test_starttls_gets_reloaded_certificate(self):
        import smtplib

        self.replace("renewed.example.test")
        self.server.service.reload()

        def starttls():
            with smtplib.SMTP("127.0.0.1", self.server.port("submission"), timeout=10) as c:
                c.starttls(context=client_tls())
                return x509.load_der_x509_certificate(c.sock.getpeercert(binary_form=True))

        cert = yield in_thread(starttls)
        self.assertEqual(common_name(cert), "renewed.example.test")

    @defer.inlineCallbacks
    def test_broken_replacement_is_refused_and_old_certificate_stays(self):
        port = self.server.port("imaps")
        with open(self.cert_path, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        self.server.service.reload()
        cert, greeting = yield in_thread(served, port)
        self.assertEqual(common_name(cert), "mail.example.test")
        self.assertTrue(greeting.startswith(b"* OK"))
        failed = [t for t in self.log if t.startswith("certificate-reload-failed ")]
        self.assertTrue(failed, self.log)
        self.assertIn("tls.certificate", failed[-1])
        self.assertIn(self.cert_path, failed[-1])

    @defer.inlineCallbacks
    def test_mismatched_key_is_refused(self):
        port = self.server.port("imaps")
        other_cert, other_key = self.cert_path + ".o", self.key_path + ".o"
        tls.make_self_signed(other_cert, other_key, "other.example.test")
        os.replace(other_cert, self.cert_path)  # the key stays the old one
        self.server.service.reload()
        cert, _ = yield in_thread(served, port)
        self.assertEqual(common_name(cert), "mail.example.test")
        self.assertTrue([t for t in self.log if t.startswith("certificate-reload-failed ")], self.log)

    def test_stopping_restores_the_previous_handler(self):
        handler = signal.getsignal(signal.SIGHUP)
        self.assertEqual(type(getattr(handler, "__self__", None)).__name__, "HangupReload")
        d = defer.maybeDeferred(self.server.service.stopService)

        def check(_):
            self.assertNotEqual(type(getattr(signal.getsignal(signal.SIGHUP), "__self__", None)).__name__, "HangupReload")

        return d.addCallback(check)



class ConfigReloadTests(unittest.TestCase):
    """What a reload takes from the config file, and what it says needs a restart."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.log = collect_log(self)
        self.server = MailServer(self, listeners=("smtp", "imaps"))
        yield self.server.start()

    def edit(self, old, new):
        with open(self.server.config_path) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(self.server.config_path, "w") as f:
            f.write(text.replace(old, new, 1))

    def lines(self, what):
        return [t for t in self.log if t.startswith(what + " ")]

    @defer.inlineCallbacks
    def test_new_certificate_paths_are_served(self):
        d = os.path.join(self.server.dir, "elsewhere")
        os.makedirs(d)
        cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        tls.make_self_signed(cert, key, "moved.example.test")
        with open(self.server.config_path, "a") as f:
            f.write(f'\n[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
        self.server.service.reload()
        served_now, _ = yield in_thread(served, self.server.port("imaps"))
        self.assertEqual(common_name(served_now), "moved.example.test")
        self.assertEqual(self.lines("reload-needs-restart"), [])

    def test_changed_key_outside_tls_is_named_as_needing_a_restart(self):
        with open(self.server.config_path, "a") as f:
            f.write("\n[limits]\nmessage_size = 1000\n")
        self.server.service.reload()
        needs = self.lines("reload-needs-restart")
        self.assertEqual(len(needs), 1, self.log)
        self.assertIn("keys=limits", needs[0])

    def test_changed_plaintext_auth_is_named(self):
        with open(self.server.config_path, "a") as f:
            f.write("\n[tls]\nallow_plaintext_auth = true\n")
        self.server.service.reload()
        self.assertIn("keys=tls.allow_plaintext_auth", self.lines("reload-needs-restart")[0])

    @defer.inlineCallbacks
    def test_broken_config_is_named_and_the_server_goes_on(self):
        with open(self.server.config_path, "a") as f:
            f.write("\n[tls]\ncertifcate = 3\n")
        self.server.service.reload()
        failed = self.lines("reload-failed")
        self.assertTrue(failed, self.log)
        self.assertIn("tls.certifcate: unknown key (did you mean certificate?)", failed[0])
        cert, greeting = yield in_thread(served, self.server.port("imaps"))
        self.assertTrue(greeting.startswith(b"* OK"))
        self.assertEqual(common_name(cert), "mail.example.test")


class TwistdHangup(unittest.TestCase):
    """`kill -HUP` on a server run by twistd, as an operator (or certbot's deploy hook) would send it."""

    timeout = 90

    def test_kill_hup_reloads_certificate_in_twistd(self):
        import shutil
        import subprocess
        import tempfile

        from tests.test_twistd import TWISTD

        d = tempfile.mkdtemp(prefix="mailplat-hup-")
        self.addCleanup(shutil.rmtree, d, True)
        smtp, imaps = free_port(), free_port()
        with open(os.path.join(d, "users"), "w") as f:
            f.write("alice@example.test:{PLAIN}alice-pw\n")
        with open(os.path.join(d, "mailplat.toml"), "w") as f:
            f.write(
                '[server]\nhostname = "mail.example.test"\nstate_dir = "var"\n[domains]\nlocal = ["example.test"]\n'
                f'[listen]\nsmtp = "tcp:port={smtp}:interface=127.0.0.1"\nimaps = "tcp:port={imaps}:interface=127.0.0.1"\n'
                '[realm]\nbackend = "passwd-file"\npath = "users"\n'
            )
        out = open(os.path.join(d, "twistd.out"), "wb")
        self.addCleanup(out.close)
        proc = subprocess.Popen(TWISTD + ["-n", "--pidfile=", "mailplat", "--config", "mailplat.toml"], cwd=d,
                                stdout=out, stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

        self.addCleanup(stop)

        def log():
            with open(os.path.join(d, "twistd.out"), "rb") as f:
                return f.read().decode("utf-8", "replace")

        deadline = time.monotonic() + 30
        while True:
            self.assertIsNone(proc.poll(), log())
            try:
                cert, greeting = served(imaps)
                if greeting:
                    break
            except OSError:
                pass
            self.assertLess(time.monotonic(), deadline, log())
            time.sleep(0.1)
        self.assertEqual(common_name(cert), "mail.example.test")
        cert_path, key_path = os.path.join(d, "var", "tls", "cert.pem"), os.path.join(d, "var", "tls", "key.pem")
        tls.make_self_signed(cert_path + ".tmp", key_path + ".tmp", "renewed.example.test")
        os.replace(key_path + ".tmp", key_path)
        os.replace(cert_path + ".tmp", cert_path)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while common_name(served(imaps)[0]) != "renewed.example.test":
            self.assertIsNone(proc.poll(), log())  # SIGHUP did not end it
            self.assertLess(time.monotonic(), deadline, log())
            time.sleep(0.1)
        self.assertIsNone(proc.poll())
