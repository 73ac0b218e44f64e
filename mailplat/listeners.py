"""
The [listen] ports, bound before the server is built: a port in use stops
start-up with one line naming its key and endpoint, before a state
directory or a certificate is created, and before twistd drops privileges
(it binds as root, then switches user).
"""

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.interfaces import ILoggingContext
from zope.interface import implementer

from mailplat.config import ConfigError
from mailplat import proxyprotocol


@implementer(ILoggingContext)
class _FactoryToCome:
    """
    Stands for a listener's factory while the server is built after its
    ports are bound: the reactor does not run yet, so no connection is
    accepted before L{set} gives the real factory.
    """

    def __init__(self, name):
        self.name = name
        self.factory = None
        self._starts = 0

    def logPrefix(self):
        # Twisted's "... starting on PORT" line names the service.
        return f"mailplat {self.name}"

    def set(self, factory):
        self.factory = factory
        for _ in range(self._starts):
            factory.doStart()

    def doStart(self):
        if self.factory is None:
            self._starts += 1
        else:
            self.factory.doStart()

    def doStop(self):
        if self.factory is not None:
            self.factory.doStop()
        else:
            self._starts -= 1

    def buildProtocol(self, addr):
        return self.factory.buildProtocol(addr) if self.factory is not None else None


class BoundListener(service.Service):
    """A [listen] port bound before the server was built (see L{bind})."""

    def __init__(self, port, stand_in):
        self.port = port
        self.stand_in = stand_in

    def stopService(self):
        service.Service.stopService(self)
        return defer.maybeDeferred(self.port.stopListening)


def _why(failure):
    e = failure.value
    socket_error = getattr(e, "socketError", None)
    if socket_error is not None:
        return getattr(socket_error, "strerror", None) or str(socket_error)
    return str(e)


def bind(config):
    """
    Listen on every [listen] endpoint before anything else is done (no
    state directory, no certificate), so that a port in use stops the
    server with one line naming the key, and before twistd drops privileges.

    @return: {name: (port, stand-in factory)} for L{make_service}'s `bound`.
    @raise ConfigError: `listen.NAME: cannot listen on ENDPOINT: reason`;
        the ports bound so far are closed again.
    """
    from twisted.internet import reactor

    bound = {}
    try:
        for name, endpoint in config.listen.items():
            try:
                server = proxyprotocol.server_endpoint(reactor, endpoint)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(config.source, f"listen.{name}", f"bad endpoint {endpoint!r}: {e}")
            stand_in = _FactoryToCome(name)
            result = []
            server.listen(stand_in).addBoth(result.append)
            if not result:
                raise ConfigError(config.source, f"listen.{name}", f"cannot listen on {endpoint}: no answer from the endpoint")
            if hasattr(result[0], "value"):
                if not result[0].check(error.CannotListenError, OSError):
                    result[0].raiseException()
                raise ConfigError(config.source, f"listen.{name}", f"cannot listen on {endpoint}: {_why(result[0])}")
            bound[name] = (result[0], stand_in)
    except BaseException:
        for port, _ in bound.values():
            port.stopListening()
        raise
    return bound
