"""
Test harness: a whole mailplat server, started from a real config file in a
temporary directory, listening on free loopback ports, driven by real
blocking clients (smtplib, poplib, imaplib) run in threads so the trial
reactor keeps serving.
"""

import os
import ssl
import tempfile

from twisted.internet import defer, threads

from mailplat import config as configuration
from mailplat.realm import passwords
from mailplat.service import make_service

ALL_LISTENERS = ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s")

BASE_CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "{state}"

[domains]
local = ["example.test", "example.org"]

[listen]
{listen}

[realm]
backend = "passwd-file"
path = "{state}/users"

[store]
backend = "maildir"
path = "{state}/mail/%d/%n"

[delivery]
local = "maildir"
{extra}
"""


def client_tls():
    """A client TLS context that accepts the server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def in_thread(f, *args, **kwargs):
    """Run a blocking client function off the reactor thread."""
    return threads.deferToThread(f, *args, **kwargs)


def _peek(deferred):
    """A Deferred for `deferred`'s result that leaves its chain untouched."""
    copy = defer.Deferred()

    def forward(result):
        copy.callback(result)
        return result

    deferred.addCallback(forward)
    return copy


class MailServer:
    """
    One running server for a test.

        server = MailServer(self)             # self: the TestCase
        yield server.start(users={"alice@example.test": "pw"})
        server.port("smtp")
    """

    def __init__(self, testcase, listeners=None, extra="", scheme="PLAIN"):
        self.testcase = testcase
        self.dir = tempfile.mkdtemp(prefix="mailplat-test-")
        self.state = os.path.join(self.dir, "var")
        self.listeners = listeners or ("smtp", "submission", "smtps", "pop3", "pop3s")
        self.extra = extra
        self.scheme = scheme
        self.service = None
        self.ports = {}
        self.config_path = os.path.join(self.dir, "mailplat.toml")

    def config_text(self):
        listen = "\n".join(f'{name} = "tcp:port=0:interface=127.0.0.1"' for name in self.listeners)
        return BASE_CONFIG.format(state=self.state, listen=listen, extra=self.extra)

    def add_user(self, address, password):
        os.makedirs(self.state, exist_ok=True)
        with open(os.path.join(self.state, "users"), "a") as f:
            f.write(f"{address}:{passwords.hash_password(password, self.scheme)}\n")

    def maildir(self, address):
        local, domain = address.split("@")
        return os.path.join(self.state, "mail", domain, local)

    @defer.inlineCallbacks
    def start(self, users=None):
        for address, password in (users or {}).items():
            self.add_user(address, password)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        self.config = configuration.load(self.config_path, cwd=self.dir)
        self.service = make_service(self.config)
        self.service.startService()
        self.testcase.addCleanup(self.stop)
        for svc in self.service:
            listening = yield _peek(svc._waitingForPort)
            self.ports[svc.name] = listening.getHost().port
        return self

    def port(self, name):
        return self.ports[name]

    def stop(self):
        if self.service is not None and self.service.running:
            return self.service.stopService()
