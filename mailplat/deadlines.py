"""
Deadlines that close a connection which the idle timer cannot.

Twisted's TLS layer delays `loseConnection` until what is buffered has
been sent, and before the handshake a client that never sends its
ClientHello takes nothing: such a connection would hold its
`connections_per_ip` slot for ever. So a TLS handshake has a deadline,
and every close we decide on becomes an abort when it has not happened
after a short grace.
"""

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from mailplat import oplog
from mailplat.metrics import service_of

log = Logger()

# Seconds a polite close may take (our last reply flushed) before the
# connection is aborted.
CLOSE_GRACE = 5


@implementer(IHandshakeListener)
class HandshakeDeadline:
    """
    Mixed into a protocol: `expect_handshake(seconds)` when TLS starts
    (implicit TLS at connect, or STARTTLS/STLS); the connection is aborted
    if `handshakeCompleted` has not come by then. `cancel_deadlines()` in
    connectionLost.
    """

    _handshake_call = None
    _close_call = None
    handshake_done = False

    def expect_handshake(self, seconds, clock=reactor):
        self.handshake_done = False
        self._cancel_handshake()
        self._handshake_call = clock.callLater(seconds, self._handshake_expired)

    def handshakeCompleted(self):
        self.handshake_done = True
        self._cancel_handshake()

    def _handshake_expired(self):
        self._handshake_call = None
        self._log_tls_failed("timeout", "handshake not finished in time; connection aborted")
        self.transport.abortConnection()

    def _log_tls_failed(self, cause, reason):
        """One `tls-failed` line (docs/operating.md); counted by mailplat.metrics."""
        peer = getattr(self, "_peer", None)
        oplog.emit("tls-failed", service=service_of(self), client=oplog.client(peer), cause=cause, reason=reason)

    def close_connection(self, grace=CLOSE_GRACE, clock=reactor):
        """loseConnection, then abort after `grace` if the peer holds it open."""
        self.transport.loseConnection()
        close_after_close_notify(self.transport)
        if self._close_call is None or not self._close_call.active():
            self._close_call = clock.callLater(grace, self.transport.abortConnection)

    def _cancel_handshake(self):
        if self._handshake_call is not None and self._handshake_call.active():
            self._handshake_call.cancel()
        self._handshake_call = None

    def cancel_deadlines(self, reason=None):
        """In connectionLost, with its reason: a TLS error before the handshake ended is logged."""
        if reason is not None and not self.handshake_done and self._handshake_call is not None:
            error = reason.check(SSL.Error)
            if error is not None:
                self._log_tls_failed("error", _ssl_reason(reason.value))
        self._cancel_handshake()
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self._close_call = None


def _ssl_reason(error):
    """OpenSSL's reason for a failed handshake ("wrong version number"), else the error's text."""
    try:
        return "; ".join(str(e[2]) for e in error.args[0]) or str(error)
    except (IndexError, TypeError, KeyError):
        return str(error) or type(error).__name__


def close_after_close_notify(transport):
    """
    After a TLS loseConnection: once our close_notify is out, close the TCP
    connection too. Twisted's TLS layer otherwise waits for the peer's
    close_notify, and a client that waits for the server to close (Dovecot's
    imaptest after LOGOUT, when the alert came in the same read as the BYE)
    never sends one: both sides wait. RFC 8446 6.1 (and RFC 5246 7.2.1): the
    side that closes need not wait for the other's close_notify.
    """
    # Implicit TLS: the transport is the TLS layer; after STARTTLS, its protocol is.
    layer = transport.protocol if getattr(transport, "TLS", False) else transport
    if not isinstance(layer, TLSMemoryBIOProtocol) or not layer.disconnecting or layer.transport is None:
        return
    try:
        sent = layer.getHandle().get_shutdown() & SSL.SENT_SHUTDOWN
    except (SSL.Error, AttributeError):
        return
    if sent:
        layer.transport.loseConnection()  # after what is buffered, close_notify included


class InputDeadline:
    """
    A command line, and a DATA, BDAT chunk or literal-carrying IMAP command,
    must arrive whole within a bound however its bytes trickle: the idle
    timer restarts on every byte, so a client sending one byte every few
    seconds would otherwise hold its session (and its connection slot) for
    ever.

    After each read the server says what is incomplete: `watch(line_open,
    unit_open)`. A clock starts when a line (or unit) opens and keeps
    running until it is whole; `expired` is called when one runs out.
    """

    def __init__(self, expired, line_seconds, unit_seconds, clock=reactor):
        self._expired = expired
        self._clock = clock
        self._bounds = {"line": line_seconds, "unit": unit_seconds}
        self._calls = {"line": None, "unit": None}

    def watch(self, line_open, unit_open):
        for kind, is_open in (("line", line_open), ("unit", unit_open)):
            call = self._calls[kind]
            running = call is not None and call.active()
            if is_open and not running:
                self._calls[kind] = self._clock.callLater(self._bounds[kind], self._fire, kind)
            elif not is_open and running:
                call.cancel()
                self._calls[kind] = None

    def stop(self):
        self.watch(False, False)

    def _fire(self, kind):
        self._calls[kind] = None
        log.info("input {kind} not complete within {seconds} s; closing", kind=kind, seconds=self._bounds[kind])
        self._expired()
