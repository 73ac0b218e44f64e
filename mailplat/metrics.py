"""
The `[listen] metrics` endpoint: what the server does, in Prometheus text
format (prometheus-client), served by twisted.web at `/metrics`.

Counters are derived from the operator log (L{mailplat.oplog}): one
twisted.logger observer looks at each event's `oplog_event` and fields,
so a message, a login or a TLS failure is counted exactly when its line is
written, and no protocol code calls the metrics. Gauges are read when
scraped: open sessions from a set per listener (protocols add themselves
in connectionMade, see L{session_opened}), IMAP sessions in IDLE from
those sessions, the relay queue from the queue object.

Each server has its own CollectorRegistry (several servers in one test
process do not clash); the log observer sees the events of the whole
process, which is one server under twistd. docs/operating.md lists every
metric and its labels.
"""

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.logger import globalLogPublisher
from twisted.web import resource, server

# The [listen] key -> the protocol it speaks.
PROTOCOLS = {
    "smtp": "smtp", "submission": "smtp", "smtps": "smtp",
    "imap": "imap", "imaps": "imap",
    "pop3": "pop3", "pop3s": "pop3",
}
# The SMTP [listen] keys -> the `port` field of accepted/refused lines.
SMTP_PORTS = {"smtp": "mx", "submission": "submission", "smtps": "smtps"}

# login-failed reason -> the `result` label of mailplat_logins_total.
LOGIN_RESULTS = {
    "bad credentials": "failed",
    "locked out": "locked_out",
    "too many logins waiting": "too_many_waiting",
}

# The relay queue logs one event per recipient per attempt with these
# fields (mailplat.delivery.relay.queue.RelayQueue._log_attempt).
RELAY_NAMESPACE = "mailplat.delivery.relay.queue"

# Seconds from queueing to the final answer of a relayed recipient: a
# smarthost on the LAN answers in under a second, a retried one in hours.
RELAY_LATENCY_BUCKETS = (0.5, 1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)

# Seconds from the end of DATA to a local copy on disk (or accepted by the
# LMTP server), checks included: milliseconds, seconds when a check waits on DNS.
DELIVERY_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# The `outcome` label of a local or LMTP delivery (the relay's are sent,
# deferred, bounced): `delivered` lines, and `delivery-failed` lines by their outcome field.
LOCAL_OUTCOMES = ("delivered", "deferred", "refused")


class Sessions(set):
    """The open sessions (protocol instances) of one [listen] key."""

    def __init__(self, service, protocol):
        super().__init__()
        self.service = service
        self.protocol = protocol


def session_opened(protocol):
    """In a protocol's connectionMade: count it while it is open."""
    sessions = getattr(protocol.factory, "sessions", None)
    if sessions is not None:
        sessions.add(protocol)


def session_closed(protocol):
    """In connectionLost (idempotent)."""
    sessions = getattr(protocol.factory, "sessions", None)
    if sessions is not None:
        sessions.discard(protocol)


def service_of(protocol):
    """The [listen] key a protocol instance was accepted on, when counted (for log lines)."""
    sessions = getattr(getattr(protocol, "factory", None), "sessions", None)
    return getattr(sessions, "service", None)


def _idle(session):
    # MailplatIMAP keeps the tag of a running IDLE (RFC 2177) until DONE.
    return getattr(session, "_idle_tag", None) is not None


