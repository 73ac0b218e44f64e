"""
Outbound SMTP: Twisted's ESMTPClient for the greeting, EHLO, STARTTLS and
AUTH, with its mail transaction replaced. Twisted's sends one command per
round trip, ignores PIPELINING and SIZE, sends RSET after every message and
misses dot-stuffing across read boundaries; this one pipelines (RFC 2920),
declares SIZE (RFC 1870), carries several messages per connection, and
reports each recipient's reply.

A L{ConnectionPool} owns the connections: at most `per_destination` to one
destination and `total` in all; messages for a destination wait in its
queue and are taken by the next connection that is ready.
"""

import collections

from twisted.internet import defer, endpoints, error, protocol, reactor, ssl
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols import basic

from mailplat.delivery.relay import dane

log = Logger()


class Job:
    """
    One message to one destination: the sender, the recipients, and where
    the bytes are. `deferred` fires with {recipient: (code, text)}; code 0
    means no reply (the connection failed).
    """

    def __init__(self, queue_id, sender, recipients, path, crlf_size, eight_bit, require_tls=False):
        self.queue_id = queue_id
        self.require_tls = require_tls  # RFC 8689: MAIL FROM ... REQUIRETLS
        self.sender = sender
        self.recipients = list(recipients)
        self.path = path
        self.crlf_size = crlf_size
        self.eight_bit = eight_bit
        self.utf8 = not (sender.isascii() and all(r.isascii() for r in self.recipients))
        self.deferred = defer.Deferred()
        self.results = {}

    def finish(self, default):
        """Fire once: recipients without a reply get `default`."""
        if self.deferred.called:
            return
        out = {r: self.results.get(r, default) for r in self.recipients}
        self.deferred.callback(out)


def _text(resp):
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(str(resp).split())


class DotStuffer:
    """LF -> CRLF and a dot before every line that starts with one (RFC 5321 4.5.2)."""

    def __init__(self):
        self.line_start = True

    def __call__(self, chunk):
        if not chunk:
            return chunk
        out = chunk.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
        if self.line_start and chunk[:1] == b".":
            out = b"." + out
        self.line_start = chunk[-1:] == b"\n"
        return out


