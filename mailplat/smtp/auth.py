"""
SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, through the portal.

Offered only on submission ports and only once TLS is up (unless the
operator allows plaintext); every failure feeds the shared LoginThrottle,
which delays the answer and then refuses the client address for a while.
"""

import base64
import binascii

from twisted.cred import credentials, error as cred_error
from twisted.internet import defer, reactor
from twisted.logger import Logger

from mailplat.interfaces import IMailUser, TemporaryFailure

log = Logger()

COMMAND, AUTH = "COMMAND", "AUTH"


class SMTPAuthMixin:
    """The AUTH command for L{mailplat.smtp.server.MailplatSMTP}."""

    def _auth_available(self):
        if self.factory.portal is None or self.policy == "mx":
            return False
        return self.secure or self.factory.allow_plaintext_auth

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
        # Admitted before the password is checked: parallel guesses count too.
        d = self.factory.throttle.admit(self._peer, username, protocol="smtp")
        return d.addCallback(self._auth_admitted, username, password)

    def _auth_admitted(self, attempt, username, password):
        if attempt is None:
            self.reply(454, "4.7.0", "too many failed logins; try again later")
            return None
        d = defer.maybeDeferred(self.portal.login, credentials.UsernamePassword(username, password), None, IMailUser)
        return d.addCallbacks(self._auth_ok, self._auth_failed, callbackArgs=(attempt,), errbackArgs=(attempt,)).addBoth(attempt.settle)

    def _auth_ok(self, result, attempt):
        _, avatar, logout = result
        self._user = avatar
        self._check_session.authenticated_as = avatar.address
        attempt.succeeded()
        log.info("SMTP AUTH {user} from {peer}", user=avatar.address, peer=self._peer)
        self.reply(235, "2.7.0", "authentication successful")

    def _auth_failed(self, failure, attempt):
        if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
            delay = attempt.failed()
            log.info("SMTP AUTH failed from {peer}", peer=self._peer)
            d = defer.Deferred()
            reactor.callLater(delay, d.callback, None)
            return d.addCallback(
                lambda _: self.reply(535, "5.7.8", "authentication credentials invalid")
            )
        attempt.abandoned(failure)
        if failure.check(TemporaryFailure):
            self.reply(454, "4.7.0", "temporary authentication failure")
        else:
            log.failure("SMTP AUTH error", failure)
            self.reply(454, "4.7.0", "temporary authentication failure")