class ServerMetrics:
    """
    One server's metrics: its registry, the counters the log observer
    feeds, and the gauges read at scrape time.

    @param services: the [listen] keys served (labels start at zero for them).
    @param relay: the relay queue (L{mailplat.delivery.relay.queue.RelayQueue}), or None.
    @param local_backend: the `[delivery] local` name (its series start at zero).
    """

    def __init__(self, services=(), relay=None, clock=time.time, local_backend=None):
        self.relay = relay
        self.clock = clock
        self.sessions = {}  # [listen] key -> Sessions
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter(
            "mailplat_messages_accepted", "Messages accepted (committed), by SMTP port.", ["port"], registry=r
        )
        self.refused = Counter(
            "mailplat_messages_refused",
            "Refused senders, recipients and messages, by SMTP port, stage, reply code and enhanced status.",
            ["port", "stage", "code", "status"],
            registry=r,
        )
        self.logins = Counter(
            "mailplat_logins", "Logins by protocol and result (ok, failed, locked_out, too_many_waiting, tempfail).",
            ["protocol", "result"], registry=r,
        )
        self.lockouts = Counter("mailplat_lockouts", "Client addresses locked out after failed logins.", registry=r)
        self.tls_failures = Counter(
            "mailplat_tls_handshake_failures", "TLS handshakes that failed (error) or did not finish in time (timeout).",
            ["service", "reason"], registry=r,
        )
        self.deliveries = Counter(
            "mailplat_deliveries",
            "Delivery attempts per recipient, by backend and outcome (relay: sent, deferred, bounced;"
            " maildir, mbox, lmtp: delivered, deferred, refused).",
            ["backend", "outcome"], registry=r,
        )
        self.relay_latency = Histogram(
            "mailplat_relay_delivery_seconds",
            "Seconds from queueing to a relayed recipient's final answer (sent or bounced).",
            ["outcome"], buckets=RELAY_LATENCY_BUCKETS, registry=r,
        )
        self.delivery_latency = Histogram(
            "mailplat_delivery_seconds",
            "Seconds from the end of DATA to a local recipient's copy delivered, by backend.",
            ["backend"], buckets=DELIVERY_LATENCY_BUCKETS, registry=r,
        )
        r.register(_Gauges(self))
        # Series that exist before the first event, so rate() sees a zero.
        for service in services:
            protocol = PROTOCOLS.get(service)
            if service in SMTP_PORTS:
                self.accepted.labels(SMTP_PORTS[service])
            if protocol is not None:
                self.logins.labels(protocol, "ok")
                self.logins.labels(protocol, "failed")
        if local_backend is not None:
            for outcome in LOCAL_OUTCOMES:
                self.deliveries.labels(local_backend, outcome)
            self.delivery_latency.labels(local_backend)
        if relay is not None:
            for outcome in ("sent", "deferred", "bounced"):
                self.deliveries.labels("relay", outcome)

    def track(self, factory, service):
        """Count the sessions of `factory`, the protocol factory of [listen] `service`."""
        sessions = Sessions(service, PROTOCOLS.get(service, service))
        self.sessions[service] = sessions
        factory.sessions = sessions

    # --- the log observer --------------------------------------------------

    # Started before the listeners and stopped after them (a runner of
    # mailplat.service.ServerService), so no event of a session is missed.

    def startService(self):
        globalLogPublisher.addObserver(self.observe)

    def stopService(self):
        globalLogPublisher.removeObserver(self.observe)

    def observe(self, event):
        try:
            what = event.get("oplog_event")
            if what is not None:
                self._count(what, event.get("oplog_fields") or {})
            elif event.get("log_namespace") == RELAY_NAMESPACE and "result" in event and "recipient" in event:
                self._relay_attempt(event)
        except Exception:
            # An observer that raises is removed by twisted.logger: metrics
            # must never cost the log.
            pass

    def _count(self, what, fields):
        if what == "accepted":
            self.accepted.labels(_label(fields.get("port"))).inc()
        elif what == "refused":
            self.refused.labels(
                _label(fields.get("port")), _label(fields.get("stage")), _label(fields.get("code")),
                _label(fields.get("status")),
            ).inc()
        elif what == "login":
            self.logins.labels(_label(fields.get("protocol")), "ok").inc()
        elif what == "login-failed":
            result = LOGIN_RESULTS.get(fields.get("reason"), "failed")
            self.logins.labels(_label(fields.get("protocol")), result).inc()
        elif what == "login-tempfail":
            self.logins.labels(_label(fields.get("protocol")), "tempfail").inc()
        elif what == "lockout":
            self.lockouts.inc()
        elif what == "delivered":
            backend = _label(fields.get("backend"))
            self.deliveries.labels(backend, "delivered").inc()
            if fields.get("delay") is not None:
                self.delivery_latency.labels(backend).observe(float(fields["delay"]))
        elif what == "delivery-failed":
            self.deliveries.labels(_label(fields.get("backend")), _label(fields.get("outcome"))).inc()
        elif what == "tls-failed":
            self.tls_failures.labels(_label(fields.get("service")), _label(fields.get("cause"))).inc()

    def _relay_attempt(self, event):
        outcome = event["result"]
        self.deliveries.labels("relay", outcome).inc()
        if outcome in ("sent", "bounced") and self.relay is not None:
            entry = self.relay.entries.get(event.get("queue_id"))
            created = entry.record.get("created") if entry is not None else None
            if created is not None:
                self.relay_latency.labels(outcome).observe(max(0.0, self.clock() - created))

    # --- the endpoint ---------------------------------------------------------

    def site(self):
        """The twisted.web Site for the [listen] metrics endpoint."""
        root = resource.Resource()
        root.putChild(b"metrics", MetricsPage(self.registry))
        site = _QuietSite(root)
        site.displayTracebacks = False
        return site


def _label(value):
    return "-" if value is None else str(value)


class _Gauges:
    """The gauges read when scraped (prometheus-client's custom collector)."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        m = self.metrics
        open_ = GaugeMetricFamily("mailplat_sessions_open", "Open sessions, by [listen] key and protocol.",
                                  labels=["service", "protocol"])
        idle = GaugeMetricFamily("mailplat_imap_idle_sessions", "IMAP sessions in IDLE (RFC 2177), by [listen] key.",
                                 labels=["service"])
        for service, sessions in m.sessions.items():
            open_.add_metric([service, sessions.protocol], len(sessions))
            if sessions.protocol == "imap":
                idle.add_metric([service], sum(1 for s in list(sessions) if _idle(s)))
        yield open_
        yield idle
        if m.relay is not None:
            entries = list(m.relay.entries.values())
            yield GaugeMetricFamily("mailplat_relay_queue_messages", "Messages in the relay queue.", value=len(entries))
            pending = sum(len(e.pending()) for e in entries)
            yield GaugeMetricFamily("mailplat_relay_queue_recipients", "Recipients still to deliver in the relay queue.",
                                    value=pending)
            created = [e.record.get("created") for e in entries if e.record.get("created") is not None]
            oldest = max(0.0, m.clock() - min(created)) if created else 0.0
            yield GaugeMetricFamily("mailplat_relay_queue_oldest_seconds",
                                    "Age of the oldest message in the relay queue (0 when empty).", value=oldest)


class _QuietSite(server.Site):
    """No access-log line per request: a scrape every 15 s is not an event."""

    def log(self, request):
        pass


class MetricsPage(resource.Resource):
    """GET /metrics: the registry in Prometheus text format."""

    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)