class RelayClient(smtp.ESMTPClient):
    """One outbound connection, carrying the jobs its pool hands it."""

    debug = False
    heloFallback = True

    def __init__(self, pool, destination, identity, context, timeout):
        auth = destination.auth
        smtp.ESMTPClient.__init__(self, auth[1].encode() if auth else None, context, identity)
        self.pool = pool
        self.destination = destination
        self.timeout = timeout
        # RFC 3207: STARTTLS when offered; required where configured, and
        # before AUTH unless the route says "none" (no password in clear).
        self.requireTransportSecurity = destination.tls == "starttls" or (auth is not None and destination.tls == "may")
        self.requireAuthentication = auth is not None
        if auth:
            user = auth[0].encode()
            self.registerAuthenticator(smtp.CramMD5ClientAuthenticator(user))
            self.registerAuthenticator(smtp.LOGINAuthenticator(user))
            self.registerAuthenticator(smtp.PLAINAuthenticator(user))
        self.extensions = {}
        self.ready = False
        self.job = None
        self.error = None  # (code, text) of what ended the session
        self._commands = collections.deque()  # (line, handler) not yet sent
        self._handlers = collections.deque()  # handlers awaiting a reply
        self._accepted = []
        self._mail_failed = None
        self._closed = False
        self.tls_started = False
        self.dane_result = None  # (reason or None, description) once a DANE check ran

    # --- session set-up (ESMTPClient's) ----------------------------------------

    def esmtpState_serverConfig(self, code, resp):
        items = {}
        for line in resp.splitlines():
            parts = line.split(None, 1)
            if parts:
                items[parts[0].upper()] = parts[1] if len(parts) > 1 else None
        self.extensions = items
        self.tryTLS(code, resp, items)

    def esmtpState_starttls(self, code, resp):
        self.tls_started = True
        smtp.ESMTPClient.esmtpState_starttls(self, code, resp)

    def sendError(self, exc):
        """Greeting, EHLO, TLS or AUTH failed, or a timeout: give up this connection."""
        code = getattr(exc, "code", 0) or 0
        self.error = (code if code > 0 else 0, _text(getattr(exc, "resp", exc)))
        self._fail_job(self.error)
        if self.transport is None:
            return
        if isinstance(exc, smtp.SMTPTimeoutError):
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason=error.ConnectionDone):
        smtp.ESMTPClient.connectionLost(self, reason)
        self._closed = True
        self.pool.unpark(self)
        if self.error is None:
            self.error = (0, f"connection lost: {reason.getErrorMessage()}")
        self._fail_job(self.error)
        self.pool.closed(self)

    def _fail_job(self, why):
        job, self.job = self.job, None
        if job is not None:
            job.finish(why)

    # --- transactions ------------------------------------------------------------

    def smtpState_from(self, code, resp):
        """The session is ready (after EHLO, STARTTLS, AUTH): run jobs."""
        self._expected = range(0, 1000)
        self._okresponse = self._reply
        self._failresponse = self._reply
        self.ready = True
        if self.destination.dane is not None:
            # RFC 7672: the DANE outcome of this connection, once per session.
            log.info("DANE: {destination}: STARTTLS, {outcome}", destination=self.destination,
                     outcome="certificate matches a TLSA record" if self.destination.dane.records
                     else self.destination.dane.describe())
        if self.destination.mta_sts == "testing" and not self.tls_started:
            log.warn("MTA-STS testing: {destination} offers no STARTTLS; enforce would not send there",
                     destination=self.destination)
        self._next()

    def _next(self):
        job = self.pool.next_job(self)
        if job is None:
            if not self.pool.park(self):
                self.quit()
            return
        self._begin(job)

    def quit(self):
        self._send(b"QUIT", lambda code, resp: self.transport.loseConnection())

    def wake(self):
        """A parked connection gets work (see L{ConnectionPool.park})."""
        self._next()

    def _reply(self, code, resp):
        if not self._handlers:
            # A reply nobody asked for (e.g. 421 before closing).
            self.error = (code, _text(resp))
            self.transport.loseConnection()
            return
        self._handlers.popleft()(code, resp)
        self._pump()

    def _send(self, line, handler):
        self.sendLine(line)
        self._handlers.append(handler)

    def _pump(self):
        # RFC 2920 3.1: with PIPELINING, MAIL, RCPT and DATA go in one group.
        if b"PIPELINING" in self.extensions:
            while self._commands:
                self._send(*self._commands.popleft())
        elif self._commands and not self._handlers:
            self._send(*self._commands.popleft())

    def _begin(self, job):
        self.job = job
        self._accepted = []
        self._mail_failed = None
        limit = self.extensions.get(b"SIZE")
        refusal = None
        if limit and limit.isdigit() and 0 < int(limit) < job.crlf_size:
            # RFC 1870 6.1: don't send what the server said it won't take.
            refusal = (552, f"5.3.4 message of {job.crlf_size} octets is over the server's limit of {int(limit)}")
        elif job.utf8 and b"SMTPUTF8" not in self.extensions:
            # RFC 6531 3.2: international addresses need SMTPUTF8.
            refusal = (550, "5.6.7 the server does not support SMTPUTF8 for international addresses")
        elif job.require_tls and (b"REQUIRETLS" not in self.extensions or not self.destination.verify):
            # RFC 8689 4.2: the next hop must offer REQUIRETLS (after verified TLS).
            refusal = (550, f"5.7.30 REQUIRETLS: {self.destination.name} does not support REQUIRETLS")
        if refusal is not None:
            self._end({r: refusal for r in job.recipients}, rset=False)
            return
        params = b""
        if b"SIZE" in self.extensions:
            params += b" SIZE=%d" % job.crlf_size
        if job.eight_bit and b"8BITMIME" in self.extensions:
            params += b" BODY=8BITMIME"  # RFC 6152
        if job.utf8:
            params += b" SMTPUTF8"
        if job.require_tls:
            params += b" REQUIRETLS"
        self._commands.append((b"MAIL FROM:<" + job.sender.encode() + b">" + params, self._mail_reply))
        for r in job.recipients:
            self._commands.append((b"RCPT TO:<" + r.encode() + b">", self._rcpt_reply(r)))
        self._commands.append((b"DATA", self._data_reply))
        self._pump()

    def _mail_reply(self, code, resp):
        if code != 250:
            self._mail_failed = (code, _text(resp))
            if b"PIPELINING" not in self.extensions:
                self._commands.clear()
                self._end({}, rset=True)

    def _rcpt_reply(self, recipient):
        def reply(code, resp):
            if self._mail_failed:
                return
            self.job.results[recipient] = (code, _text(resp))
            if 200 <= code < 300:
                self._accepted.append(recipient)
            if (
                b"PIPELINING" not in self.extensions
                and not self._accepted
                and recipient == self.job.recipients[-1]
            ):
                self._commands.clear()  # no DATA for nobody
                self._end({}, rset=True)

        return reply

    def _data_reply(self, code, resp):
        if code == 354 and (self._mail_failed or not self._accepted):
            # RFC 2920 3.1: DATA accepted with no valid recipient: send the
            # end of data at once and ignore its reply.
            self._send(b".", lambda c, r: self._end({}, rset=True))
            return
        if code != 354:
            failed = {r: (code, _text(resp)) for r in self._accepted}
            self._end(failed, rset=True)
            return
        stuffer = DotStuffer()

        def transform(chunk):
            self.resetTimeout()
            return stuffer(chunk)

        f = open(self.job.path, "rb")
        d = basic.FileSender().beginFileTransfer(f, self.transport, transform)

        def sent(_):
            f.close()
            if self._closed:
                return
            self.resetTimeout()
            self.transport.write((b"" if stuffer.line_start else b"\r\n") + b".\r\n")
            self._handlers.append(self._final_reply)

        def failed(reason):
            f.close()
            if not self._closed:
                self.transport.loseConnection()

        d.addCallbacks(sent, failed)

    def _final_reply(self, code, resp):
        self._end({r: (code, _text(resp)) for r in self._accepted}, rset=False)

    def _end(self, results, rset):
        """The job is answered; RSET after an unfinished transaction, then the next."""
        job, self.job = self.job, None
        job.results.update(results)
        job.finish(self._mail_failed or (451, "4.4.0 no reply"))
        self._mail_failed = None
        if rset:
            self._send(b"RSET", lambda code, resp: self._next())
        else:
            self._next()


