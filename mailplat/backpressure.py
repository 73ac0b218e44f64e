"""
Bounded memory per connection: a session reads its client, and takes the
next pipelined command from its buffer, only while nothing says wait.

Two things say wait, and each is a reason of its own, so that one ending
never resumes the other:

  WRITING   the socket's send buffer is past Twisted's high-water mark (a
            client that pipelines and does not read its answers);
  ANSWERING a command's answer is still being worked out, and the next one
            must wait for it (RFC 2920, RFC 2449, RFC 3501 5.5).

While the send buffer is full the socket is not read at all. While only a
command runs, input is still read, up to `input_limit` octets (so a client
that closes is noticed), then TCP holds the rest back.

A L{Flow} is the connection's one producer (a transport takes one). It is
registered on the TCP connection itself, under any TLS layer: that is what
buffers, and Twisted's TLS layer would wait for a producer registered on it
to leave before it closed the connection.
"""

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

WRITING = "writing"
ANSWERING = "answering"

INPUT_LIMIT = 1024 * 1024  # octets of pipelined input read while a command runs


def socket_of(transport):
    """The TCP connection under `transport`'s TLS layer, if it has one."""
    layer = getattr(transport, "protocol", None)
    if getattr(transport, "TLS", False) and layer is not None:
        # After startTLS the connection's TLS layer is its protocol; that
        # layer's own transport writes, reads and pauses the socket directly.
        return layer.transport
    if isinstance(transport, ProtocolWrapper) and transport.transport is not None:
        return socket_of(transport.transport)  # implicit TLS (TLSMemoryBIOProtocol)
    return transport


@implementer(IPushProducer)
class Flow:
    """
    One connection's reasons to wait. The protocol calls `attach` in
    connectionMade, `received()` after each dataReceived, `hold(ANSWERING)`
    while a command's answer is pending and `release(ANSWERING)` once it is
    written, and `follow()` after each command (STARTTLS moves the
    transport); its processing loop stops while `paused`. `proceed` is
    called when the last reason ends, to take the input that waited.
    """

    def __init__(self, proceed, buffered, input_limit=INPUT_LIMIT):
        self._proceed = proceed
        self._buffered = buffered  # () -> octets of unprocessed input
        self._input_limit = input_limit
        self._reasons = set()
        self._transport = None  # the protocol's transport
        self._socket = None  # where we are registered and what we pause
        self._registered = False
        self._reading_paused = False
        self._input_full = False
        self._stopped = False
        self._writable = []  # Deferreds waiting for WRITING to end

    # --- the protocol's side --------------------------------------------

    @property
    def paused(self):
        """True while any reason holds: take no further command."""
        return bool(self._reasons)

    @property
    def writing(self):
        """True while the send buffer is full: produce no more output."""
        return WRITING in self._reasons

    def attach(self, transport):
        self._transport = transport
        self._socket = socket_of(transport)
        self._registered = True  # before: a connection already gone stops us at once
        self._socket.registerProducer(self, True)

    def follow(self):
        """
        Right after startTLS: Twisted has moved this producer
        onto the new TLS layer, whose loseConnection would then wait for it
        for ever. Register on the socket again.
        """
        if not self._registered or socket_of(self._transport) is self._socket:
            return
        self._transport.unregisterProducer()  # the TLS layer's, now
        self._registered = False
        self.attach(self._transport)

    def hold(self, reason):
        self._reasons.add(reason)
        if reason == WRITING:
            self._pause_reading()

    def release(self, reason):
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if reason == WRITING:
            self._fire_writable()
        if self._reasons:
            if not self.writing and not self._input_full:
                self._resume_reading()
            return
        self._input_full = False
        self._resume_reading()
        self._proceed()
        self.received()

    def received(self):
        """After new input was processed: stop reading if too much waits."""
        if self._reasons and self._buffered() > self._input_limit:
            self._input_full = True
            self._pause_reading()

    def writable(self):
        """A Deferred that fires once the send buffer has drained (or the connection is gone)."""
        if not self.writing or self._stopped:
            return defer.succeed(None)
        d = defer.Deferred()
        self._writable.append(d)
        return d

    # --- IPushProducer: the socket's side --------------------------------

    def pauseProducing(self):
        self.hold(WRITING)

    def resumeProducing(self):
        if self._socket is not None and self._socket.disconnecting:
            # Closing: Twisted closes once its buffer is empty, but not while
            # a paused producer is there to resume instead. Step aside.
            self._registered = False
            self._socket.unregisterProducer()
            self._stop()
            return
        self.release(WRITING)

    def stopProducing(self):
        # The connection is gone (Twisted drops its reference to us).
        self._registered = False
        self._stop()

    # --- inside ---------------------------------------------------------

    def _stop(self):
        self._stopped = True
        self._reasons.discard(WRITING)  # nothing will drain now; waiters go on and see the close
        self._fire_writable()

    def _fire_writable(self):
        waiting, self._writable = self._writable, []
        for d in waiting:
            d.callback(None)

    def _pause_reading(self):
        if not self._reading_paused and self._socket is not None:
            self._reading_paused = True
            self._socket.pauseProducing()

    def _resume_reading(self):
        if self._reading_paused:
            self._reading_paused = False
            self._socket.resumeProducing()
