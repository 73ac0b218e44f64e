"""
`mailplat quickstart DOMAIN` (issue 12, item 8): a commented production
config for the domain that `mailplat check-config` accepts as written,
a DKIM key, postmaster@DOMAIN with a random password printed once, the
next steps (DNS records, the service user, systemd); an existing config
is never overwritten.
"""

import contextlib
import io
import os
import pwd
import re
import shutil
import tempfile
import tomllib

from twisted.trial import unittest

from mailplat import cli
from mailplat import config as configuration
from mailplat.realm import passwords
from mailplat.realm.passwdfile import PasswdFileRealm


def run_cli(*argv):
    """(exit status, stdout, stderr) of `mailplat ARGV`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(list(argv))
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


class Quickstart(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-quickstart-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.etc = os.path.join(self.dir, "etc")
        self.state = os.path.join(self.dir, "var")
        self.config = os.path.join(self.etc, "mailplat.toml")

    def quickstart(self, *extra, domain="example.org"):
        return run_cli("quickstart", domain, "--dir", self.etc, "--state-dir", self.state, *extra)

    def password(self, out):
        match = re.search(r"shown only this once:\n\n    (\S+)\n", out)
        self.assertIsNotNone(match, out)
        return match.group(1)

    def test_the_config_it_writes_passes_check_config(self):
        status, _, err = self.quickstart()
        self.assertEqual(status, 0, err)
        status, out, err = run_cli("--config", self.config, "check-config")
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"{self.config}: OK", out)

    def test_the_acme_hint_uncommented_passes_check_config_too(self):
        self.quickstart()
        with open(self.config) as f:
            text = f.read()
        self.assertIn("\n# acme = {", text)
        with open(self.config, "w") as f:
            f.write(text.replace("\n# acme = {", "\nacme = {"))
        config = configuration.load(self.config)
        self.assertEqual((config.acme["challenge"], config.acme["domains"]), ("http-01", ["mail.example.org"]))
        status, out, err = run_cli("--config", self.config, "check-config")
        self.assertEqual((status, err), (0, ""))

    def test_standard_ports_on_every_interface_and_http(self):
        self.quickstart()
        with open(self.config, "rb") as f:
            listen = tomllib.load(f)["listen"]
        self.assertEqual(listen, {
            "smtp": "tcp:port=25", "submission": "tcp:port=587", "smtps": "tcp:port=465",
            "imap": "tcp:port=143", "imaps": "tcp:port=993", "pop3": "tcp:port=110", "pop3s": "tcp:port=995",
            "http": "tcp:port=80",
        })

    def test_hostname_domain_state_dir_and_user(self):
        self.quickstart()
        config = configuration.load(self.config)
        self.assertEqual(config.hostname, "mail.example.org")
        self.assertEqual(config.local_domains, ["example.org"])
        self.assertEqual(config.state_dir, self.state)
        self.assertEqual(config.user, "mailplat")

    def test_hostname_and_user_can_be_given(self):
        self.quickstart("--hostname", "mx1.example.org", "--user", "mail-daemon")
        config = configuration.load(self.config)
        self.assertEqual((config.hostname, config.user), ("mx1.example.org", "mail-daemon"))

    def test_the_config_is_commented_and_hints_at_acme(self):
        self.quickstart()
        with open(self.config) as f:
            text = f.read()
        self.assertGreater(sum(1 for line in text.splitlines() if line.lstrip().startswith("#")), 30)
        self.assertIn('# acme = { email = "postmaster@example.org"', text)

    def test_postmaster_is_added_with_the_password_printed_once(self):
        status, out, _ = self.quickstart()
        password = self.password(out)
        self.assertEqual(out.count(password), 1)
        realm = PasswdFileRealm(os.path.join(self.state, "users"))
        stored = realm._current()["postmaster@example.org"]
        self.assertTrue(passwords.verify(stored, password))
        self.assertFalse(stored.startswith("{PLAIN}"))

    def test_each_run_makes_another_password(self):
        _, first, _ = self.quickstart()
        shutil.rmtree(self.dir)
        _, second, _ = self.quickstart()
        self.assertNotEqual(self.password(first), self.password(second))

    def test_a_dkim_key_is_made_and_its_record_printed(self):
        _, out, _ = self.quickstart()
        keys = os.listdir(os.path.join(self.state, "dkim", "example.org"))
        self.assertEqual(len(keys), 1)
        selector = keys[0][: -len(".key")]
        self.assertIn(f"{selector}._domainkey.example.org. IN TXT \"v=DKIM1;", out)

    def test_next_steps_give_the_dns_records_and_systemd(self):
        _, out, _ = self.quickstart("--address", "192.0.2.10")
        self.assertIn("example.org. IN MX 10 mail.example.org.", out)
        self.assertIn("mail.example.org. IN A 192.0.2.10", out)
        self.assertIn('_dmarc.example.org. IN TXT "v=DMARC1;', out)
        self.assertIn("etc/mailplat.service", out)
        self.assertIn("systemctl daemon-reload && systemctl enable --now mailplat", out)
        self.assertIn("autoconfig.example.org", out)

    def test_an_existing_config_is_not_overwritten(self):
        os.makedirs(self.etc)
        with open(self.config, "w") as f:
            f.write("# mine\n")
        status, out, err = self.quickstart()
        self.assertEqual(status, 1)
        self.assertIn(self.config, err)
        self.assertIn("exists", err)
        with open(self.config) as f:
            self.assertEqual(f.read(), "# mine\n")
        self.assertFalse(os.path.exists(self.state))

    def test_a_bad_domain_is_refused_clearly(self):
        status, _, err = self.quickstart(domain="not a domain")
        self.assertEqual(status, 1)
        self.assertIn("domain", err)
        self.assertNotIn("Traceback", err)
        self.assertFalse(os.path.exists(self.config))

    def test_as_root_with_the_user_there_state_dir_is_given_to_it(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("giving files to another user needs root (CI runs as root)")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise unittest.SkipTest("no `nobody` user")
        _, out, _ = self.quickstart("--user", "nobody")
        for path in (self.state, os.path.join(self.state, "users"), os.path.join(self.state, "dkim", "example.org")):
            self.assertEqual(os.stat(path).st_uid, nobody.pw_uid, path)
        self.assertNotIn("useradd", out)

    def test_without_the_user_it_says_how_to_create_it(self):
        _, out, _ = self.quickstart("--user", "no-such-mailplat-user")
        self.assertIn("useradd --system", out)
        self.assertIn(f"chown -R no-such-mailplat-user: {self.state}", out)

    def test_a_kept_state_dir_keeps_its_key_and_postmaster(self):
        _, first, _ = self.quickstart()
        os.unlink(self.config)
        status, second, err = self.quickstart()
        self.assertEqual(status, 0, err)
        self.assertIn("exists already", second)
        self.assertNotIn(self.password(first), second)
        self.assertEqual(len(os.listdir(os.path.join(self.state, "dkim", "example.org"))), 1)
        self.assertIn("Kept the DKIM key", second)


class QuickstartServes(unittest.TestCase):
    """The config quickstart writes starts a server, once its ports are moved to free loopback ones."""

    def test_the_written_config_serves_mail_and_autoconfig(self):
        import signal
        import smtplib
        import socket
        import subprocess
        import sys
        import time
        import urllib.request

        from tests.helpers import free_port

        directory = tempfile.mkdtemp(prefix="mailplat-quickstart-")
        self.addCleanup(shutil.rmtree, directory, True)
        etc, state = os.path.join(directory, "etc"), os.path.join(directory, "var")
        status, _, err = run_cli("quickstart", "example.org", "--dir", etc, "--state-dir", state)
        self.assertEqual(status, 0, err)
        path = os.path.join(etc, "mailplat.toml")
        with open(path) as f:
            text = f.read()
        ports = {}
        for name in ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s", "http"):
            ports[name] = free_port()
            text, n = re.subn(rf'^{name} = "tcp:port=\d+"', f'{name} = "tcp:port={ports[name]}:interface=127.0.0.1"',
                              text, flags=re.M)
            self.assertEqual(n, 1, name)
        text = text.replace('\nuser = "mailplat"\n', "\n")  # run as whoever runs the tests
        text += "\n[authentication]\nverify = false\n"  # no SPF lookups through the machine's resolver
        with open(path, "w") as f:
            f.write(text)
        log = open(os.path.join(directory, "twistd.out"), "wb")
        self.addCleanup(log.close)
        twistd = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
        proc = subprocess.Popen([sys.executable, "-c", twistd, "-n", "--pidfile=", "mailplat", "--config", path],
                                cwd=directory, stdout=log, stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)

        self.addCleanup(stop)
        deadline = time.monotonic() + 60
        while True:
            self.assertIsNone(proc.poll(), "twistd exited early")
            self.assertLess(time.monotonic(), deadline, "twistd did not greet")
            try:
                with socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=1) as s:
                    s.settimeout(10)
                    if s.recv(1):
                        break
            except OSError:
                time.sleep(0.05)
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
            s.sendmail("carol@remote.test", ["postmaster@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
        self.assertEqual(len(os.listdir(os.path.join(state, "mail", "example.org", "postmaster", "new"))), 1)
        url = f"http://127.0.0.1:{ports['http']}/mail/config-v1.1.xml?emailaddress=postmaster%40example.org"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = answer.read()
        self.assertIn(f"<port>{ports['imaps']}</port>".encode(), body)
        self.assertIn(b"<hostname>mail.example.org</hostname>", body)
