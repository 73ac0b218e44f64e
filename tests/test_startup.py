"""
Start-up as an operator meets it (issue 12, items 1 and 2): `twistd -n
mailplat` run as a separate process. A port in use stops it with one line
naming the [listen] key and endpoint, exit 2, before anything is created;
a certificate is made only where the config says and only in a directory
that exists; the log lists each service, the backends and the certificate;
`[log] format = "json"` writes one JSON object a line.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from tests.helpers import free_port

TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]

CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port={smtp}:interface=127.0.0.1"
imaps = "tcp:port={imaps}:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "users"
"""


class Startup(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-startup-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "mailplat.toml")
        self.log = os.path.join(self.dir, "twistd.out")
        with open(os.path.join(self.dir, "users"), "w") as f:
            f.write("alice@example.test:{PLAIN}alice-pw\n")

    def write_config(self, text):
        with open(self.config, "w") as f:
            f.write(text)

    def run_twistd(self, timeout=30):
        done = subprocess.run(
            TWISTD + ["-n", "--pidfile=", "mailplat", "--config", self.config],
            cwd=self.dir, capture_output=True, text=True, timeout=timeout,
        )
        return done.returncode, done.stdout + done.stderr

    def start_and_stop(self):
        """Run until the SMTP port greets, stop with SIGTERM; everything it logged."""
        smtp = free_port()
        text = open(self.config).read().replace("{smtp}", str(smtp)).replace("{imaps}", str(free_port()))
        self.write_config(text)
        with open(self.log, "wb") as out:
            proc = subprocess.Popen(
                TWISTD + ["-n", "--pidfile=", "mailplat", "--config", self.config],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 30
                while True:
                    self.assertIsNone(proc.poll(), "twistd exited early")
                    self.assertLess(time.monotonic(), deadline, "twistd did not greet")
                    try:
                        with socket.create_connection(("127.0.0.1", smtp), timeout=1) as s:
                            s.settimeout(5)
                            if s.recv(3) == b"220":
                                break
                    except OSError:
                        time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def created(self):
        return sorted(set(os.listdir(self.dir)) - {"users", "mailplat.toml"})

    # --- a listener that cannot bind ---------------------------------------

    def test_a_port_in_use_is_one_line_naming_the_key_and_endpoint(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            self.write_config(CONFIG.format(smtp=port, imaps=free_port()))
            status, out = self.run_twistd()
        endpoint = f"tcp:port={port}:interface=127.0.0.1"
        self.assertEqual(status, 2, out)
        self.assertEqual(
            out.strip(),
            f"mailplat: configuration error: {self.config}: listen.smtp: cannot listen on {endpoint}: "
            "Address already in use",
        )

    def test_a_port_in_use_creates_nothing_first(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            self.write_config(CONFIG.format(smtp=free_port(), imaps=busy.getsockname()[1]))
            status, out = self.run_twistd()
        self.assertEqual(status, 2, out)
        self.assertIn("listen.imaps", out)
        # no state directory, no certificate
        self.assertEqual(self.created(), [])

    def test_a_port_in_use_releases_the_ports_bound_before_it(self):
        first = free_port()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            self.write_config(CONFIG.format(smtp=first, imaps=busy.getsockname()[1]))
            status, out = self.run_twistd()
        self.assertEqual(status, 2, out)
        with socket.socket() as again:
            again.bind(("127.0.0.1", first))  # free again

    # --- certificates -------------------------------------------------------

    def test_a_certificate_in_a_missing_directory_is_refused_creating_nothing(self):
        missing = os.path.join(self.dir, "nonexistent")
        self.write_config(
            CONFIG.format(smtp=free_port(), imaps=free_port())
            + f'\n[tls]\ncertificate = "{missing}/cert.pem"\nkey = "{self.dir}/key.pem"\n'
        )
        status, out = self.run_twistd()
        self.assertEqual(status, 2, out)
        self.assertIn(f"tls.certificate: cannot create {missing}/cert.pem: directory {missing} does not exist", out)
        self.assertFalse(os.path.exists(missing))
        self.assertEqual(self.created(), [])

    def test_a_certificate_is_made_where_the_config_says_when_its_directory_exists(self):
        os.mkdir(os.path.join(self.dir, "tls-here"))
        self.write_config(
            CONFIG + '\n[tls]\ncertificate = "tls-here/c.pem"\nkey = "tls-here/k.pem"\n'
        )
        out = self.start_and_stop()
        self.assertEqual(sorted(os.listdir(os.path.join(self.dir, "tls-here"))), ["c.pem", "k.pem"])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "var", "tls")), out)

    # --- no service -----------------------------------------------------------

    def test_a_config_with_no_service_is_refused(self):
        self.write_config(CONFIG.format(smtp=0, imaps=0).split("[listen]")[0] + '[realm]\nbackend = "passwd-file"\n')
        status, out = self.run_twistd()
        self.assertEqual(status, 2, out)
        self.assertIn("listen: no service is turned on", out)
        self.assertEqual(self.created(), [])

    # --- the start-up log ----------------------------------------------------

    def test_start_up_lists_services_backends_and_the_certificate(self):
        self.write_config(CONFIG)
        out = self.start_and_stop()
        self.assertRegex(out, r"service name=smtp endpoint=tcp:port=\d+:interface=127.0.0.1 tls=starttls")
        self.assertRegex(out, r"service name=imaps endpoint=tcp:port=\d+:interface=127.0.0.1 tls=implicit")
        self.assertIn("backends realm=passwd-file store=maildir delivery=maildir relay=off checks=-", out)
        self.assertRegex(out, r"certificate subject=CN=mail.example.test expires=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ file=")

    def test_json_log_format_writes_one_object_a_line(self):
        self.write_config(CONFIG + '\n[log]\nformat = "json"\n')
        out = self.start_and_stop()
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        texts = [e.get("text", "") for e in events]
        self.assertTrue(any(t.startswith("service name=smtp ") for t in texts), texts)
        service = next(e for e in events if e.get("oplog_event") == "service")
        self.assertEqual(service["oplog_fields"]["name"], "smtp")
