"""
ManageSieve (RFC 5804): users upload, check and activate their Sieve
scripts from any client (Thunderbird's sieve add-on, Roundcube,
sieve-connect, sievelib). `[listen] managesieve`, 4190 by default.

- STARTTLS first: AUTHENTICATE (PLAIN, through the server's portal and
  login throttle like every other login) is offered only under TLS unless
  `[tls] allow_plaintext_auth` says otherwise; after STARTTLS the
  capabilities are sent again (RFC 5804 2.2).
- PUTSCRIPT and CHECKSCRIPT compile the script: a bad one is refused with
  the line and column of its first error and nothing is written.
- Scripts are kept as Pigeonhole keeps them (L{mailplat.sieve.storage}),
  with a quota per user in number and octets (HAVESPACE).
- Bounded: lines of 8 KB, literals no longer than the script quota, a
  command timeout, and the connection limit shared with the other services.
"""

import base64
import binascii
import re

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from mailplat.deadlines import HandshakeDeadline
from mailplat.interfaces import IMailUser, TemporaryFailure
from mailplat.sieve import SieveSyntaxError, extensions
from mailplat.sieve.storage import MAX_BYTES, MAX_SCRIPTS, ScriptError, ScriptStore

log = Logger()

MAX_LINE = 8192
UNAUTH, AUTH = "unauth", "auth"

_TOKEN = re.compile(rb'\s*(?:"((?:[^"\\]|\\.)*)"|\{(\d+)(\+?)\}$|([^\s"{}()]+))')


