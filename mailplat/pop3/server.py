"""
The POP3 server: Twisted's POP3 protocol class with what it lacks.

Twisted's POP3 counts deleted messages in STAT and LIST, has no STLS, no
working AUTH PLAIN, sends a message's bytes through a chunk transform that
misses dots and line ends split across chunks, and answers errors with
exception class names. This subclass keeps its reply helpers and replaces
command dispatch, so that:

- commands are answered strictly in order, even when pipelined (RFC 2449);
- USER/PASS and AUTH are refused before TLS on the plain port (RFC 2595);
- input pipelined after STLS is discarded (CVE-2011-0411 class);
- RETR and TOP send exactly the stored message, CRLF and dot-stuffed;
- DELE marks only; deletions are applied at QUIT (RFC 1939 6).
"""

import base64
import binascii
import sys

from twisted.cred import credentials, error as cred_error
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail import pop3

from mailplat import metrics
from mailplat.backpressure import ANSWERING, Flow
from mailplat.deadlines import HandshakeDeadline, InputDeadline
from mailplat.interfaces import TemporaryFailure
from mailplat.ordered import still_running
from mailplat.pop3.mailbox import open_message

log = Logger()

MAX_LINE = 1024  # RFC 2449 4: commands up to 255 octets; be generous.
MAX_ERRORS = 20
MAX_DIGITS = 18  # any number longer than this is past every message count


def decimal(arg):
    """
    A non-negative decimal number from the network (RFC 1939 3: ASCII
    digits only, none of int()'s "+1", "1_0" or other scripts' digits);
    None when `arg` is not one, and the limit L{MAX_DIGITS} + 1 nines when
    it has more significant digits than that (no int() of 5,000 digits).
    """
    if not arg or not arg.isdigit():  # bytes.isdigit is ASCII only
        return None
    digits = arg.lstrip(b"0") or b"0"
    if len(digits) > MAX_DIGITS:
        return 10 ** (MAX_DIGITS + 1) - 1
    return int(digits)


