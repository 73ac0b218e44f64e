"""
The SMTP server: Twisted's ESMTP with the wire behaviour a real MTA needs.

Twisted's ESMTP answers pipelined commands out of order when a check is
asynchronous (twisted#8126), replays body text as commands after an
over-long line, answers commands pipelined after STARTTLS, and turns every
delivery failure into 550. This subclass keeps its parsing helpers and
replaces the framing and the MAIL/RCPT/DATA state machine with one that
drives an IDeliveryTransaction.

One class serves the three SMTP ports; `policy` says which rules apply:
  mx          - port 25: local recipients only, no AUTH needed;
  submission  - port 587: STARTTLS, then AUTH, then anything;
  smtps       - port 465: as submission, on implicit TLS.
"""

from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail import smtp

from mailplat import metrics
from mailplat.backpressure import ANSWERING, Flow
from mailplat.checks import run_stage
from mailplat.deadlines import HandshakeDeadline, InputDeadline
from mailplat.interfaces import CheckSession
from mailplat.ordered import still_running
from mailplat.smtp.auth import SMTPAuthMixin
from mailplat.smtp.transaction import SMTPTransactionMixin

log = Logger()

COMMAND, DATA, BDAT, AUTH, CLOSED = "COMMAND", "DATA", "BDAT", "AUTH", "CLOSED"

# Postfix's smtpd_hard_error_limit: a client that keeps sending junk is cut off.
MAX_ERRORS = 20


