"""
The server's one DNS resolver (`[dns] servers`, `[dns] timeout`), built with
twisted.names: every part that looks names up (relay MX and address
lookups, and the SPF/DKIM/DMARC checks to come) asks this one object, so a
test or an operator points all of them at one name server.

    resolver = SharedResolver(config.dns)
    answers, authority, additional = yield resolver.lookupMailExchange("example.org")
    resolver.close()          # when the server stops

It provides twisted.names' IResolver: the lookup methods are those of the
underlying resolver (/etc/hosts first, then the name servers).
"""

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.names import client, hosts, resolve

DEFAULT_TIMEOUT = 10  # seconds a lookup may take in all, retries included
RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = b"/etc/hosts"


def retry_timeouts(total):
    """
    A total time for a lookup as twisted.names' per-try timeouts: a first
    try of one second (a lost UDP datagram is the common failure), then the
    rest of the time for a second try (which goes to the next server).
    """
    if total <= 2:
        return (total,)
    return (1, total - 1)


def make_resolver(servers=None, timeout=DEFAULT_TIMEOUT):
    """
    /etc/hosts, then the given name servers ([(host, port)]) or those of
    resolv.conf. No cache resolver: its expiry timers outlive the lookups.

    @return: (the resolver chain, the client.Resolver inside it, whose
        resolv.conf timer L{close_resolver} stops).
    """
    timeouts = retry_timeouts(timeout)
    if servers:
        upstream = client.Resolver(servers=list(servers), timeout=timeouts)
    else:
        upstream = client.Resolver(resolv=RESOLV_CONF, timeout=timeouts)
    return resolve.ResolverChain([hosts.Resolver(HOSTS_FILE), upstream]), upstream


def close_resolver(upstream):
    """
    Stop the timer with which client.Resolver re-reads resolv.conf, and
    close the TCP connections it keeps after an answer too long for UDP
    (it never closes them itself). A Deferred that fires once they are gone.
    """
    call = getattr(upstream, "_parseCall", None)
    if call is not None and call.active():
        call.cancel()
    connections = list(getattr(upstream, "connections", []))
    for protocol in connections:
        protocol.transport.loseConnection()
    return _until_closed(upstream.connections) if connections else defer.succeed(None)


@defer.inlineCallbacks
def _until_closed(connections, tries=100):
    for _ in range(tries):
        if not connections:
            return
        yield deferLater(reactor, 0.01, lambda: None)


class SharedResolver:
    """
    The process's resolver, built on first use (client.Resolver starts a
    timer when it is built, which a server that never looks a name up
    should not leave behind).

    @param settings: the checked `[dns]` table: {"servers": [(host, port)],
        "timeout": seconds}; None for resolv.conf and the default timeout.
    """

    def __init__(self, settings=None):
        settings = settings or {}
        self.servers = list(settings.get("servers") or [])
        self.timeout = settings.get("timeout") or DEFAULT_TIMEOUT
        self._chain = None
        self._upstream = None

    @property
    def resolver(self):
        """The twisted.names IResolver the lookups go to."""
        if self._chain is None:
            self._chain, self._upstream = make_resolver(self.servers, self.timeout)
        return self._chain

    def __getattr__(self, name):
        # IResolver's methods (query, lookupMailExchange, lookupText, ...)
        # are the chain's: one object to hand around, built when first asked.
        if name.startswith("lookup") or name in ("query", "getHostByName"):
            return getattr(self.resolver, name)
        raise AttributeError(name)

    def close(self):
        if self._upstream is not None:
            return close_resolver(self._upstream)
        return defer.succeed(None)