def quoted(text):
    """A string as ManageSieve sends it: quoted, or a literal when it has line ends or is long."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    if b"\r" in text or b"\n" in text or len(text) > 1024:
        return b"{%d}\r\n%s" % (len(text), text)
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class BadCommand(Exception):
    pass


class ManageSieve(HandshakeDeadline, TimeoutMixin, protocol.Protocol):
    def __init__(self, factory):
        self.factory = factory
        self.state = UNAUTH
        self.user = None
        self.scripts = None
        self._buf = b""
        self._args = []  # the command being read: its tokens so far
        self._literal = 0  # octets of a literal still to read
        self._busy = False
        self._closed = False
        self._counted = False
        self._peer = ""

    # --- connection -----------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", str(peer))
        if not self.factory.connections.acquire(self._peer):
            self.transport.write(b'BYE (TRYLATER) "too many connections from your address"\r\n')
            self._closed = True
            self.close_connection()
            return
        self._counted = True
        self.setTimeout(self.factory.timeout)
        self.send_capabilities()

    def connectionLost(self, reason):
        self._closed = True
        self.setTimeout(None)
        self.cancel_deadlines(reason)
        if self._counted:
            self.factory.connections.release(self._peer)
            self._counted = False

    def timeoutConnection(self):
        self.write(b'BYE "idle for too long"\r\n')
        self._closed = True
        self.close_connection()

    @property
    def secure(self):
        return ISSLTransport.providedBy(self.transport)

    def write(self, data):
        if not self._closed and self.transport is not None:
            self.transport.write(data)

    def ok(self, text="", code=None):
        self._respond(b"OK", text, code)

    def no(self, text, code=None):
        self._respond(b"NO", text, code)

    def _respond(self, word, text, code):
        out = word
        if code:
            out += b" (" + code.encode("ascii") + b")"
        if text:
            out += b" " + quoted(text)
        self.write(out + b"\r\n")

    def capability_lines(self):
        lines = [
            b'"IMPLEMENTATION" "mailplat"',
            b'"SIEVE" ' + quoted(" ".join(extensions())),
        ]
        if self.state == UNAUTH and (self.secure or self.factory.allow_plaintext_auth):
            lines.append(b'"SASL" "PLAIN"')
        elif self.state == UNAUTH:
            lines.append(b'"SASL" ""')
        if not self.secure and self.factory.tls_context is not None and self.state == UNAUTH:
            lines.append(b'"STARTTLS"')
        lines.append(b'"VERSION" "1.0"')
        return lines

    def send_capabilities(self):
        self.write(b"".join(line + b"\r\n" for line in self.capability_lines()) + b"OK\r\n")

    # --- framing ---------------------------------------------------------

    def dataReceived(self, data):
        if self._closed:
            return
        self.resetTimeout()
        self._buf += data
        self._process()

    def _process(self):
        while not self._busy and not self._closed:
            if self._literal:
                if len(self._buf) < self._literal:
                    return
                self._args.append(self._buf[: self._literal])
                self._buf = self._buf[self._literal :]
                self._literal = 0
                continue
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_LINE:
                    self.write(b'BYE "line too long"\r\n')
                    self._closed = True
                    self.close_connection()
                return
            line, self._buf = self._buf[:end].rstrip(b"\r"), self._buf[end + 1 :]
            try:
                literal = self._tokenize(line)
            except BadCommand as e:
                self._args = []
                self.no(str(e))
                continue
            if literal is not None:
                size, _ = literal
                if size > self.factory.max_bytes:
                    # Too big to read: refuse and drop the literal's octets.
                    self._args = []
                    self.no("script larger than the quota allows", "QUOTA/MAXSIZE")
                    self._skip(size)
                    continue
                self._literal = size
                if size == 0:
                    self._args.append(b"")
                continue
            args, self._args = self._args, []
            if args:
                self._dispatch(args)

    def _skip(self, size):
        """Drop a refused literal; one not yet all here ends the session (no reading megabytes to throw away)."""
        if size <= len(self._buf):
            self._buf = self._buf[size:]
            return
        self.write(b'BYE "literal too large"\r\n')
        self._closed = True
        self.close_connection()

    def _tokenize(self, line):
        """Append the line's tokens to the command; (size, plus) when it ends with a literal."""
        pos = 0
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if m is None:
                if not line[pos:].strip():
                    break
                raise BadCommand("cannot parse the command")
            pos = m.end()
            if m.group(1) is not None:
                self._args.append(re.sub(rb"\\(.)", rb"\1", m.group(1)))
            elif m.group(2) is not None:
                return int(m.group(2)), bool(m.group(3))
            else:
                self._args.append(m.group(4))
        return None

    # --- commands --------------------------------------------------------

    def _dispatch(self, args):
        name = args[0].decode("ascii", "replace").upper()
        handler = getattr(self, "cmd_" + name, None)
        if handler is None:
            return self.no(f"unknown command {name[:32]}")
        if name not in ("CAPABILITY", "LOGOUT", "NOOP", "STARTTLS", "AUTHENTICATE") and self.state != AUTH:
            return self.no("log in first")
        strings = [a.decode("utf-8", "surrogateescape") if isinstance(a, bytes) else a for a in args[1:]]
        try:
            result = handler(strings, args[1:])
        except BadCommand as e:
            return self.no(str(e))
        if isinstance(result, defer.Deferred):
            self._busy = True

            def done(_):
                self._busy = False
                self._process()

            result.addErrback(self._failed).addBoth(done)

    def _failed(self, failure):
        if failure.check(ScriptError):
            return self.no(failure.value.text, failure.value.code)
        if failure.check(SieveSyntaxError):
            return self.no(str(failure.value))
        log.failure("ManageSieve command failed", failure)
        return self.no("temporary failure, try again later", "TRYLATER")

    def _need(self, strings, count):
        if len(strings) != count:
            raise BadCommand(f"expected {count} argument(s)")

    def cmd_CAPABILITY(self, strings, raw):
        self.send_capabilities()

    def cmd_NOOP(self, strings, raw):
        # RFC 5804 2.13: the tag comes back as a response code.
        if strings:
            return self._respond(b"OK", "NOOP completed", "TAG " + quoted(strings[0]).decode("utf-8", "replace"))
        self.ok("NOOP completed")

    def cmd_LOGOUT(self, strings, raw):
        self.ok("logout completed")
        self._closed = True
        self.close_connection()

    def cmd_STARTTLS(self, strings, raw):
        if self.secure or self.factory.tls_context is None:
            return self.no("TLS is active already" if self.secure else "STARTTLS not available")
        if self.state != UNAUTH:
            return self.no("STARTTLS only before logging in")
        self.ok("begin TLS negotiation now")
        self._buf = b""  # nothing pipelined before the handshake is acted on
        self.transport.startTLS(self.factory.tls_context)
        self.expect_handshake(self.factory.timeout)

    def handshakeCompleted(self):
        HandshakeDeadline.handshakeCompleted(self)
        self.send_capabilities()  # RFC 5804 2.2

    def cmd_UNAUTHENTICATE(self, strings, raw):
        if self.state != AUTH:
            return self.no("not logged in")
        self.state, self.user, self.scripts = UNAUTH, None, None
        self.ok("unauthenticated")

    def cmd_AUTHENTICATE(self, strings, raw):
        if self.state == AUTH:
            return self.no("already logged in")
        if not (self.secure or self.factory.allow_plaintext_auth):
            return self.no("use STARTTLS before logging in", "ENCRYPT-NEEDED")
        if not strings or strings[0].upper() != "PLAIN":
            return self.no("unsupported SASL mechanism; use PLAIN")
        if len(strings) < 2:
            return self.no("PLAIN needs the initial response in the command")
        try:
            fields = base64.b64decode(raw[1], validate=True).split(b"\0")
        except (binascii.Error, ValueError):
            return self.no("cannot decode base64")
        if len(fields) != 3 or (fields[0] and fields[0] != fields[1]):
            return self.no("malformed PLAIN response")
        user, password = fields[1], fields[2]
        d = self.factory.throttle.admit(self._peer, user, protocol="managesieve")
        return d.addCallback(self._admitted, user, password)

    def _admitted(self, attempt, user, password):
        if attempt is None:
            return self.no("too many failed logins; try again later", "TRYLATER")
        d = defer.maybeDeferred(self.factory.portal.login, UsernamePassword(user, password), None, IMailUser)

        def ok(result):
            _, avatar, _ = result
            attempt.succeeded()
            self.state = AUTH
            self.user = avatar.address if hasattr(avatar, "address") else user.decode("utf-8")
            self.scripts = ScriptStore(self.factory.sieve.home(self.user), self.factory.max_scripts, self.factory.max_bytes)
            log.info("ManageSieve login {user} from {peer}", user=self.user, peer=self._peer)
            self.ok("logged in")

        def failed(failure):
            if failure.check(cred_error.UnauthorizedLogin):
                delay = attempt.failed()
                wait = defer.Deferred()
                reactor.callLater(delay, wait.callback, None)
                return wait.addCallback(lambda _: self.no("authentication failed"))
            attempt.abandoned(failure)
            if not failure.check(TemporaryFailure):
                log.failure("ManageSieve login error", failure)
            return self.no("temporary failure, try again later", "TRYLATER")

        return d.addCallbacks(ok, failed).addBoth(attempt.settle)

    def _blocking(self, f, *args):
        return threads.deferToThread(f, *args)

    def cmd_HAVESPACE(self, strings, raw):
        self._need(strings, 2)
        if not strings[1].isdigit():
            raise BadCommand("the size must be a number")
        return self._blocking(self.scripts.have_space, strings[0], int(strings[1])).addCallback(lambda _: self.ok())

    def cmd_PUTSCRIPT(self, strings, raw):
        self._need(strings, 2)
        return self._blocking(self.scripts.put, strings[0], raw[1]).addCallback(lambda _: self.ok("script stored"))

    def cmd_CHECKSCRIPT(self, strings, raw):
        self._need(strings, 1)
        return self._blocking(self.scripts.check, raw[0]).addCallback(lambda _: self.ok("script is valid"))

    def cmd_LISTSCRIPTS(self, strings, raw):
        self._need(strings, 0)

        def answer(listing):
            self.write(b"".join(quoted(n) + (b" ACTIVE" if active else b"") + b"\r\n" for n, active in listing))
            self.ok()

        return self._blocking(self.scripts.listing).addCallback(answer)

    def cmd_GETSCRIPT(self, strings, raw):
        self._need(strings, 1)

        def answer(data):
            self.write(b"{%d}\r\n%s\r\n" % (len(data), data))
            self.ok()

        return self._blocking(self.scripts.get, strings[0]).addCallback(answer)

    def cmd_SETACTIVE(self, strings, raw):
        self._need(strings, 1)
        return self._blocking(self.scripts.activate, strings[0]).addCallback(lambda _: self.ok())

    def cmd_DELETESCRIPT(self, strings, raw):
        self._need(strings, 1)
        return self._blocking(self.scripts.delete, strings[0]).addCallback(lambda _: self.ok())

    def cmd_RENAMESCRIPT(self, strings, raw):
        self._need(strings, 2)
        return self._blocking(self.scripts.rename, strings[0], strings[1]).addCallback(lambda _: self.ok())


class ManageSieveFactory(protocol.ServerFactory):
    def __init__(self, portal, tls_context, sieve, limits, throttle, connections, allow_plaintext_auth=False,
                 max_scripts=MAX_SCRIPTS, max_bytes=MAX_BYTES):
        self.portal = portal
        self.tls_context = tls_context
        self.sieve = sieve  # L{mailplat.sieve.filter.SieveFilter}: where each user's home is
        self.timeout = limits["command_timeout"]
        self.throttle = throttle
        self.connections = connections
        self.allow_plaintext_auth = allow_plaintext_auth
        self.max_scripts, self.max_bytes = max_scripts, max_bytes

    def buildProtocol(self, addr):
        return ManageSieve(self)
