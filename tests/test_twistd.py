"""
`twistd -n mailplat`: the twistd plugin, run as a separate process on free
loopback ports, the way an operator starts the server.
"""

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from tests.helpers import free_port

# twistd of this interpreter, wherever its script is installed.
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]

CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port={smtp}:interface=127.0.0.1"
pop3 = "tcp:port={pop3}:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "users"
"""


class Twistd(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-twistd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "mailplat.toml")
        self.log = os.path.join(self.dir, "twistd.out")
        with open(os.path.join(self.dir, "users"), "w") as f:
            f.write("alice@example.test:{PLAIN}alice-pw\n")

    def write_config(self, text):
        with open(self.config, "w") as f:
            f.write(text)

    def run_twistd(self, *args, timeout=30):
        """Run to completion; (exit status, everything it printed)."""
        done = subprocess.run(
            TWISTD + ["-n", "--pidfile=", "mailplat", *args],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done.returncode, done.stdout + done.stderr

    def start_twistd(self, *args):
        """Start in the background; stopped (and waited for) when the test ends."""
        out = open(self.log, "wb")
        self.addCleanup(out.close)
        proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "mailplat", *args], cwd=self.dir, stdout=out, stderr=subprocess.STDOUT
        )

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

        self.addCleanup(stop)
        return proc

    def output(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for_port(self, proc, port, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.fail(f"twistd exited with {proc.returncode}:\n{self.output()}")
            # The ports are bound before the server is built: it is ready
            # when it greets (220 / +OK), not when a connection is taken.
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.settimeout(5)
                    if s.recv(1):
                        return
            except OSError:
                time.sleep(0.05)
        self.fail(f"twistd did not listen on {port} within {timeout} s:\n{self.output()}")

    def start_good(self):
        smtp, pop3 = free_port(), free_port()
        self.write_config(CONFIG.format(smtp=smtp, pop3=pop3))
        proc = self.start_twistd("--config", self.config)
        self.wait_for_port(proc, smtp)
        self.wait_for_port(proc, pop3)
        return proc, smtp

    def test_good_config_starts_and_accepts_mail_over_smtp(self):
        proc, smtp = self.start_good()
        with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as s:
            code, _ = s.ehlo("client.test")
            self.assertEqual(code, 250)
            s.sendmail("carol@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
        new = os.path.join(self.dir, "var", "mail", "example.test", "alice", "new")
        self.assertEqual(len(os.listdir(new)), 1)

    def test_first_start_creates_a_certificate_and_says_where(self):
        proc, smtp = self.start_good()
        cert = os.path.join(self.dir, "var", "tls", "cert.pem")
        self.assertTrue(os.path.exists(cert))
        # Its log goes to a file, block-buffered: stop it to read it all.
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        self.assertIn(cert, self.output())

    def test_sigterm_shuts_the_server_down_cleanly(self):
        proc, smtp = self.start_good()
        proc.send_signal(signal.SIGTERM)
        # twistd re-raises the signal once shut down, so it "dies" of SIGTERM.
        self.assertIn(proc.wait(20), (0, -signal.SIGTERM))
        out = self.output()
        self.assertIn("Server Shut Down", out)
        self.assertNotIn("Traceback", out)

    def test_unknown_backend_exits_non_zero_naming_it(self):
        self.write_config(
            CONFIG.format(smtp=free_port(), pop3=free_port()).replace('backend = "passwd-file"', 'backend = "nosuch"')
        )
        status, out = self.run_twistd("--config", self.config)
        self.assertNotEqual(status, 0)
        self.assertIn("realm.backend", out)
        self.assertIn("nosuch", out)

    def test_bad_key_type_exits_non_zero_naming_file_and_key(self):
        self.write_config(
            CONFIG.format(smtp=free_port(), pop3=free_port()).replace('state_dir = "var"', "state_dir = 7")
        )
        status, out = self.run_twistd("--config", self.config)
        self.assertNotEqual(status, 0)
        self.assertIn(self.config, out)
        self.assertIn("server.state_dir", out)

    def test_bad_listen_endpoint_exits_non_zero_naming_it(self):
        self.write_config(CONFIG.format(smtp="twenty-five", pop3=free_port()))
        status, out = self.run_twistd("--config", self.config)
        self.assertNotEqual(status, 0)
        self.assertIn("listen.smtp", out)

    def test_missing_config_file_exits_non_zero_naming_it(self):
        status, out = self.run_twistd("--config", os.path.join(self.dir, "absent.toml"))
        self.assertNotEqual(status, 0)
        self.assertIn("absent.toml", out)

    def test_port_in_use_exits_non_zero_naming_the_port(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            self.write_config(CONFIG.format(smtp=port, pop3=free_port()))
            status, out = self.run_twistd("--config", self.config)
        self.assertNotEqual(status, 0)
        self.assertIn(str(port), out)
