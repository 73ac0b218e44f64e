"""
The rspamd check: at end of data the message and its envelope go to
rspamd's normal worker over its HTTP protocol (POST /checkv2, the facts
in request headers: IP, Helo, Hostname, From, Rcpt, User, Queue-Id), with
twisted.web's client; rspamd's action becomes the verdict:

    reject                        -> 550 5.7.1
    soft reject, greylist         -> 451 4.7.1
    add header, rewrite subject   -> delivered into the Junk folder
    no action                     -> no opinion (accepted)

Every scanned message carries X-Spam-* header fields with rspamd's
answer. rspamd down, slow or answering nonsense fails the check: its
`on_error` decides (tempfail, or continue: delivered with
"X-Spam-Status: unchecked"). See docs/check-rspamd.md.
"""

import ipaddress
import json
import re

from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTP11ClientProtocol, HTTPConnectionPool, Request, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from mailplat.checks import Check, CheckUnavailable, Verdict, record_score

log = Logger(namespace="mailplat.plugins.rspamd")

DEFAULT_URL = "http://127.0.0.1:11333"
DEFAULT_MAX_SIZE = 20 * 1024 * 1024
REPLY_LIMIT = 4 * 1024 * 1024
INLINE_READ = 256 * 1024  # octets read on the reactor; a bigger message is read in a thread
JUNK_ACTIONS = ("add header", "rewrite subject")
TEMPFAIL_ACTIONS = ("soft reject", "greylist")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(text, limit=200):
    """A value from rspamd made safe for an SMTP reply or a header field: one line, printable, bounded."""
    text = str(text)
    if not text.isprintable():  # the usual value has no control character: no regular expression
        text = _UNSAFE.sub(" ", text)
    return text.strip()[:limit]


def add_header(envelope, name, value):
    """
    Ask the server to put a header field on top of the delivered message
    (`envelope.added_headers`, honoured after the data checks).
    """
    if envelope is None:
        return
    fields = getattr(envelope, "added_headers", None)
    if fields is None:
        fields = envelope.added_headers = []
    fields.append(f"{name}: {_clean(value, 900)}\n".encode("utf-8", "replace"))


