"""
Local delivery over LMTP (RFC 2033): each accepted message is handed to an
LMTP server (Dovecot's, Cyrus') at a Twisted client endpoint, so mailplat
can be the MTA in front of an existing mail store.

One LMTP session per SMTP transaction, opened at the first recipient:
  - RCPT is proxied: the LMTP server's answer for each recipient is the
    answer the SMTP client gets (4xx -> TemporaryFailure, 5xx ->
    PermanentFailure), so unknown or over-quota users are refused at RCPT.
  - After DATA the LMTP server answers once per accepted recipient (RFC 2033
    4.2), the SMTP client once for all. Any 4xx, or no answer at all, fails
    the transaction temporarily (451: the client keeps the message and
    retries; recipients that already answered 2xx may get it twice, which
    is better than never). If some recipients got 5xx and none 4xx, the
    transaction fails permanently with a text that names who got the
    message and who did not, so the sender's bounce tells the truth.
  - The connection is checked before DATA; if the LMTP server dropped it
    (an idle timeout during a slow DATA from the client), a new session
    replays MAIL and RCPT.

The LMTP server adds Return-Path itself (RFC 2033 4.3 leaves final
delivery to it); the message goes as received, with our Received header.
"""

from twisted.internet import defer, endpoints, error, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from mailplat.interfaces import (
    DeliveryOutcome,
    IDeliveryAgent,
    IDeliveryTransaction,
    PermanentFailure,
    TemporaryFailure,
)

log = Logger()

CHUNK = 64 * 1024


class LMTPReply:
    """One reply: code, enhanced status (or None) and text."""

    __slots__ = ("code", "enhanced", "text")

    def __init__(self, code, lines):
        self.code = code
        text = " ".join(lines)
        first = text.split(" ", 1)
        if first and first[0].count(".") == 2 and first[0][:1] in "245":
            self.enhanced = first[0]
            text = first[1] if len(first) > 1 else ""
        else:
            self.enhanced = None
        self.text = text

    @property
    def ok(self):
        return 200 <= self.code < 300

    @property
    def temporary(self):
        return not 500 <= self.code < 600  # 4xx, and anything unexpected

    def failure(self, what):
        """This reply as the TemporaryFailure / PermanentFailure it means."""
        text = f"{what}: {self.code} {self.text}".strip()
        if self.temporary:
            return TemporaryFailure(
                text, self.enhanced if (self.enhanced or "").startswith("4") else "4.3.0", public=True
            )
        return PermanentFailure(
            text, self.enhanced if (self.enhanced or "").startswith("5") else "5.0.0", self.code, public=True
        )

    def __str__(self):
        return f"{self.code} {self.enhanced + ' ' if self.enhanced else ''}{self.text}"