class MailplatSMTP(HandshakeDeadline, SMTPAuthMixin, SMTPTransactionMixin, smtp.ESMTP):
    """One SMTP session. Configured through its factory (L{SMTPFactory})."""

    def __init__(self, factory):
        smtp.ESMTP.__init__(self, chal={}, contextFactory=factory.tls_context)
        self.factory = factory
        self.portal = factory.portal
        self.host = factory.hostname.encode("ascii")
        self.timeout = factory.limits["command_timeout"]
        self.MAX_LENGTH = factory.limits["line_length"]
        self._buffer = b""
        self._discarding = False  # inside an over-long command line
        # Input waits while an answer is pending or the client is not reading ours.
        self._flow = Flow(self._process, lambda: len(self._buffer))
        self._deadline = InputDeadline(
            self.timeoutConnection, factory.limits["command_timeout"], factory.limits["data_total_timeout"]
        )
        self._state = COMMAND
        self._errors = 0
        self._user = None
        self._transaction = None
        self._data = None
        self._data_reader = None
        self._bdat = None
        self._reset_transaction()
        self._peer = ""
        self._counted = False
        self._check_session = CheckSession()

    # --- connection ------------------------------------------------------

    @property
    def policy(self):
        return self.factory.policy

    @property
    def secure(self):
        return self.startedTLS or ISSLTransport.providedBy(self.transport)

    def connectionMade(self):
        self._flow.attach(self.transport)
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", str(peer))
        if ISSLTransport.providedBy(self.transport):
            self.expect_handshake(self.timeout)  # implicit TLS (smtps)
        self.canStartTLS = ITLSTransport.providedBy(self.transport) and self.ctx is not None
        self._helo = (None, self._peer.encode("ascii", "replace"))
        if not self.factory.connections.acquire(self._peer):
            self.reply(421, "4.7.0", f"{self.factory.hostname} too many connections from your address")
            self._state = CLOSED
            self.close_connection()
            return
        self._counted = True
        metrics.session_opened(self)
        self.setTimeout(self.timeout)
        self._check_session = CheckSession(self._peer, policy=self.policy, secure=self.secure)
        # Input waits for the connect checks (none: they answer at once).
        self._flow.hold(ANSWERING)
        d = run_stage(self.factory.checks, "connect", self._check_session)
        d.addCallback(self._greet)
        d.addBoth(self._resume)

    def _greet(self, verdict):
        if self._state == CLOSED:
            return
        if verdict.refused:
            # RFC 5321 3.1: 554 instead of the greeting; a tempfail is 421.
            code = 554 if verdict.action == verdict.REJECT else 421
            self.reply(code, verdict.enhanced, f"{self.factory.hostname} {verdict.text}")
            self._state = CLOSED
            self.close_connection()
            return
        self.reply(220, None, f"{self.factory.hostname} ESMTP mailplat")

    def _refused_by_check(self, verdict):
        """Answer a check's reject/tempfail; True when the command is refused."""
        if verdict.refused:
            self.reply(verdict.code, verdict.enhanced, verdict.text)
            return True
        if verdict.action == verdict.FOLDER:
            self._folder = verdict.folder_name
        return False

    def connectionLost(self, reason):
        self.setTimeout(None)
        self.cancel_deadlines(reason)
        self._deadline.stop()
        metrics.session_closed(self)
        if self._counted:
            self.factory.connections.release(self._peer)
            self._counted = False
        self._reset_transaction()
        self._state = CLOSED

    def timeoutConnection(self):
        self.reply(421, "4.4.2", f"{self.factory.hostname} timeout exceeded, closing")
        self.close_connection()

    # --- replies ---------------------------------------------------------

    def reply(self, code, enhanced, text):
        """Send a reply; RFC 2034 enhanced codes prefix every line's text."""
        lines = text.split("\n")
        out = []
        for i, line in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            prefix = f"{enhanced} " if enhanced else ""
            out.append(f"{code}{sep}{prefix}{line}\r\n".encode("utf-8"))
        if self.transport is not None and not getattr(self.transport, "disconnecting", False):
            self.transport.write(b"".join(out))

    def _error(self, code, enhanced, text):
        self.reply(code, enhanced, text)
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            self.reply(421, "4.7.0", f"{self.factory.hostname} too many errors, closing")
            self._state = CLOSED
            self.close_connection()

    # --- framing (replaces LineOnlyReceiver.dataReceived) ----------------

    def dataReceived(self, data):
        if self._state == CLOSED:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()
        # A client that floods pipelined input while we wait is held back
        # by TCP, not by our memory.
        self._flow.received()
        reading = self._state in (COMMAND, AUTH) and not self._flow.paused
        self._deadline.watch(reading and bool(self._buffer), self._state in (DATA, BDAT))

    def _process(self):
        while not self._flow.paused and self._state != CLOSED:
            if self._state == DATA:
                self._buffer = self._data_reader.feed(self._buffer)
                if not self._data_reader.done:
                    return
                result = self._end_of_data()
            elif self._state == BDAT:
                result = self._bdat_feed()
            else:
                result = self._command_from_buffer()
            if result is False:
                return  # more input needed
            waiter = still_running(result)
            if waiter is not None:
                self._flow.hold(ANSWERING)
                waiter.addCallback(self._resume)
                return

    def _command_from_buffer(self):
        """Run the next complete command line; False when there is none yet."""
        # Commands end at LF (RFC 5321 4.1.1 asks for CRLF; a bare LF is
        # accepted for commands only, never as an end of DATA).
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > self.MAX_LENGTH:
                self._buffer = b""
                self._discarding = True
            return False
        line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._discarding or len(line) > self.MAX_LENGTH:
            self._discarding = False
            self._error(500, "5.5.2", "line too long")
            return None
        return self._line(line)

    def _resume(self, result):
        self._flow.release(ANSWERING)  # and go on, unless our replies still wait to be read
        return None

    def _line(self, line):
        if self._state == AUTH:
            return self._auth_step(line.strip())
        parts = line.strip().split(None, 1)
        if not parts:
            self._error(500, "5.5.2", "empty command")
            return None
        try:
            verb = parts[0].decode("ascii").upper()
        except UnicodeDecodeError:
            self._error(500, "5.5.2", "command not recognized")
            return None
        rest = parts[1] if len(parts) > 1 else b""
        handler = getattr(self, "smtp_" + verb, None) if verb.isalpha() else None
        if handler is None:
            self._error(500, "5.5.2", "command not recognized")
            return None
        try:
            return handler(rest)
        except Exception:
            log.failure("SMTP command {verb} failed", verb=verb)
            self.reply(451, "4.3.0", "local error in processing")
            return None

    # --- session commands ------------------------------------------------

    def _extensions(self):
        limits = self.factory.limits
        ext = [
            f"SIZE {limits['message_size']}",
            "8BITMIME",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "CHUNKING",
        ]
        if self.canStartTLS and not self.secure:
            ext.append("STARTTLS")
        if self.secure:
            ext.append("REQUIRETLS")  # RFC 8689 2: offered (and accepted) only over TLS
        if self._auth_available():
            ext.append("AUTH PLAIN LOGIN")
        return ext

    def smtp_EHLO(self, rest):
        if not rest:
            self._error(501, "5.5.4", "EHLO needs a domain or address literal")
            return
        return self._checked_helo(rest, self._ehlo)

    def _checked_helo(self, rest, answer):
        d = run_stage(self.factory.checks, "helo", self._check_session, rest.decode("utf-8", "replace"))

        def judged(verdict):
            if not self._refused_by_check(verdict):
                self._check_session.helo = rest.decode("utf-8", "replace")
                answer(rest)

        return d.addCallback(judged)

    def _ehlo(self, rest):
        self._helo = (rest, self._peer.encode("ascii", "replace"))
        self._reset_transaction()
        lines = [f"{self.factory.hostname} Hello {rest.decode('ascii', 'replace')} [{self._peer}]"]
        lines += self._extensions()
        self.reply(250, None, "\n".join(lines))

    def smtp_HELO(self, rest):
        if not rest:
            self._error(501, "5.5.4", "HELO needs a domain")
            return
        return self._checked_helo(rest, self._helo_answer)

    def _helo_answer(self, rest):
        self._helo = (rest, self._peer.encode("ascii", "replace"))
        self._reset_transaction()
        self.reply(250, None, f"{self.factory.hostname} Hello {rest.decode('ascii', 'replace')}")

    def smtp_NOOP(self, rest):
        self.reply(250, "2.0.0", "OK")

    def smtp_RSET(self, rest):
        self._reset_transaction()
        self.reply(250, "2.0.0", "OK")

    def smtp_QUIT(self, rest):
        self.reply(221, "2.0.0", f"{self.factory.hostname} closing connection")
        self._state = CLOSED
        self.close_connection()

    def smtp_VRFY(self, rest):
        # RFC 5321 3.5.3: not verifying is allowed; 252 says "try it".
        self.reply(252, "2.5.2", "cannot VRFY; send the message and we will see")

    def smtp_HELP(self, rest):
        self.reply(214, "2.0.0", "see RFC 5321")

    def smtp_STARTTLS(self, rest):
        if self.secure:
            self._error(503, "5.5.1", "TLS already active")
            return
        if not self.canStartTLS:
            self._error(454, "4.7.0", "TLS not available")
            return
        # RFC 3207 4.2 / CVE-2011-0411: nothing the client sent before the
        # handshake may be acted on after it.
        self._buffer = b""
        self.reply(220, "2.0.0", "ready to start TLS")
        self.transport.startTLS(self.ctx)
        self._flow.follow()  # startTLS moved our producer onto the TLS layer
        self.startedTLS = True
        self.expect_handshake(self.timeout)
        self._check_session.secure = True
        self._check_session.helo = None
        self._helo = (None, self._peer.encode("ascii", "replace"))
        self._reset_transaction()

