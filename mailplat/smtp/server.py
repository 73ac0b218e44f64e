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

import base64
import binascii

from twisted.cred import credentials, error as cred_error
from twisted.internet import defer, reactor
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail import smtp

from mailplat.interfaces import Envelope, IMailUser, PermanentFailure, TemporaryFailure
from mailplat.smtp.framing import DataReader
from mailplat.smtp.headers import received_header
from mailplat.store.source import PrefixedSource, SpooledSource

log = Logger()

COMMAND, DATA, AUTH, CLOSED = "COMMAND", "DATA", "AUTH", "CLOSED"

# Postfix's smtpd_hard_error_limit: a client that keeps sending junk is cut off.
MAX_ERRORS = 20


class MailplatSMTP(smtp.ESMTP):
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
        self._waiting = False  # an answer is pending; later input waits
        self._state = COMMAND
        self._errors = 0
        self._user = None
        self._transaction = None
        self._sender = None
        self._recipients = []
        self._data = None
        self._peer = ""
        self._counted = False

    # --- connection ------------------------------------------------------

    @property
    def policy(self):
        return self.factory.policy

    @property
    def secure(self):
        return self.startedTLS or ISSLTransport.providedBy(self.transport)

    def connectionMade(self):
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", str(peer))
        self.canStartTLS = ITLSTransport.providedBy(self.transport) and self.ctx is not None
        self._helo = (None, self._peer.encode("ascii", "replace"))
        if not self.factory.connections.acquire(self._peer):
            self.reply(421, "4.7.0", f"{self.factory.hostname} too many connections from your address")
            self._state = CLOSED
            self.transport.loseConnection()
            return
        self._counted = True
        self.reply(220, None, f"{self.factory.hostname} ESMTP mailplat")
        self.setTimeout(self.timeout)

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self._counted:
            self.factory.connections.release(self._peer)
            self._counted = False
        self._reset_transaction()
        self._state = CLOSED

    def timeoutConnection(self):
        self.reply(421, "4.4.2", f"{self.factory.hostname} timeout exceeded, closing")
        self.transport.loseConnection()

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
            self.transport.loseConnection()

    # --- framing (replaces LineOnlyReceiver.dataReceived) ----------------

    def dataReceived(self, data):
        if self._state == CLOSED:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()
        # A client that floods pipelined input while we wait is held back
        # by TCP, not by our memory.
        if self._waiting and len(self._buffer) > 1024 * 1024:
            self.transport.pauseProducing()

    def _process(self):
        while not self._waiting and self._state != CLOSED:
            if self._state == DATA:
                self._buffer = self._data_reader.feed(self._buffer)
                if self._data_reader.done:
                    self._end_of_data()
                    continue
                return
            # Commands end at LF (RFC 5321 4.1.1 asks for CRLF; a bare LF is
            # accepted for commands only, never as an end of DATA).
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.MAX_LENGTH:
                    self._buffer = b""
                    self._discarding = True
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._discarding or len(line) > self.MAX_LENGTH:
                self._discarding = False
                self._error(500, "5.5.2", "line too long")
                continue
            result = self._line(line)
            if isinstance(result, defer.Deferred) and not result.called:
                self._waiting = True
                result.addBoth(self._resume)
                return

    def _resume(self, result):
        self._waiting = False
        if self.transport is not None and self._state != CLOSED:
            self.transport.resumeProducing()
            self._process()
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
        ]
        if self.canStartTLS and not self.secure:
            ext.append("STARTTLS")
        if self._auth_available():
            ext.append("AUTH PLAIN LOGIN")
        return ext

    def _auth_available(self):
        if self.factory.portal is None or self.policy == "mx":
            return False
        return self.secure or self.factory.allow_plaintext_auth

    def smtp_EHLO(self, rest):
        if not rest:
            self._error(501, "5.5.4", "EHLO needs a domain or address literal")
            return
        self._helo = (rest, self._peer.encode("ascii", "replace"))
        self._reset_transaction()
        lines = [f"{self.factory.hostname} Hello {rest.decode('ascii', 'replace')} [{self._peer}]"]
        lines += self._extensions()
        self.reply(250, None, "\n".join(lines))

    def smtp_HELO(self, rest):
        if not rest:
            self._error(501, "5.5.4", "HELO needs a domain")
            return
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
        self.transport.loseConnection()

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
        self.startedTLS = True
        self._helo = (None, self._peer.encode("ascii", "replace"))
        self._reset_transaction()

    # --- AUTH (RFC 4954) ---------------------------------------------------

    def smtp_AUTH(self, rest):
        if self.policy == "mx" or self.factory.portal is None:
            self._error(503, "5.5.1", "AUTH not available on this port; use submission")
            return
        if not self._auth_available():
            self._error(538, "5.7.11", "encryption required: STARTTLS first")
            return
        if self._user is not None:
            self._error(503, "5.5.1", "already authenticated")
            return
        if self._transaction is not None:
            self._error(503, "5.5.1", "AUTH not allowed during a mail transaction")
            return
        if self.factory.throttle.blocked(self._peer):
            self.reply(454, "4.7.0", "too many failed logins; try again later")
            return
        parts = rest.split(None, 1)
        mechanism = parts[0].upper() if parts else b""
        initial = parts[1].strip() if len(parts) > 1 else None
        if mechanism == b"PLAIN":
            self._auth = {"mechanism": "PLAIN"}
            if initial is None:
                self._state = AUTH
                self.reply(334, None, "")
                return
            return self._auth_step(initial)
        if mechanism == b"LOGIN":
            self._auth = {"mechanism": "LOGIN"}
            self._state = AUTH
            if initial is not None:
                return self._auth_step(initial)
            self.reply(334, None, base64.b64encode(b"Username:").decode())
            return
        self._error(504, "5.5.4", "unrecognized authentication mechanism; use PLAIN or LOGIN")

    def _auth_step(self, line):
        if line == b"*":
            self._state = COMMAND
            self._error(501, "5.0.0", "authentication cancelled")
            return None
        try:
            decoded = base64.b64decode(line, validate=True) if line != b"=" else b""
        except (binascii.Error, ValueError):
            self._state = COMMAND
            self._error(501, "5.5.2", "cannot decode base64")
            return None
        state = self._auth
        if state["mechanism"] == "PLAIN":
            fields = decoded.split(b"\0")
            if len(fields) != 3 or (fields[0] and fields[0] != fields[1]):
                self._state = COMMAND
                self._error(501, "5.5.2", "malformed PLAIN response")
                return None
            username, password = fields[1], fields[2]
        else:
            if "username" not in state:
                state["username"] = decoded
                self.reply(334, None, base64.b64encode(b"Password:").decode())
                return None
            username, password = state["username"], decoded
        self._state = COMMAND
        d = self.portal.login(credentials.UsernamePassword(username, password), None, IMailUser)
        return d.addCallbacks(self._auth_ok, self._auth_failed)

    def _auth_ok(self, result):
        _, avatar, logout = result
        self._user = avatar
        self.factory.throttle.succeeded(self._peer)
        log.info("SMTP AUTH {user} from {peer}", user=avatar.address, peer=self._peer)
        self.reply(235, "2.7.0", "authentication successful")

    def _auth_failed(self, failure):
        if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
            delay = self.factory.throttle.delay(self._peer)
            self.factory.throttle.failed(self._peer)
            log.info("SMTP AUTH failed from {peer}", peer=self._peer)
            d = defer.Deferred()
            reactor.callLater(delay, d.callback, None)
            return d.addCallback(
                lambda _: self.reply(535, "5.7.8", "authentication credentials invalid")
            )
        if failure.check(TemporaryFailure):
            self.reply(454, "4.7.0", "temporary authentication failure")
        else:
            log.failure("SMTP AUTH error", failure)
            self.reply(454, "4.7.0", "temporary authentication failure")

    # --- the mail transaction ----------------------------------------------

    def _reset_transaction(self):
        if self._transaction is not None:
            try:
                self._transaction.abort()
            except Exception:
                log.failure("abort failed")
        if self._data is not None:
            self._data.discard()
            self._data = None
        self._transaction = None
        self._sender = None
        self._recipients = []

    def _protocol_name(self):
        # RFC 3848
        return "ESMTP" + ("S" if self.secure else "") + ("A" if self._user else "")

    def smtp_MAIL(self, rest):
        if self._helo[0] is None:
            self._error(503, "5.5.1", "send EHLO or HELO first")
            return
        if self._transaction is not None:
            self._error(503, "5.5.1", "nested MAIL command")
            return
        if self.policy != "mx" and self._user is None:
            self._error(530, "5.7.0", "authentication required")
            return
        m = self.mail_re.match(rest)
        if not m:
            self._error(501, "5.5.4", "syntax: MAIL FROM:<address>")
            return
        path = m.group("path")
        try:
            params = self._parameters(m.group("opts"))
        except ValueError as e:
            self._error(501, "5.5.4", str(e))
            return
        size = params.get("SIZE")
        if size is not None:
            if not size.isdigit():
                self._error(501, "5.5.4", "SIZE needs a number")
                return
            if int(size) > self.factory.limits["message_size"]:
                self._error(552, "5.3.4", "message size exceeds fixed maximum message size")
                return
        if path in (b"<>", b""):
            sender = ""
        else:
            try:
                sender = str(smtp.Address(path))
            except smtp.AddressError as e:
                self._error(553, "5.1.7", f"bad sender address: {e}")
                return
        envelope = Envelope(
            sender=sender,
            helo=self._helo[0].decode("ascii", "replace"),
            client_address=self._peer,
            protocol=self._protocol_name(),
            authenticated_as=self._user.address if self._user else None,
            received_by=self.factory.hostname,
        )
        d = defer.maybeDeferred(self.factory.delivery.start, envelope)

        def started(transaction):
            self._transaction = transaction
            self._sender = sender
            self._recipients = []
            self.reply(250, "2.1.0", "sender OK")

        return d.addCallbacks(started, self._failed_reply)

    @staticmethod
    def _parameters(text):
        params = {}
        for item in (text or b"").split():
            key, _, value = item.partition(b"=")
            try:
                params[key.decode("ascii").upper()] = value.decode("ascii")
            except UnicodeDecodeError:
                raise ValueError("parameters must be ASCII")
        return params

    def smtp_RCPT(self, rest):
        if self._transaction is None:
            self._error(503, "5.5.1", "need MAIL before RCPT")
            return
        m = self.rcpt_re.match(rest)
        if not m:
            self._error(501, "5.5.4", "syntax: RCPT TO:<address>")
            return
        if len(self._recipients) >= self.factory.limits["recipients"]:
            self.reply(452, "4.5.3", "too many recipients")
            return
        try:
            address = str(smtp.Address(m.group("path")))
        except smtp.AddressError as e:
            self._error(553, "5.1.3", f"bad recipient address: {e}")
            return
        if "@" not in address:
            self._error(553, "5.1.3", "recipient must be a full address (user@domain)")
            return
        domain = address.rpartition("@")[2].lower()
        if not self.factory.is_local_domain(domain):
            if self.policy == "mx":
                self.reply(554, "5.7.1", f"relay access denied: {domain} is not handled here")
            else:
                self.reply(550, "5.7.1", f"relay to {domain} is not configured on this server")
            return
        d = defer.maybeDeferred(self._transaction.add_recipient, address)

        def accepted(_):
            self._recipients.append(address)
            self.reply(250, "2.1.5", "recipient OK")

        return d.addCallbacks(accepted, self._failed_reply)

    def _failed_reply(self, failure):
        if failure.check(PermanentFailure):
            e = failure.value
            self.reply(e.code, e.enhanced, e.text)
        elif failure.check(TemporaryFailure):
            e = failure.value
            self.reply(451, e.enhanced, e.text)
        else:
            log.failure("SMTP backend error", failure)
            self.reply(451, "4.3.0", "local error in processing")

    def smtp_DATA(self, rest):
        if self._transaction is None:
            self._error(503, "5.5.1", "need MAIL before DATA")
            return
        if not self._recipients:
            self._error(554, "5.5.1", "no valid recipients")
            return
        self._data = SpooledSource(self.factory.spool_dir)
        self._data_reader = DataReader(
            self._data.write,
            max_size=self.factory.limits["message_size"],
            max_line=self.factory.limits["line_length"],
        )
        self._state = DATA
        self.setTimeout(self.factory.limits["data_timeout"])
        self.reply(354, None, "end data with <CR><LF>.<CR><LF>")

    def _end_of_data(self):
        self._state = COMMAND
        self.setTimeout(self.timeout)
        reader, source = self._data_reader, self._data
        self._data = None
        if reader.too_big:
            self._reset_transaction()
            source.discard()
            self.reply(552, "5.3.4", "message size exceeds fixed maximum message size")
            return
        if reader.long_line:
            self._reset_transaction()
            source.discard()
            self.reply(
                554, "5.6.0", f"message has a line longer than {self.factory.limits['line_length']} octets"
            )
            return
        header = received_header(
            helo=self._helo[0].decode("ascii", "replace"),
            client_address=self._peer,
            hostname=self.factory.hostname,
            protocol=self._protocol_name(),
            recipients=self._recipients,
        )
        transaction = self._transaction
        d = defer.maybeDeferred(transaction.deliver, PrefixedSource(header, source))
        self._waiting = True

        def done(keys):
            self.reply(250, "2.0.0", "message accepted for delivery")

        def finished(result):
            source.discard()
            self._transaction = None
            self._sender = None
            self._recipients = []
            return result

        d.addCallbacks(done, self._failed_reply)
        d.addBoth(finished)
        d.addBoth(self._resume)
        return d


class SMTPFactory(smtp.SMTPFactory):
    """Builds SMTP sessions for one port (one `policy`)."""

    def __init__(
        self,
        policy,
        hostname,
        delivery,
        portal,
        local_domains,
        limits,
        spool_dir,
        tls_context=None,
        throttle=None,
        connections=None,
        allow_plaintext_auth=False,
    ):
        from mailplat.throttle import ConnectionLimiter, LoginThrottle

        smtp.SMTPFactory.__init__(self, portal)
        self.policy = policy
        self.hostname = hostname
        self.delivery = delivery
        self.local_domains = {d.lower() for d in local_domains}
        self.limits = limits
        self.spool_dir = spool_dir
        self.tls_context = tls_context
        self.throttle = throttle or LoginThrottle(limits["auth_failures"], limits["auth_failure_window"])
        self.connections = connections or ConnectionLimiter(limits["connections_per_ip"])
        self.allow_plaintext_auth = allow_plaintext_auth

    def is_local_domain(self, domain):
        return domain in self.local_domains

    def buildProtocol(self, addr):
        p = MailplatSMTP(self)
        return p
