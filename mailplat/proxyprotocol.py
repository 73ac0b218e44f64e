"""
The PROXY protocol (HAProxy's, versions 1 and 2) on a `[listen]`
endpoint written `haproxy:ENDPOINT`, e.g. `haproxy:tcp:port=25`: a
balancer in front of several nodes (HAProxy's `send-proxy`) says who the
client is, so Received:, SPF, DNSBL, greylisting, the connection limits and
the login throttle see the client rather than the balancer.

Twisted parses the header (twisted.protocols.haproxy), but its wrapper
connects the protocol at once: a server that speaks first (an SMTP, IMAP or
POP3 banner) would answer before the header came and read the balancer's
address in connectionMade. Here the protocol is connected only once the
header is read; a connection that sends none within `HEADER_TIMEOUT`
seconds, or a malformed one, is closed without a word.
"""

from twisted.internet import reactor
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

PREFIX = "haproxy:"
HEADER_TIMEOUT = 10.0  # seconds; HAProxy sends the header at once


class HeaderFirst(HAProxyProtocolWrapper):
    """The wrapped protocol is connected after the PROXY header, not before."""

    def makeConnection(self, transport):
        # ProtocolWrapper.makeConnection without connecting the wrapped protocol.
        from twisted.internet.protocol import Protocol
        from zope.interface import directlyProvides, providedBy

        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._deadline = self.factory.clock.callLater(HEADER_TIMEOUT, self._no_header)

    def _no_header(self):
        self._deadline = None
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self._proxyInfo is not None:
            return self.wrappedProtocol.dataReceived(data)
        connect = self.wrappedProtocol
        # The parser hands what follows the header to the wrapped protocol:
        # hold it until that protocol is connected.
        held = []
        self.wrappedProtocol = _Holder(held)
        try:
            HAProxyProtocolWrapper.dataReceived(self, data)
        finally:
            self.wrappedProtocol = connect
        if self._proxyInfo is None:
            return None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        connect.makeConnection(self)
        for chunk in held:
            if self.connected:
                connect.dataReceived(chunk)
        return None

    def connectionLost(self, reason):
        if getattr(self, "_deadline", None) is not None and self._deadline.active():
            self._deadline.cancel()
        if self._proxyInfo is None:
            # The wrapped protocol never saw the connection: nothing to tell it.
            self.factory.unregisterProtocol(self)
            return
        ProtocolWrapper.connectionLost(self, reason)


class _Holder:
    def __init__(self, held):
        self.held = held

    def dataReceived(self, data):
        self.held.append(data)


class HeaderFirstFactory(HAProxyWrappingFactory):
    protocol = HeaderFirst

    def __init__(self, wrapped, clock=reactor):
        HAProxyWrappingFactory.__init__(self, wrapped)
        self.clock = clock


@implementer(IStreamServerEndpoint)
class ProxiedEndpoint:
    """An endpoint whose connections start with a PROXY header (L{HeaderFirst})."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def listen(self, factory):
        return self.wrapped.listen(HeaderFirstFactory(factory))


def server_endpoint(reactor, description):
    """serverFromString, with `haproxy:` made L{ProxiedEndpoint} rather than Twisted's own."""
    from twisted.internet import endpoints

    if description.startswith(PREFIX):
        return ProxiedEndpoint(endpoints.serverFromString(reactor, description[len(PREFIX):]))
    return endpoints.serverFromString(reactor, description)


def listening_service(description, factory):
    """strports.service, with L{server_endpoint}'s reading of `haproxy:`."""
    from twisted.application.internet import StreamServerEndpointService

    svc = StreamServerEndpointService(server_endpoint(reactor, description), factory)
    svc._raiseSynchronously = True  # as strports.service: a port in use fails startService
    return svc