class _Factory(protocol.Factory):
    def __init__(self, pool, destination, state):
        self.pool = pool
        self.destination = destination
        self.state = state
        self.built = False

    def buildProtocol(self, addr):
        # Counted as a connection from here on: its end is reported by
        # connectionLost, not by the endpoint's Deferred.
        self.built = True
        self.state.connecting -= 1
        client = self.pool.make_client(self.destination)
        client.factory = self
        client.pool_state = self.state
        self.state.connections.add(client)
        return client


class _DestinationState:
    def __init__(self):
        self.pending = collections.deque()
        self.connections = set()
        self.connecting = 0
        self.attempts = set()  # connect Deferreds, cancelled on stop
        self.idle = {}  # parked client -> its timer


class ConnectionPool:
    """Outbound connections, limited per destination and in total."""

    def __init__(self, identity, total=50, per_destination=10, timeout=300, connect_timeout=30, linger=1.0, clock=reactor,
                 trust_root=None):
        self.identity = identity
        # The CAs that verified TLS checks against (`[relay] tls_trust_file`); None: the system's.
        self.trust_root = trust_root
        self.total = total
        self.per_destination = per_destination
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        # A connection with nothing to do waits this long for the next
        # message to its destination before QUIT: no new handshake per message.
        self.linger = linger
        self.clock = clock
        self.destinations = {}  # key -> _DestinationState
        self.count = 0
        self.stopping = False
        self._idle_waiters = []
        # Destinations whose STARTTLS handshake failed: plaintext until then
        # (RFC 7435 opportunistic security: better unencrypted than never).
        self.plaintext_until = {}

    def send(self, destination, job):
        """Queue `job` for `destination`; returns job.deferred."""
        state = self.destinations.setdefault(destination.key, _DestinationState())
        state.pending.append((destination, job))
        if state.idle:
            client, timer = state.idle.popitem()
            timer.cancel()
            client.wake()
        self._open(destination.key)
        return job.deferred

    def park(self, client):
        """Keep an idle connection for `linger` seconds; False: close it now."""
        state = client.pool_state
        if self.stopping or self.linger <= 0:
            return False

        def expire():
            del state.idle[client]
            client.quit()

        state.idle[client] = self.clock.callLater(self.linger, expire)
        return True

    def unpark(self, client):
        timer = client.pool_state.idle.pop(client, None) if hasattr(client, "pool_state") else None
        if timer is not None and timer.active():
            timer.cancel()

    def _evict_idle(self):
        """At the total limit, a parked connection makes room for one with work."""
        for state in self.destinations.values():
            if state.idle:
                client, timer = state.idle.popitem()
                timer.cancel()
                client.quit()
                return

    def next_job(self, client):
        state = self.destinations.get(client.destination.key)
        if self.stopping or state is None or not state.pending:
            return None
        return state.pending.popleft()[1]

    def make_client(self, destination):
        client = None
        if destination.dane is not None:
            # RFC 7672 2.2: STARTTLS required; the TLSA records, not the CAs, judge the certificate.
            def judged(reason, description):
                if client is not None:
                    client.dane_result = (reason, description)

            context = dane.DANEClientTLS(destination.dane, judged)
        elif destination.tls == "none" or (
            destination.tls == "may" and self.plaintext_until.get(destination.key, 0) > self.clock.seconds()
        ):
            context = None
        elif destination.verify:
            context = self.verified_context(destination)
        else:
            # RFC 7435: opportunistic TLS, no certificate check.
            context = ssl.CertificateOptions()
        client = RelayClient(self, destination, self.identity, context, self.timeout)
        return client

    def verified_context(self, destination):
        """TLS that checks the certificate against the trust root and the host name (RFC 6125; RFC 8461 4.2)."""
        return ssl.optionsForClientTLS(destination.name, trustRoot=self.trust_root)

    def _open(self, key):
        state = self.destinations[key]
        if self.count >= self.total and len(state.pending) > state.connecting:
            self._evict_idle()
        while (
            not self.stopping
            and len(state.pending) > state.connecting
            and len(state.connections) + state.connecting < self.per_destination
            and self.count < self.total
        ):
            destination = state.pending[0][0]
            state.connecting += 1
            self.count += 1
            self._connect(destination, state)

    def _connect(self, destination, state):
        if ":" in destination.address:
            endpoint = endpoints.TCP6ClientEndpoint(self.clock, destination.address, destination.port, self.connect_timeout)
        else:
            endpoint = endpoints.TCP4ClientEndpoint(self.clock, destination.address, destination.port, self.connect_timeout)
        if destination.tls == "implicit":
            if destination.verify:
                context = self.verified_context(destination)
            else:
                context = ssl.CertificateOptions()
            endpoint = endpoints.wrapClientTLS(context, endpoint)
        factory = _Factory(self, destination, state)
        d = endpoint.connect(factory)
        state.attempts.add(d)

        def done(result):
            state.attempts.discard(d)
            return result

        def failed(reason):
            if factory.built:
                return  # connectionLost reports it
            state.connecting -= 1
            self.count -= 1
            self._failed(state, (0, f"{destination}: {reason.getErrorMessage()}"))

        d.addBoth(done)
        d.addErrback(failed)

    def _failed(self, state, why):
        """A connection failed before carrying any message: unless another one works, fail the waiting jobs."""
        if not any(c.ready for c in state.connections) and not state.connecting:
            while state.pending:
                state.pending.popleft()[1].finish(why)
        self._reopen()

    def closed(self, client):
        state = client.pool_state
        state.connections.discard(client)
        self.count -= 1
        if not client.ready:
            # Greeting, EHLO, TLS or AUTH failed: the next host may do better.
            code, text = client.error
            if client.tls_started and client.destination.tls == "may":
                self.plaintext_until[client.destination.key] = self.clock.seconds() + 3600
                text = f"STARTTLS failed ({text}); plaintext for the next hour"
            prefix = f"{code} " if code else ""
            destination = client.destination
            suffix = ""
            if destination.dane is not None:
                # RFC 7672 2.2: never in clear, never to a certificate no TLSA record matches; the message waits.
                reason = client.dane_result[0] if client.dane_result else None
                if reason is not None:
                    text = reason
                prefix = f"4.7.5 DANE requires STARTTLS with a certificate matching TLSA: {prefix}"
            elif destination.mta_sts == "enforce":
                # RFC 8461 5: never in clear, never to an unverified host; the message waits.
                prefix = f"4.7.5 MTA-STS requires verified STARTTLS: {prefix}"
            if (destination.dane is not None or destination.mta_sts == "enforce") and destination.tlsrpt is not None:
                # RFC 8460: the domain's reporting address, for the delivery log line.
                suffix = f" (TLS-RPT: {destination.tlsrpt})"
                log.warn("relay: TLS policy failure at {destination}: {reason}; the domain's TLS-RPT address is {tlsrpt}",
                         destination=destination, reason=text, tlsrpt=str(destination.tlsrpt))
            self._failed(state, (0, f"{destination}: {prefix}{text}{suffix}"))
        else:
            self._reopen()
        self._check_idle()

    def _reopen(self):
        for key, state in list(self.destinations.items()):
            if state.pending:
                self._open(key)
            elif not state.connections and not state.connecting:
                del self.destinations[key]
        self._check_idle()

    def _check_idle(self):
        if self.count == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def stop(self):
        """Close every connection; waiting jobs fail. Deferred fires when all are gone."""
        self.stopping = True
        # A job finished here may drop its destination from the dict.
        for state in list(self.destinations.values()):
            while state.pending:
                state.pending.popleft()[1].finish((0, "4.3.2 mail system shutting down"))
            for client in list(state.connections):
                client.transport.abortConnection()
            for attempt in list(state.attempts):
                attempt.cancel()
        if self.count == 0:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle_waiters.append(d)
        return d