def wire_format(data):
    """A stored message (LF or CRLF lines) as POP3 sends it: CRLF, dot-stuffed."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = (b"\r\n" + data).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed


def top_of(data, lines):
    """
    Headers, the blank line, and the first `lines` body lines (RFC 1939 7 TOP);
    the whole message when it has no more than `lines` body lines.
    """
    data = data.replace(b"\r\n", b"\n")
    if data.startswith(b"\n"):
        head, body = b"\n", data[1:]
    else:
        head_end = data.find(b"\n\n")
        if head_end < 0:
            return data
        head, body = data[: head_end + 2], data[head_end + 2 :]
    if lines == 0:
        return head
    pieces = body.split(b"\n", lines)
    if len(pieces) > lines:
        # More follows the n-th line end: keep the n lines, ends included.
        return head + b"\n".join(pieces[:lines]) + b"\n"
    return head + body


class MailplatPOP3(HandshakeDeadline, pop3.POP3):
    """One POP3 session, configured through its factory."""

    def __init__(self, factory):
        self.factory = factory
        self.portal = factory.portal
        self.timeOut = factory.timeout
        self._buffer = b""
        self._discarding = False  # inside an over-long line
        # Input waits while a command runs or the client is not reading our answers.
        self._flow = Flow(self._process, lambda: len(self._buffer), input_limit=256 * 1024)
        self._deadline = InputDeadline(self.timeoutConnection, factory.timeout, factory.timeout)
        self._closed = False
        self._errors = 0
        self._user_name = None
        self._auth_state = None
        self._argument = b""
        self._peer = ""
        self._counted = False
        self.startedTLS = False

    # --- connection ------------------------------------------------------

    @property
    def secure(self):
        return self.startedTLS or ISSLTransport.providedBy(self.transport)

    def _can_stls(self):
        return (
            not self.secure
            and self.factory.tls_context is not None
            and ITLSTransport.providedBy(self.transport)
        )

    def _auth_allowed(self):
        return self.secure or self.factory.allow_plaintext_auth

    def connectionMade(self):
        self._flow.attach(self.transport)
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", str(peer))
        if ISSLTransport.providedBy(self.transport):
            self.expect_handshake(self.timeOut)  # implicit TLS
        if not self.factory.connections.acquire(self._peer):
            self.sendLine(b"-ERR [SYS/TEMP] too many connections from your address")
            self._closed = True
            self.close_connection()
            return
        self._counted = True
        metrics.session_opened(self)
        self.successResponse(b"mailplat POP3 ready")
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason):
        self._closed = True
        self.cancel_deadlines(reason)
        self._deadline.stop()
        metrics.session_closed(self)
        if self._counted:
            self.factory.connections.release(self._peer)
            self._counted = False
        # RFC 1939 6: a session that ends without QUIT deletes nothing.
        pop3.POP3.connectionLost(self, reason)

    def timeoutConnection(self):
        self.failResponse(b"[SYS/TEMP] autologout: idle too long")
        self.close_connection()

    # --- framing: one command at a time, in order ---------------------------

    def dataReceived(self, data):
        if self._closed:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()
        self._flow.received()
        # A command line must come whole within the command timeout.
        self._deadline.watch(not self._flow.paused and bool(self._buffer), False)

    def _process(self):
        while not self._flow.paused and not self._closed:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    # Drop what we have but remember we are inside the
                    # line: its tail, arriving later, is never a command.
                    self._buffer = b""
                    self._discarding = True
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._discarding or len(line) > MAX_LINE:
                self._discarding = False
                self._error(b"line too long")
                continue
            try:
                result = self._dispatch(line)
            except Exception:
                log.failure("POP3 command failed")
                self.failResponse(b"[SYS/TEMP] internal error")
                result = None
            if isinstance(result, defer.Deferred):
                result.addErrback(self._internal_error)
            waiter = still_running(result)
            if waiter is not None:
                self._flow.hold(ANSWERING)
                self.setTimeout(None)
                waiter.addCallback(self._resume)
                return

    def _internal_error(self, failure):
        log.failure("POP3 command failed", failure)
        self.failResponse(b"[SYS/TEMP] internal error")

    def _resume(self, _):
        if not self._closed:
            self.setTimeout(self.timeOut)
        self._flow.release(ANSWERING)  # and go on, unless our answers still wait to be read

    def _error(self, text):
        self.failResponse(text)
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            self.failResponse(b"too many errors, closing")
            self._closed = True
            self.close_connection()

    def _dispatch(self, line):
        if self._auth_state is not None:
            return self._auth_response(line.strip())
        parts = line.split(b" ")
        verb, args = parts[0].upper(), [a for a in parts[1:] if a]
        # The argument text exactly as sent, for PASS (RFC 1939 7: spaces
        # may be part of a password).
        self._argument = line.split(b" ", 1)[1] if b" " in line else b""
        try:
            name = verb.decode("ascii")
        except UnicodeDecodeError:
            name = ""
        if not name.isalpha():
            return self._error(b"unknown command")
        if self.mbox is None:
            handler = getattr(self, "auth_" + name, None) or getattr(self, "any_" + name, None)
            if handler is None and hasattr(self, "txn_" + name):
                return self._error(b"not authenticated yet")
        else:
            handler = getattr(self, "txn_" + name, None) or getattr(self, "any_" + name, None)
            if handler is None and hasattr(self, "auth_" + name):
                return self._error(b"already authenticated")
        if handler is None:
            return self._error(b"unknown command")
        return handler(*args)

    # --- any state -----------------------------------------------------

    def any_CAPA(self, *args):
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"IMPLEMENTATION mailplat"]
        if self.mbox is None:
            if self._can_stls():
                caps.append(b"STLS")
            if self._auth_allowed():
                caps += [b"USER", b"SASL PLAIN"]
        self.successResponse(b"capability list follows")
        self.transport.write(b"".join(c + b"\r\n" for c in caps) + b".\r\n")

    def any_NOOP(self, *args):
        self.successResponse(b"")

    def any_QUIT(self, *args):
        if self.mbox is None:
            self.successResponse(b"mailplat POP3 signing off")
            self._closed = True
            self.close_connection()
            return None
        d = defer.maybeDeferred(self.mbox.sync)

        def done(_):
            self.successResponse(b"mailplat POP3 signing off")

        def failed(failure):
            log.failure("POP3 update failed", failure)
            self.failResponse(b"[SYS/TEMP] some deleted messages not removed")

        def close(_):
            self._closed = True
            self.close_connection()

        return d.addCallbacks(done, failed).addBoth(close)

    # --- AUTHORIZATION state --------------------------------------------

    def auth_STLS(self, *args):
        if not self._can_stls():
            return self._error(b"STLS not available" if not self.secure else b"TLS already active")
        self._buffer = b""  # never act on what was sent before the handshake
        self.successResponse(b"begin TLS negotiation")
        self.transport.startTLS(self.factory.tls_context)
        self._flow.follow()  # startTLS moved our producer onto the TLS layer
        self.startedTLS = True
        self.expect_handshake(self.timeOut)
        self._user_name = None

    def _refuse_plaintext(self):
        self.failResponse(b"[AUTH] plaintext authentication disallowed without TLS; use STLS first")

    def auth_USER(self, *args):
        if not self._auth_allowed():
            return self._refuse_plaintext()
        if len(args) != 1:
            return self._error(b"usage: USER name")
        self._user_name = args[0]
        self.successResponse(b"send PASS")

    def auth_PASS(self, *args):
        if not self._auth_allowed():
            return self._refuse_plaintext()
        if self._user_name is None:
            return self._error(b"USER first")
        user, self._user_name = self._user_name, None
        # The password is the rest of the line, spaces included.
        return self._login(user, self._argument)

    def auth_AUTH(self, *args):
        if not args:
            self.successResponse(b"")
            self.transport.write(b"PLAIN\r\n.\r\n" if self._auth_allowed() else b".\r\n")
            return None
        if not self._auth_allowed():
            return self._refuse_plaintext()
        if args[0].upper() != b"PLAIN":
            return self._error(b"unsupported SASL mechanism; use PLAIN")
        if len(args) > 1:
            return self._plain(args[1])
        self._auth_state = "PLAIN"
        self.transport.write(b"+ \r\n")
        return None

    def _auth_response(self, line):
        self._auth_state = None
        if line == b"*":
            return self._error(b"authentication cancelled")
        return self._plain(line)

    def _plain(self, encoded):
        try:
            fields = base64.b64decode(encoded, validate=True).split(b"\0")
        except (binascii.Error, ValueError):
            return self._error(b"cannot decode base64")
        if len(fields) != 3 or (fields[0] and fields[0] != fields[1]):
            return self._error(b"malformed PLAIN response")
        return self._login(fields[1], fields[2])

    def _login(self, user, password):
        # Admitted before the password is checked: parallel guesses count too.
        d = self.factory.throttle.admit(self._peer, user, protocol="pop3")
        return d.addCallback(self._login_admitted, user, password)

    def _login_admitted(self, attempt, user, password):
        if attempt is None:
            self.failResponse(b"[SYS/TEMP] too many failed logins; try again later")
            return None
        d = defer.maybeDeferred(self.portal.login, credentials.UsernamePassword(user, password), None, pop3.IMailbox)

        def ok(result):
            _, mbox, logout = result
            self.mbox, self._onLogout = mbox, logout
            attempt.succeeded()
            log.info("POP3 login {user} from {peer}", user=user.decode("utf-8", "replace"), peer=self._peer)
            self.successResponse(b"maildrop ready")

        def failed(failure):
            if failure.check(cred_error.UnauthorizedLogin):
                delay = attempt.failed()
                wait = defer.Deferred()
                reactor.callLater(delay, wait.callback, None)
                return wait.addCallback(lambda _: self.failResponse(b"[AUTH] authentication failed"))
            attempt.abandoned(failure)
            if not failure.check(TemporaryFailure):
                log.failure("POP3 login error", failure)
            self.failResponse(b"[SYS/TEMP] temporary failure, try again later")

        return d.addCallbacks(ok, failed).addBoth(attempt.settle)

    # --- TRANSACTION state ------------------------------------------------

    def _message_number(self, arg):
        """1-based number -> 0-based index of a live message, or None (error sent)."""
        number = decimal(arg)
        if number is None or not 1 <= number <= len(self.mbox.messages):
            self._error(b"no such message")
            return None
        i = number - 1
        if self.mbox.is_deleted(i):
            self._error(b"message is deleted")
            return None
        return i

    def txn_STAT(self, *args):
        live = self.mbox.live()
        self.successResponse(b"%d %d" % (len(live), sum(m.size for _, m in live)))

    def txn_LIST(self, *args):
        if args:
            i = self._message_number(args[0])
            if i is not None:
                self.successResponse(b"%d %d" % (i + 1, self.mbox.messages[i].size))
            return
        live = self.mbox.live()
        self.successResponse(b"%d messages" % len(live))
        self.transport.write(b"".join(b"%d %d\r\n" % (n, m.size) for n, m in live) + b".\r\n")

    def txn_UIDL(self, *args):
        if args:
            i = self._message_number(args[0])
            if i is not None:
                self.successResponse(b"%d %s" % (i + 1, self.mbox.getUidl(i).encode("ascii")))
            return
        self.successResponse(b"")
        lines = [b"%d %s\r\n" % (n, self.mbox.getUidl(n - 1).encode("ascii")) for n, _ in self.mbox.live()]
        self.transport.write(b"".join(lines) + b".\r\n")

    def txn_DELE(self, *args):
        if len(args) != 1:
            return self._error(b"usage: DELE msg")
        i = self._message_number(args[0])
        if i is not None:
            self.mbox.deleteMessage(i)
            self.successResponse(b"message %d marked for deletion" % (i + 1))

    def txn_RSET(self, *args):
        self.mbox.undeleteMessages()
        self.successResponse(b"")

    def txn_RETR(self, *args):
        if len(args) != 1:
            return self._error(b"usage: RETR msg")
        i = self._message_number(args[0])
        if i is None:
            return None
        self.mbox.retrieved.add(i)
        return self._send(i, wire_format, b"%d octets" % self.mbox.messages[i].size)

    def txn_TOP(self, *args):
        if len(args) != 2:
            return self._error(b"usage: TOP msg lines")
        i = self._message_number(args[0])
        if i is None:
            return None
        lines = decimal(args[1])
        if lines is None:
            return self._error(b"bad line count")
        # RFC 1939 7: a count past the body's lines sends the whole message;
        # a huge count is such a count (bounded so str.split can take it).
        lines = min(lines, sys.maxsize)
        return self._send(i, lambda data: wire_format(top_of(data, lines)), b"top of message follows")

    def _send(self, i, transform, status):
        d = open_message(self.mbox.folder.open_message, self.mbox.messages[i].key)

        def read(f):
            def run():
                with f:
                    return transform(f.read())

            return threads.deferToThread(run)

        def send(payload):
            self.successResponse(status)
            self.transport.write(payload + b".\r\n")

        def gone(failure):
            failure.trap(KeyError, FileNotFoundError)
            self.failResponse(b"message was removed by another session")

        return d.addCallback(read).addCallbacks(send, gone)


class POP3Factory(protocol.ServerFactory):
    """Builds POP3 sessions for one port."""

    def __init__(self, portal, tls_context, limits, throttle=None, connections=None, allow_plaintext_auth=False):
        from mailplat.throttle import ConnectionLimiter, LoginThrottle

        self.portal = portal
        self.tls_context = tls_context
        self.timeout = limits["command_timeout"]
        self.throttle = throttle or LoginThrottle.from_limits(limits)
        self.connections = connections or ConnectionLimiter(limits["connections_per_ip"])
        self.allow_plaintext_auth = allow_plaintext_auth

    def buildProtocol(self, addr):
        p = MailplatPOP3(self)
        p.factory = self
        return p
