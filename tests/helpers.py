"""
Test harness: a whole mailplat server, started from a real config file in a
temporary directory, listening on free loopback ports, driven by real
blocking clients (smtplib, poplib, imaplib) run in threads so the trial
reactor keeps serving.
"""

import os
import shutil
import socket
import ssl
import tempfile
import threading

from twisted.internet import defer, reactor, tcp
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from mailplat import config as configuration
from mailplat.realm import passwords
from mailplat.service import make_service
from mailplat.testing.dns import start_dns_server

ALL_LISTENERS = ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s")

# The top-level domains the suites' addresses use; the test name server
# answers "no such name" for anything under them.
NO_NAMES_ZONES = ("test", "org", "com", "net", "example", "invalid", "localhost", "arpa")

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
backend = "{store}"
path = "{state}/mail/%d/%n"

[delivery]
local = "{store}"
{extra}
"""

# The smallest config the command-line and plugin tests load: one local
# domain, SMTP on a free port, a passwd-file style realm at etc/users.
SMALL_CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port=0:interface=127.0.0.1"

[realm]
backend = "{realm}"
path = "etc/users"
"""


def small_config(realm="passwd-file", after=""):
    """L{SMALL_CONFIG} with realm backend `realm`, followed by the text `after`."""
    return SMALL_CONFIG.format(realm=realm) + after


def client_tls():
    """A client TLS context that accepts the server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def in_thread(f, *args, **kwargs):
    """
    Run a blocking client function off the reactor thread.

    Each call gets its own (daemon) thread rather than one from the
    reactor's pool: the server runs its own blocking work (maildir writes,
    password hashing) in that pool, and twenty clients waiting on the server
    from inside it would leave the server no thread to answer them with.
    """
    d = defer.Deferred()

    def run():
        try:
            result = f(*args, **kwargs)
        except BaseException:
            reactor.callFromThread(d.errback, Failure())
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, name=f"test client {getattr(f, '__name__', f)}", daemon=True).start()
    return d


def in_thread_closing(f, clients):
    """
    L{in_thread} for a client scenario: `f` runs in a thread, and every
    client it put in `clients` (a list) is shut down afterwards, whatever
    `f` did, so no session outlives the test.
    """

    def run():
        try:
            return f()
        finally:
            for c in clients:
                try:
                    c.shutdown()
                except Exception:
                    pass

    return in_thread(run)


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

    The store (and its local delivery) is `store`, else the test case's
    `store` attribute, else "maildir": a test class runs on mbox by
    setting `store = "mbox"` in a subclass (see tests/test_mbox_*.py).
    """

    def __init__(self, testcase, listeners=None, extra="", scheme="PLAIN", store=None):
        self.testcase = testcase
        self.dir = tempfile.mkdtemp(prefix="mailplat-test-")
        # Cleanups run last-in first-out: the server (added in start) stops
        # before its directory goes.
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.state = os.path.join(self.dir, "var")
        self.listeners = listeners or ("smtp", "submission", "smtps", "pop3", "pop3s")
        self.extra = extra
        self.scheme = scheme
        chosen = getattr(testcase, "store", None)
        self.store = store or (chosen if isinstance(chosen, str) else None) or "maildir"
        self.service = None
        self.dns = None
        self.ports = {}
        self.config_path = os.path.join(self.dir, "mailplat.toml")

    def config_text(self):
        listen = "\n".join(f'{name} = "tcp:port=0:interface=127.0.0.1"' for name in self.listeners)
        extra = self.extra
        if self.dns is not None:
            extra += f'\n[dns]\nservers = ["{self.dns.address}"]\ntimeout = 5\n'
        text = BASE_CONFIG.format(state=self.state, listen=listen, extra=extra, store=self.store)
        # A store that needs more than a path (the sql store's dsn): the test case's `store_config` lines.
        store_config = getattr(self.testcase, "store_config", "")
        return text.replace("\n[delivery]\n", f"\n{store_config}\n[delivery]\n", 1) if store_config else text

    def add_user(self, address, password):
        os.makedirs(self.state, exist_ok=True)
        with open(os.path.join(self.state, "users"), "a") as f:
            f.write(f"{address}:{passwords.hash_password(password, self.scheme)}\n")

    def maildir(self, address):
        """The user's mail directory (a maildir, or the folder of mbox files)."""
        local, domain = address.split("@")
        return os.path.join(self.state, "mail", domain, local)

    def mbox(self, address, folder="INBOX"):
        """The mbox file of a user's folder (mbox store)."""
        return os.path.join(self.maildir(address), *folder.split("/"))

    @defer.inlineCallbacks
    def start(self, users=None):
        for address, password in (users or {}).items():
            self.add_user(address, password)
        if "[dns]" not in self.extra:
            # The server's DNS (SPF, DKIM, DMARC, MX) is a name server of the
            # test's own that knows no names: no test depends on the
            # machine's resolver, or waits for one that is not there.
            self.dns = start_dns_server(self.testcase, {}, zones=NO_NAMES_ZONES)
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

    def sessions(self):
        """The server side of every connection still open on our ports."""
        ports = set(self.ports.values())
        return [
            s
            for s in set(reactor.getReaders()) | set(reactor.getWriters())
            if isinstance(s, tcp.Server) and s.getHost().port in ports
        ]

    @defer.inlineCallbacks
    def stop(self):
        if self.service is not None and self.service.running:
            yield self.service.stopService()
        # A client that just closed its socket is noticed by the server a
        # moment later: wait for the sessions to end, so that no test leaves
        # a connection behind for the next one.
        for _ in range(500):
            if not self.sessions():
                return
            yield deferLater(reactor, 0.01, lambda: None)
        left = self.sessions()
        for s in left:
            s.abortConnection()
        yield deferLater(reactor, 0, lambda: None)
        raise AssertionError(f"server sessions still open 5 s after the test: {left}")


def free_port():
    """A loopback TCP port nobody listens on right now (for subprocess servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LineClient:
    """
    A blocking raw-socket client for tests where the exact bytes on the wire
    matter (pipelining, STARTTLS injection, junk). Run it in a thread with
    L{in_thread}.

        c = LineClient(port)
        c.smtp_reply()            # (220, ["..."])
        c.send(b"EHLO x\r\n")
    """

    def __init__(self, port, tls=False, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            self.sock = client_tls().wrap_socket(self.sock)
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def starttls(self, context=None, server_hostname=None):
        """Begin TLS on the connection. Bytes already read and not consumed are an error."""
        if self.buffer:
            raise AssertionError(f"server sent bytes before the TLS handshake: {self.buffer!r}")
        context = context or client_tls()
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def line(self):
        """One line without its CRLF; b"" (never blocks again) when the server closed."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                if rest:
                    return rest
                raise EOFError("connection closed by the server")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def smtp_reply(self):
        """An SMTP reply: (code, [text of each line])."""
        lines = []
        while True:
            line = self.line()
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def pop_multiline(self):
        """The lines of a POP3 multi-line answer after its status line, dot-unstuffed."""
        lines = []
        while True:
            line = self.line()
            if line == b".":
                return lines
            lines.append(line[1:] if line.startswith(b"..") else line)

    def closed(self, wait=5):
        """True when the server closes the connection within `wait` seconds (unread bytes dropped)."""
        self.sock.settimeout(wait)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def collect_log(testcase):
    """Record the text of every log event until the test ends; returns the list."""
    from twisted.logger import formatEvent, globalLogPublisher

    texts = []

    def observe(event):
        texts.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return texts
