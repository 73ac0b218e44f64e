"""
A whole mailplat server on the backend under test, for the kit's rules that
only a running server shows: logins over IMAP, POP3 and SMTP AUTH with
real clients (imaplib, poplib, smtplib) on loopback ports.

    server = KitServer(self, realm=realm)     # self: the TestCase
    yield server.start()
    answers = yield server.logins("alice@example.test", "pw")

The backend object is offered to the server as a plugin of its own (see
L{mailplat.plugin.register}); the rest of the server (maildir store,
implicit TLS with a self-signed certificate) lives in a temporary folder.
"""

import imaplib
import os
import poplib
import shutil
import smtplib
import ssl
import tempfile
import threading

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from mailplat import plugin

CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "{state}"

[domains]
local = ["{domain}"]

[listen]
imaps = "tcp:port=0:interface=127.0.0.1"
pop3s = "tcp:port=0:interface=127.0.0.1"
smtps = "tcp:port=0:interface=127.0.0.1"

[realm]
backend = "{realm}"

[store]
backend = "maildir"
path = "{state}/mail/%d/%n"

[delivery]
local = "maildir"

[dns]
servers = ["127.0.0.1:9"]
timeout = 2
"""


def in_thread(f, *args):
    """Run a blocking client off the reactor thread (its own thread: the
    reactor's pool is the server's)."""
    d = defer.Deferred()

    def run():
        try:
            result = f(*args)
        except BaseException:
            reactor.callFromThread(d.errback, Failure())
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, name="mailplat kit client", daemon=True).start()
    return d


def _tls():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imap_login(port, user, password):
    """'OK' or the server's refusal, as text."""
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=_tls(), timeout=30)
    try:
        c.login(user, password)
        c.logout()
        return "OK"
    except imaplib.IMAP4.error as e:
        return f"refused: {e}"
    finally:
        try:
            c.shutdown()
        except Exception:
            pass


def pop3_login(port, user, password):
    c = poplib.POP3_SSL("127.0.0.1", port, context=_tls(), timeout=30)
    try:
        c.user(user)
        c.pass_(password)
        c.quit()
        return "OK"
    except poplib.error_proto as e:
        c.close()
        return f"refused: {e}"


def smtp_login(port, user, password):
    c = smtplib.SMTP_SSL("127.0.0.1", port, context=_tls(), timeout=30)
    try:
        c.ehlo("client.example.test")
        c.login(user, password)
        c.quit()
        return "OK"
    except smtplib.SMTPException as e:
        c.close()
        return f"refused: {e}"


class KitServer:
    def __init__(self, testcase, realm, domain="example.test"):
        self.testcase = testcase
        self.realm = realm
        self.domain = domain
        self.dir = tempfile.mkdtemp(prefix="mailplat-kit-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.state = os.path.join(self.dir, "var")
        self.service = None
        self.ports = {}

    @defer.inlineCallbacks
    def start(self):
        from mailplat import config as configuration
        from mailplat.service import make_service

        name = f"kit-realm-{id(self)}"
        realm = self.realm
        offered = plugin.BackendPlugin(
            "realm", name, "the realm under test", lambda section, context: realm, keys=plugin.ANY_KEYS
        )
        self.testcase.addCleanup(plugin.register(offered))
        path = os.path.join(self.dir, "mailplat.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(state=self.state, realm=name, domain=self.domain))
        config = configuration.load(path, cwd=self.dir)
        self.service = make_service(config)
        self.service.startService()
        self.testcase.addCleanup(self.stop)
        for svc in self.service:
            waiting = svc._waitingForPort
            copy = defer.Deferred()

            def forward(result, copy=copy):
                copy.callback(result)
                return result

            waiting.addCallback(forward)
            listening = yield copy
            self.ports[svc.name] = listening.getHost().port
        return self

    @defer.inlineCallbacks
    def stop(self):
        if self.service is not None and self.service.running:
            yield self.service.stopService()
        yield deferLater(reactor, 0.05, lambda: None)

    def logins(self, user, password):
        """Deferred firing with {"imap": "OK" or "refused: ...", "pop3": ..., "smtp": ...}."""
        calls = [
            ("imap", imap_login, self.ports["imaps"]),
            ("pop3", pop3_login, self.ports["pop3s"]),
            ("smtp", smtp_login, self.ports["smtps"]),
        ]
        ds = [in_thread(f, port, user, password) for _, f, port in calls]
        d = defer.gatherResults(ds, consumeErrors=True)
        return d.addCallback(lambda answers: dict(zip([c[0] for c in calls], answers)))
