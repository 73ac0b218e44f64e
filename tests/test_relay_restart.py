"""
The queue survives `kill -9`: a message accepted by a relaying twistd
process, killed before it could deliver, is delivered after the restart.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import free_port, in_thread
from tests.test_relay_delivery import BOB, MESSAGE, DomainServer, messages_in, submit, wait_for

TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]

CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[listen]
submission = "tcp:port={submission}:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "users"

[tls]
allow_plaintext_auth = true

[relay]
retry_first = 1
retry_initial = 1

[relay.routes]
"example.org" = "127.0.0.1:{route}"
"""


def wait_port(port, timeout=20):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


class KillNine(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-relay-kill-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.submission, self.route = free_port(), free_port()
        with open(os.path.join(self.dir, "mailplat.toml"), "w") as f:
            f.write(CONFIG.format(submission=self.submission, route=self.route))
        with open(os.path.join(self.dir, "users"), "w") as f:
            f.write("alice@example.test:{PLAIN}alice-pw\n")

    def start_twistd(self):
        out = open(os.path.join(self.dir, "twistd.out"), "ab")
        self.addCleanup(out.close)
        proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "mailplat", "--config", "mailplat.toml"],
            cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
        )

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

        self.addCleanup(stop)
        return proc

    def spooled(self):
        path = os.path.join(self.dir, "var", "queue", "messages")
        return [n for n in os.listdir(path) if n.endswith(".json")] if os.path.isdir(path) else []

    @defer.inlineCallbacks
    def test_accepted_then_killed_is_delivered_after_restart(self):
        proc = self.start_twistd()
        yield in_thread(wait_port, self.submission)
        refused = yield in_thread(submit, self.submission, "alice@example.test", "alice-pw", ["bob@example.org"])
        self.assertEqual(refused, {})
        # Accepted (250) means on disk: kill at once, B is not even up.
        self.assertEqual(len(self.spooled()), 1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        b = DomainServer(self, "example.org", listeners=("smtp",), ports={"smtp": self.route})
        yield b.start(users=BOB)
        self.start_twistd()
        [data] = yield wait_for(lambda: messages_in(b, "bob@example.org"), timeout=20)
        self.assertTrue(data.endswith(MESSAGE.replace(b"\r\n", b"\n")))
        yield wait_for(lambda: not self.spooled(), timeout=10)