class RspamdCheck(Check):
    name = "rspamd"

    def __init__(self, url=DEFAULT_URL, folder="Junk", headers=True, max_size=DEFAULT_MAX_SIZE, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.url = url.rstrip("/")
        self.folder = folder
        self.headers = headers
        self.max_size = max_size
        self.reactor = reactor
        # Not persistent: rspamd's normal worker answers every scan with
        # "Connection: close" (rspamd 3.4, measured, keep-alive asked or
        # not), so a pool would keep nothing; and nothing stays open for a
        # stopping server to close.
        self.agent = agent_for(self.url, reactor, HTTPConnectionPool(reactor, persistent=False))
        # An http:// IP address (the usual local rspamd) is reached with
        # twisted.web's HTTP/1.1 client protocol over a plain connectTCP:
        # the Agent's pool, endpoint and URI layers cost more CPU per scan
        # than the request itself. Anything else goes through the Agent.
        self.direct = direct_address(self.url)
        self.target = (self.url + "/checkv2").encode("ascii")
        self.path = URI.fromBytes(self.target).originForm

    def _post(self, headers, data):
        """A Deferred firing with twisted.web's Response to POST /checkv2 of `data`."""
        if self.direct is None:
            return self.agent.request(b"POST", self.target, headers, BytesProducer(data))
        host, port, host_header = self.direct
        headers.setRawHeaders(b"Host", [host_header])
        return ScanFactory(Request(b"POST", self.path, headers, BytesProducer(data))).connect(self.reactor, host, port)

    def _request_headers(self, session, envelope):
        h = Headers({b"Content-Type": [b"message/rfc822"]})

        def put(name, values):
            values = [_clean(v, 998).encode("utf-8", "replace") for v in values if v]
            if values:
                h.setRawHeaders(name, values)

        put(b"IP", [envelope.client_address or session.client_address])
        put(b"Helo", [envelope.helo or session.helo or ""])
        put(b"Hostname", [envelope.client_name or session.client_name or ""])
        put(b"From", [envelope.sender])
        put(b"Rcpt", list(session.recipients or getattr(envelope, "recipients", None) or []))
        put(b"User", [envelope.authenticated_as or session.authenticated_as or ""])
        put(b"Queue-Id", [getattr(envelope, "queue_id", None) or ""])
        put(b"MTA-Name", [envelope.received_by or ""])
        return h

    def _scan(self, session, envelope, data):
        """A Deferred firing with (answer, action, score, required), or failing with CheckUnavailable."""
        # Plain callbacks, not inlineCallbacks: two Deferred layers fewer a scan.
        try:
            d = self._post(self._request_headers(session, envelope), data)
        except Exception as e:
            return defer.fail(self._unavailable(e))
        response = []

        def read(r):
            response.append(r)
            return readBody(r)

        def failed(failure):
            if failure.check(defer.CancelledError):
                return failure
            raise self._unavailable(failure.value)

        return d.addCallback(read).addCallbacks(lambda body: self._answer(response[0], body), failed)

    def _unavailable(self, e):
        return CheckUnavailable(f"rspamd at {self.url}: {e.__class__.__name__}: {e}")

    def _answer(self, response, body):
        if response.code != 200:
            raise CheckUnavailable(f"rspamd at {self.url} answered HTTP {response.code}: {body[:200]!r}")
        try:
            answer = json.loads(body[:REPLY_LIMIT])
            action = str(answer["action"])
            score = float(answer.get("score", 0.0))
            required = float(answer.get("required_score", 0.0))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckUnavailable(f"rspamd at {self.url}: unreadable answer ({e}): {body[:200]!r}")
        return answer, action, score, required

    def data(self, session, envelope, source):
        if source.size > self.max_size:
            log.info("rspamd: {size} octets, over max_size: not scanned", size=source.size)
            if self.headers:
                add_header(envelope, "X-Spam-Status", "unchecked (too large)")
            return None
        # A big message may be in a spool file: read it in a thread, not on the reactor.
        if source.size > INLINE_READ:
            d = threads.deferToThread(_read, source).addCallback(lambda data: self._scan(session, envelope, data))
        else:
            d = self._scan(session, envelope, _read(source))

        def unchecked(failure):
            # Kept when on_error = "continue" delivers the message anyway.
            if self.headers:
                add_header(envelope, "X-Spam-Status", "unchecked (rspamd unavailable)")
            return failure

        return d.addCallbacks(lambda result: self._verdict(envelope, *result), unchecked)

    def _verdict(self, envelope, answer, action, score, required):
        symbols = answer.get("symbols") if isinstance(answer.get("symbols"), dict) else {}
        spam = action not in ("no action",)
        # For Sieve's spamtest (RFC 5235): rspamd's own score and threshold.
        record_score(envelope, "spam", score, required)
        if self.headers:
            add_header(envelope, "X-Spam-Flag", "YES" if action in JUNK_ACTIONS + ("reject",) else "NO")
            add_header(envelope, "X-Spam-Score", f"{score:.2f} / {required:.2f}")
            add_header(envelope, "X-Spam-Action", action)
            named = sorted(str(k) for k, v in symbols.items() if isinstance(v, dict) and v.get("score"))
            if named:
                add_header(envelope, "X-Spam-Symbols", ", ".join(named))
        if spam:
            log.info("rspamd: {action} score {score} for {sender}", action=action, score=score, sender=envelope.sender)
        if action == "reject":
            messages = answer.get("messages") if isinstance(answer.get("messages"), dict) else {}
            text = _clean(messages.get("smtp_message") or "message refused as spam")
            return Verdict.reject(text or "message refused as spam", 550, "5.7.1")
        if action in TEMPFAIL_ACTIONS:
            return Verdict.tempfail("message deferred by the spam filter, please try again later", 451, "4.7.1")
        if action in JUNK_ACTIONS:
            return Verdict.folder(self.folder)
        if action != "no action":
            log.warn("rspamd: unknown action {action!r}: taken as no action", action=action)
        return None


@implementer(IAgentEndpointFactory)
class AddressEndpoints:
    """
    A plain TCP connection to an IP address, without log lines. The Agent's
    own endpoints (HostnameEndpoint) resolve even an address literal and
    build a class per connection: about a third of mailplat's CPU per scan.
    """

    def __init__(self, reactor):
        self.reactor = reactor

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii").strip("[]")
        kind = TCP6ClientEndpoint if ipaddress.ip_address(host).version == 6 else TCP4ClientEndpoint
        return QuietEndpoint(kind(self.reactor, host, uri.port))


@implementer(IStreamClientEndpoint)
class QuietEndpoint:
    """An endpoint whose connections' factories log nothing ("Starting factory ...": two lines a scan)."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def connect(self, factory):
        factory.noisy = False
        return self.endpoint.connect(factory)


class ScanConnection(HTTP11ClientProtocol):
    """twisted.web's HTTP/1.1 client protocol, sending its factory's one request once connected."""

    def connectionMade(self):
        HTTP11ClientProtocol.connectionMade(self)
        self.factory.connected(self)


class ScanFactory(ClientFactory):
    """
    One request on one new connection (rspamd closes it after its answer):
    `connect` returns a Deferred firing with the Response; cancelling it
    stops the connecting or aborts the connection.
    """

    noisy = False  # no "Starting factory" lines, two a scan

    def __init__(self, request):
        self.request = request
        self.connector = None
        self.sent = None
        self.cancelled = False
        self.answer = defer.Deferred(self._cancel)

    def connect(self, reactor, host, port):
        self.connector = reactor.connectTCP(host, port, self)
        return self.answer

    def buildProtocol(self, addr):
        protocol = ScanConnection()
        protocol.factory = self
        return protocol

    def connected(self, protocol):
        if self.cancelled or self.answer.called:
            protocol.transport.abortConnection()
            return
        self.sent = protocol.request(self.request)
        self.sent.addCallbacks(self._tell, self._tell)

    def _tell(self, result):
        if self.cancelled or self.answer.called:
            return
        if isinstance(result, Failure):
            self.answer.errback(result)
        else:
            self.answer.callback(result)

    def clientConnectionFailed(self, connector, reason):
        self._tell(reason)

    def _cancel(self, answer):
        # Deferred.cancel then fails `answer` with CancelledError (which
        # addTimeout turns into TimeoutError), whatever the connection says.
        self.cancelled = True
        if self.sent is not None:
            self.sent.cancel()
        elif self.connector is not None and self.connector.state == "connecting":
            self.connector.stopConnecting()


def direct_address(url):
    """(host, port, Host header) for an http:// URL naming an IP address, else None."""
    try:
        uri = URI.fromBytes(url.encode("ascii"))
        ipaddress.ip_address(uri.host.decode("ascii").strip("[]"))
    except (UnicodeError, ValueError):
        return None
    if uri.scheme != b"http":
        return None
    host = uri.host.decode("ascii").strip("[]")
    host_header = f"[{host}]" if ":" in host else host  # RFC 7230 5.4, RFC 3986 3.2.2
    if uri.port != 80:
        host_header += f":{uri.port}"
    return host, uri.port, host_header.encode("ascii")


def agent_for(url, reactor, pool):
    """An Agent for `url`: connecting straight to an http:// IP address, else through a name lookup (and TLS)."""
    try:
        uri = URI.fromBytes(url.encode("ascii"))
        ipaddress.ip_address(uri.host.decode("ascii").strip("[]"))
    except (UnicodeError, ValueError):
        return Agent(reactor, pool=pool)
    if uri.scheme != b"http":
        return Agent(reactor, pool=pool)
    return Agent.usingEndpointFactory(reactor, AddressEndpoints(reactor), pool=pool)


def _read(source):
    with source.open() as f:
        return f.read()


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written at once: FileBodyProducer
    would feed it in 64 KB slices, one reactor turn each, through a
    cooperator.
    """

    def __init__(self, data):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


def from_section(section, context):
    """An RspamdCheck from its checked [checks.rspamd] table (docs/check-rspamd.md)."""
    url = section.get("url", DEFAULT_URL)
    if not re.match(r"^https?://[^/\s]+", url or ""):
        raise ValueError(f"url: the address of rspamd's normal worker, e.g. {DEFAULT_URL!r}, not {url!r}")
    folder = section.get("folder", "Junk")
    if not folder:
        raise ValueError("folder: a folder name is required, e.g. 'Junk'")
    max_size = section.get("max_size", DEFAULT_MAX_SIZE)
    if max_size <= 0:
        raise ValueError(f"max_size: a positive number of octets, not {max_size!r}")
    return RspamdCheck(url, folder, section.get("headers", True), max_size)