class LMTPClient(LineReceiver, TimeoutMixin):
    """
    The client side of an LMTP session: `command(line)` sends a command and
    returns a Deferred of its L{LMTPReply}; replies are matched in order.
    Every waiting Deferred fails with TemporaryFailure if the connection
    is lost or the server stops answering for `timeout` seconds.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 64 * 1024

    def __init__(self, timeout):
        self.reply_timeout = timeout
        self._waiting = []  # Deferreds, in the order their replies come
        self._lines = []
        self.greeting = defer.Deferred()
        self._waiting.append(self.greeting)
        self.connected_now = False

    def connectionMade(self):
        self.connected_now = True
        self.setTimeout(self.reply_timeout)

    def lineReceived(self, line):
        text = line.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit():
            self._broken(f"LMTP server sent a malformed reply: {text[:80]!r}")
            return
        self._lines.append(text[4:])
        if text[3:4] == "-":
            return
        reply = LMTPReply(int(text[:3]), self._lines)
        self._lines = []
        if not self._waiting:
            log.warn("LMTP server sent an unexpected reply: {reply}", reply=str(reply))
            return
        d = self._waiting.pop(0)
        self.setTimeout(self.reply_timeout if self._waiting else None)
        d.callback(reply)

    def lineLengthExceeded(self, line):
        self._broken("LMTP server sent an over-long line")

    def _broken(self, why):
        log.error("{why}", why=why)
        self._fail_all(TemporaryFailure(why))
        self.transport.abortConnection()

    def expect(self):
        """A Deferred for one more reply (after DATA: one per recipient)."""
        d = defer.Deferred()
        self._waiting.append(d)
        self.setTimeout(self.reply_timeout)
        return d

    def command(self, line):
        d = self.expect()
        self.transport.write(line.encode("utf-8") + b"\r\n")
        return d

    def send_body(self, source):
        """The message, CRLF line ends, dot-stuffed (RFC 5321 4.5.2), then the final dot."""
        out, size = [], 0
        with source.open() as f:
            for line in _lines(f):
                if line.endswith(b"\n"):
                    line = line[:-1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.startswith(b"."):
                    line = b"." + line
                out.append(line + b"\r\n")
                size += len(line) + 2
                if size >= CHUNK:
                    self.transport.writeSequence(out)
                    out, size = [], 0
        out.append(b".\r\n")
        self.transport.writeSequence(out)

    def timeoutConnection(self):
        self._fail_all(TemporaryFailure(f"LMTP server did not answer within {self.reply_timeout}s", "4.4.2"))
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.connected_now = False
        self.setTimeout(None)
        self._fail_all(TemporaryFailure("connection to the LMTP server lost", "4.4.2"))

    def _fail_all(self, exception):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(exception)

    def close(self):
        """QUIT politely; the connection goes when the server answers or drops it."""
        if self.connected_now:
            d = self.command("QUIT")
            d.addErrback(lambda _: None)
            d.addBoth(lambda _: self.transport.loseConnection())


def _lines(f, size=CHUNK):
    """Lines of a binary file, read in chunks (source files need not support iteration)."""
    rest = b""
    while True:
        chunk = f.read(size)
        if not chunk:
            break
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


class _ClientFactory(protocol.Factory):
    def __init__(self, timeout):
        self.timeout = timeout

    def buildProtocol(self, addr):
        p = LMTPClient(self.timeout)
        p.factory = self
        return p


@implementer(IDeliveryAgent)
class LMTPDelivery:
    """
    @param endpoint: a Twisted client endpoint string
        ("tcp:host=127.0.0.1:port=24", "unix:path=/run/dovecot/lmtp").
    @param hostname: our name, for LHLO.
    """

    def __init__(self, endpoint, hostname, timeout=300, connect_timeout=30, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.endpoint_text = endpoint
        self.endpoint = endpoints.clientFromString(reactor, endpoint)
        self.where = _where(endpoint)
        self.hostname = hostname
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    def start(self, envelope):
        return LMTPTransaction(self, envelope)

    @defer.inlineCallbacks
    def session(self, sender):
        """Connect, greet, LHLO and MAIL FROM: a client ready for RCPT."""
        d = endpoints.connectProtocol(self.endpoint, LMTPClient(self.timeout))
        d.addTimeout(self.connect_timeout, self.reactor)
        try:
            client = yield d
        except (error.ConnectError, error.DNSLookupError, defer.TimeoutError, OSError) as e:
            log.error("LMTP server {where} unavailable: {e}", where=self.endpoint_text, e=e)
            raise TemporaryFailure("local delivery unavailable (LMTP server not reachable)", "4.4.1")
        try:
            greeting = yield client.greeting
            if greeting.code != 220:
                raise greeting.failure("LMTP greeting")
            reply = yield client.command(f"LHLO {self.hostname}")
            if not reply.ok:
                raise reply.failure("LHLO")
            reply = yield client.command(f"MAIL FROM:<{sender}>")
            if not reply.ok:
                raise reply.failure("MAIL FROM")
        except Exception:
            client.transport.abortConnection()
            raise
        return client


@implementer(IDeliveryTransaction)
class LMTPTransaction:
    def __init__(self, agent, envelope):
        self.agent = agent
        self.envelope = envelope
        self.recipients = []  # accepted by the LMTP server, in RCPT order
        self.outcomes = []  # DeliveryOutcome per recipient, after deliver
        self._client = None
        self._lock = defer.DeferredLock()

    @defer.inlineCallbacks
    def _session(self):
        """The open session; a new one (LHLO, MAIL) when there is none."""
        if self._client is None or not self._client.connected_now:
            self._client = yield self.agent.session(self.envelope.sender)
        return self._client

    def add_recipient(self, address):
        # One command at a time: replies are matched to commands in order.
        return self._lock.run(self._add_recipient, address)

    @defer.inlineCallbacks
    def _add_recipient(self, address):
        if address in self.recipients:
            return  # one copy per mailbox; the server would answer twice
        client = yield self._session()
        reply = yield client.command(f"RCPT TO:<{address}>")
        if not reply.ok:
            raise reply.failure(address)
        self.recipients.append(address)

    @defer.inlineCallbacks
    def _replayed(self):
        """A fresh session with MAIL and the accepted RCPTs sent again."""
        log.info("LMTP session lost before DATA; replaying {n} recipient(s)", n=len(self.recipients))
        self._client = None
        client = yield self._session()
        refused = []
        for address in self.recipients:
            reply = yield client.command(f"RCPT TO:<{address}>")
            if not reply.ok:
                refused.append((address, reply))
        return client, refused

    def deliver(self, source):
        return self._lock.run(self._deliver, source)

    @defer.inlineCallbacks
    def _deliver(self, source):
        if not self.recipients:
            raise PermanentFailure("no valid recipients", "5.5.1", 554)
        self.outcomes = []
        client, refused = self._client, []
        if client is None or not client.connected_now:
            try:
                client, refused = yield self._replayed()
            except Exception as e:
                self._failed(self.recipients, e)
                raise
        accepted = [a for a in self.recipients if a not in {r for r, _ in refused}]
        try:
            if accepted:
                reply = yield client.command("DATA")
                if reply.code != 354:
                    raise reply.failure("DATA")
                answers = [client.expect() for _ in accepted]
                client.send_body(source)
                results = yield defer.DeferredList(answers, consumeErrors=True)
            else:
                results = []
        except Exception as e:
            self._failed(accepted, e, refused)
            self._close()
            raise
        self._close()
        replies = list(refused)
        for address, (ok, value) in zip(accepted, results):
            if not ok:
                # No answer for this recipient: we cannot know whether it
                # was delivered; the client must retry (maybe a duplicate).
                error = value.value if value.check(TemporaryFailure) else TemporaryFailure("LMTP delivery failed")
                answered = [(a, v) for a, (k, v) in zip(accepted, results) if k]
                self._failed([a for a, (k, _) in zip(accepted, results) if not k], error, refused + answered)
                raise error
            replies.append((address, value))
        self.outcomes = [self._outcome(address, reply) for address, reply in replies]
        self._settle(replies)
        return [str(reply) for _, reply in replies]

    def _outcome(self, address, reply):
        return DeliveryOutcome(address, self.agent.where, None if reply.ok else reply.failure(address))

    def _failed(self, addresses, error, replies=()):
        """The outcomes when the session broke: `error` for `addresses`, the replies for the rest."""
        if not isinstance(error, (TemporaryFailure, PermanentFailure)):
            error = TemporaryFailure(f"LMTP delivery failed: {error}")
        self.outcomes = [self._outcome(a, r) for a, r in replies] + [
            DeliveryOutcome(a, self.agent.where, error) for a in addresses
        ]

    def _settle(self, replies):
        """RFC 2033 4.2: one reply per recipient, mapped onto our one answer."""
        delivered = [a for a, r in replies if r.ok]
        temporary = [(a, r) for a, r in replies if not r.ok and r.temporary]
        permanent = [(a, r) for a, r in replies if not r.ok and not r.temporary]
        for address, reply in temporary + permanent:
            log.warn("LMTP refused {address}: {reply}", address=address, reply=str(reply))
        if temporary:
            address, reply = temporary[0]
            if delivered:
                log.warn(
                    "LMTP: {delivered} already have the message; the client's retry may give them a second copy",
                    delivered=", ".join(delivered),
                )
            raise reply.failure(address)
        if permanent:
            text = "; ".join(f"not delivered to {a}: {r.code} {r.text}" for a, r in permanent)
            if delivered:
                text += f" (delivered to {', '.join(delivered)})"
            first = permanent[0][1]
            # The LMTP server's answers are meant for the sender, as Postfix passes them on.
            raise PermanentFailure(text, first.enhanced or "5.0.0", first.code, public=True)

    def _close(self):
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def abort(self):
        self.recipients = []
        self._close()


def _where(endpoint):
    """The `mailbox` of a `delivered` line: host:port of a TCP endpoint, a socket's path, else the endpoint."""
    parts = dict(p.partition("=")[::2] for p in endpoint.split(":")[1:] if "=" in p)
    if "host" in parts:
        return f"{parts['host']}:{parts['port']}" if "port" in parts else parts["host"]
    return parts.get("path") or endpoint


def from_config(section, context):
    """`[delivery] local = "lmtp"` with the `[delivery.lmtp]` table."""
    table = section.get("lmtp")
    if not isinstance(table, dict):
        raise ValueError('[delivery.lmtp] endpoint is required, e.g. endpoint = "tcp:host=127.0.0.1:port=24"')
    known = {"endpoint", "lhlo", "timeout", "connect_timeout"}
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"lmtp.{sorted(unknown)[0]}: unknown key; known: {', '.join(sorted(known))}")
    endpoint = table.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError(f'lmtp.endpoint: a client endpoint string is required, e.g. "tcp:host=127.0.0.1:port=24", not {endpoint!r}')
    for key, default in (("timeout", 300), ("connect_timeout", 30)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"lmtp.{key}: must be a positive number of seconds, not {value!r}")
    hostname = table.get("lhlo", context.config.hostname)
    if not isinstance(hostname, str) or not hostname:
        raise ValueError(f"lmtp.lhlo: must be a host name, not {hostname!r}")
    try:
        return LMTPDelivery(endpoint, hostname, table.get("timeout", 300), table.get("connect_timeout", 30))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"lmtp.endpoint: bad endpoint {endpoint!r}: {e}")
