"""
Logging in (RFC 3501 6.2): STARTTLS, LOGIN, AUTHENTICATE PLAIN and LOGIN
(with RFC 4959 SASL-IR). A mixin of L{mailplat.imap.server.MailplatIMAP}.

On the plain port nothing but STARTTLS leads to a login (LOGINDISABLED,
RFC 3501 7.2.1); failed attempts are slowed and then refused by the
throttle shared with SMTP and POP3.
"""

import base64
import binascii

from twisted.cred import credentials, error as cred_error
from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.mail import imap4

from mailplat.imap.session import AUTH
from mailplat.interfaces import TemporaryFailure

log = Logger()

AUTHENTICATED_TIMEOUT = 30 * 60  # RFC 3501 5.4: at least 30 minutes


class AuthCommands:
    def cmd_STARTTLS(self, tag, reader):
        reader.end()
        if not self._can_starttls():
            return self.bad(tag, "TLS is already active" if self.secure else "STARTTLS not available")
        # RFC 3501 6.2.1 / CVE-2011-0411: nothing sent before the handshake
        # may be acted on after it.
        self._buf = b""
        self.write(tag + b" OK begin TLS negotiation now\r\n")
        self.transport.startTLS(self.ctx)
        self._flow.follow()  # startTLS moved our producer onto the TLS layer
        self.startedTLS = True
        self.expect_handshake(self.timeOut)
        return None

    def _refuse_plaintext(self, tag):
        self.no(tag, "[PRIVACYREQUIRED] use STARTTLS before logging in")

    def cmd_LOGIN(self, tag, reader):
        reader.space()
        user = reader.astring("a user name")
        reader.space()
        password = reader.astring("a password")
        reader.end()
        if not self._auth_allowed():
            return self._refuse_plaintext(tag)
        return self._login(tag, user, password)

    def cmd_AUTHENTICATE(self, tag, reader):
        reader.space()
        mechanism = reader.atom("a SASL mechanism").upper()
        initial = None
        if reader.maybe_space():
            initial = reader.atom("an initial response")  # RFC 4959 SASL-IR
        reader.end()
        if not self._auth_allowed():
            return self._refuse_plaintext(tag)
        if mechanism not in (b"PLAIN", b"LOGIN"):
            return self.no(tag, "unsupported SASL mechanism; use PLAIN or LOGIN")
        self._sasl = {"tag": tag, "mechanism": mechanism}
        if initial is not None:
            return self._sasl_step(initial)
        self.write(b"+ \r\n" if mechanism == b"PLAIN" else b"+ VXNlcm5hbWU6\r\n")
        return None

    def _sasl_step(self, line):
        state = self._sasl
        tag = state["tag"]
        if line.strip() == b"*":
            self._sasl = None
            return self.bad(tag, "AUTHENTICATE cancelled")  # RFC 3501 6.2.2
        try:
            decoded = base64.b64decode(line.strip(), validate=True) if line.strip() != b"=" else b""
        except (binascii.Error, ValueError):
            self._sasl = None
            return self.bad(tag, "cannot decode base64")
        if state["mechanism"] == b"PLAIN":
            self._sasl = None
            fields = decoded.split(b"\0")
            if len(fields) != 3 or (fields[0] and fields[0] != fields[1]):
                return self.bad(tag, "malformed PLAIN response")
            return self._login(tag, fields[1], fields[2])
        if "user" not in state:
            state["user"] = decoded
            self.write(b"+ UGFzc3dvcmQ6\r\n")
            return None
        self._sasl = None
        return self._login(tag, state["user"], decoded)

    def _login(self, tag, user, password):
        # Admitted before the password is checked: parallel guesses count too.
        d = self.factory.throttle.admit(self._peer, user, protocol="imap")
        return d.addCallback(self._login_admitted, tag, user, password)

    def _login_admitted(self, attempt, tag, user, password):
        if attempt is None:
            return self.no(tag, "[UNAVAILABLE] too many failed logins; try again later")
        d = defer.maybeDeferred(self.portal.login, credentials.UsernamePassword(user, password), None, imap4.IAccount)

        def ok(result):
            _, avatar, logout = result
            self._onLogout = logout
            self.account = avatar.account
            self.state = AUTH
            attempt.succeeded()
            self.setTimeout(max(self.timeOut, AUTHENTICATED_TIMEOUT))
            log.info("IMAP login {user} from {peer}", user=user.decode("utf-8", "replace"), peer=self._peer)
            self.ok(tag, b"[CAPABILITY " + b" ".join(self.capability_list()) + b"] logged in")

        def failed(failure):
            if failure.check(cred_error.UnauthorizedLogin):
                delay = attempt.failed()
                wait = defer.Deferred()
                reactor.callLater(delay, wait.callback, None)
                return wait.addCallback(lambda _: self.no(tag, "[AUTHENTICATIONFAILED] authentication failed"))
            attempt.abandoned(failure)
            if failure.check(TemporaryFailure):
                return self.no(tag, "[UNAVAILABLE] temporary failure, try again later")
            log.failure("IMAP login error", failure)
            return self.no(tag, "[UNAVAILABLE] temporary failure, try again later")

        return d.addCallbacks(ok, failed).addBoth(attempt.settle)
