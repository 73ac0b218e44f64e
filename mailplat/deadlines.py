"""
Deadlines that close a connection which the idle timer cannot.

Twisted's TLS layer delays `loseConnection` until what is buffered has
been sent, and before the handshake a client that never sends its
ClientHello takes nothing: such a connection would hold its
`connections_per_ip` slot for ever. So a TLS handshake has a deadline,
and every close we decide on becomes an abort when it has not happened
after a short grace.
"""

from twisted.internet import reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from zope.interface import implementer

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
        peer = getattr(self, "_peer", None)
        log.info("TLS handshake from {peer} not finished in time; connection aborted", peer=peer)
        self.transport.abortConnection()

    def close_connection(self, grace=CLOSE_GRACE, clock=reactor):
        """loseConnection, then abort after `grace` if the peer holds it open."""
        self.transport.loseConnection()
        if self._close_call is None or not self._close_call.active():
            self._close_call = clock.callLater(grace, self.transport.abortConnection)

    def _cancel_handshake(self):
        if self._handshake_call is not None and self._handshake_call.active():
            self._handshake_call.cancel()
        self._handshake_call = None

    def cancel_deadlines(self):
        self._cancel_handshake()
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self._close_call = None
