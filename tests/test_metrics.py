"""
Metrics (issue 12, item 4): `[listen] metrics` serves Prometheus text
format; messages, logins, lockouts and TLS failures are counted from the
operator log, open sessions, IDLE sessions and the relay queue read when
scraped. Every test drives the server over real sockets and scrapes it over
HTTP, parsing the answer with prometheus-client's own parser.
"""

import imaplib
import poplib
import smtplib
import socket
import ssl
import urllib.error
import urllib.request

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mailplat import config as configuration
from tests.helpers import LineClient, MailServer, client_tls, free_port, in_thread
from tests.test_relay_delivery import DomainServer, relay_config

USERS = {"alice@example.test": "alice-pw"}
MESSAGE = b"From: carol@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"


def fetch(port, path="/metrics"):
    """(status, content type, body) of an HTTP GET, blocking (run it in a thread)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode("utf-8", "replace")


class Scraped:
    """A parsed scrape: value(name, **labels), 0 for a series that is absent."""

    def __init__(self, text):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name):
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name, **labels):
        total = 0.0
        for s in self.samples(name):
            if all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
        return total


class MetricsCase(unittest.TestCase):
    listeners = ("smtp", "submission", "imap", "imaps", "pop3", "metrics")
    extra = "\n[limits]\nauth_failures = 3\nauth_failure_delay = 0\n"

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=self.listeners, extra=self.extra).start(users=USERS)

    def port(self, name):
        return self.server.port(name)

    @defer.inlineCallbacks
    def scrape(self):
        status, content_type, body = yield in_thread(fetch, self.port("metrics"))
        self.assertEqual(status, 200, body)
        return Scraped(body)

    @defer.inlineCallbacks
    def scrape_until(self, condition, timeout=5.0):
        """Scrape until `condition(scraped)` holds (the server notices a closed socket a moment later)."""
        for _ in range(int(timeout / 0.05)):
            scraped = yield self.scrape()
            if condition(scraped):
                return scraped
            yield deferLater(reactor, 0.05, lambda: None)
        return scraped


class Endpoint(MetricsCase):
    @defer.inlineCallbacks
    def test_metrics_is_prometheus_text_with_its_content_type(self):
        status, content_type, body = yield in_thread(fetch, self.port("metrics"))
        self.assertEqual(status, 200)
        # The text format's type as prometheus-client writes it (version=0.0.4, or 1.0.0 from 0.22 on).
        self.assertEqual(content_type, CONTENT_TYPE_LATEST)
        self.assertTrue(content_type.startswith("text/plain; version="), content_type)
        names = {f.name for f in text_string_to_metric_families(body)}
        for name in ("mailplat_messages_accepted", "mailplat_messages_refused", "mailplat_logins", "mailplat_lockouts",
                     "mailplat_tls_handshake_failures", "mailplat_sessions_open", "mailplat_imap_idle_sessions"):
            self.assertIn(name, names)

    @defer.inlineCallbacks
    def test_other_paths_are_not_found(self):
        status, _, _ = yield in_thread(fetch, self.port("metrics"), "/")
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_series_start_at_zero_for_the_services_served(self):
        scraped = yield self.scrape()
        self.assertEqual(scraped.samples("mailplat_messages_accepted_total")[0].value, 0)
        ports = {s.labels["port"] for s in scraped.samples("mailplat_messages_accepted_total")}
        self.assertEqual(ports, {"mx", "submission"})
        logins = {(s.labels["protocol"], s.labels["result"]) for s in scraped.samples("mailplat_logins_total")}
        self.assertEqual(logins, {(p, r) for p in ("smtp", "imap", "pop3") for r in ("ok", "failed")})
        services = {s.labels["service"]: s.value for s in scraped.samples("mailplat_sessions_open")}
        self.assertEqual(services, {"smtp": 0, "submission": 0, "imap": 0, "imaps": 0, "pop3": 0})

    def test_the_relay_gauges_are_absent_without_a_relay(self):
        d = self.scrape()
        d.addCallback(lambda scraped: self.assertNotIn("mailplat_relay_queue_messages", scraped.families))
        return d


class Messages(MetricsCase):
    @defer.inlineCallbacks
    def test_an_accepted_message_is_counted_by_port(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE)

        yield in_thread(send)
        yield in_thread(send)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_messages_accepted_total", port="mx"), 2)
        self.assertEqual(scraped.value("mailplat_messages_accepted_total", port="submission"), 0)

    @defer.inlineCallbacks
    def test_a_local_delivery_is_counted_by_backend_and_outcome_with_its_latency(self):
        before = yield self.scrape()
        self.assertEqual(before.value("mailplat_deliveries_total", backend="maildir", outcome="delivered"), 0)
        self.assertIn({"backend": "maildir", "outcome": "deferred"},
                      [s.labels for s in before.samples("mailplat_deliveries_total")])

        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test"], MESSAGE)

        yield in_thread(send)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_deliveries_total", backend="maildir", outcome="delivered"), 1)
        self.assertEqual(scraped.value("mailplat_deliveries_total", backend="maildir", outcome="deferred"), 0)
        self.assertEqual(scraped.value("mailplat_delivery_seconds_count", backend="maildir"), 1)
        self.assertEqual(scraped.value("mailplat_delivery_seconds_bucket", backend="maildir", le="+Inf"), 1)

    @defer.inlineCallbacks
    def test_a_refused_recipient_is_counted_by_port_stage_code_and_status(self):
        def send():
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                s.ehlo("client.test")
                s.mail("carol@remote.test")
                unknown = s.rcpt("nobody@example.test")[0]
                relay = s.rcpt("bob@elsewhere.test")[0]
                return unknown, relay

        codes = yield in_thread(send)
        self.assertEqual(codes, (550, 554))
        scraped = yield self.scrape()
        self.assertEqual(
            scraped.value("mailplat_messages_refused_total", port="mx", stage="rcpt", code="550", status="5.1.1"), 1
        )
        self.assertEqual(
            scraped.value("mailplat_messages_refused_total", port="mx", stage="rcpt", code="554", status="5.7.1"), 1
        )
        self.assertEqual(scraped.value("mailplat_messages_accepted_total"), 0)


class Logins(MetricsCase):
    @defer.inlineCallbacks
    def test_imap_and_pop3_logins_are_counted_ok_and_failed(self):
        def run():
            imap = imaplib.IMAP4("127.0.0.1", self.port("imap"))
            imap.starttls(client_tls())
            imap.login("alice@example.test", "alice-pw")
            imap.logout()
            imap = imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), ssl_context=client_tls())
            try:
                imap.login("alice@example.test", "wrong")
            except imaplib.IMAP4.error:
                pass
            imap.logout()
            pop = poplib.POP3("127.0.0.1", self.port("pop3"))
            pop.stls(client_tls())
            pop.user("alice@example.test")
            try:
                pop.pass_("wrong")
            except poplib.error_proto:
                pass
            pop.quit()

        yield in_thread(run)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_logins_total", protocol="imap", result="ok"), 1)
        self.assertEqual(scraped.value("mailplat_logins_total", protocol="imap", result="failed"), 1)
        self.assertEqual(scraped.value("mailplat_logins_total", protocol="pop3", result="failed"), 1)
        self.assertEqual(scraped.value("mailplat_logins_total", protocol="pop3", result="ok"), 0)
        self.assertEqual(scraped.value("mailplat_lockouts_total"), 0)

    @defer.inlineCallbacks
    def test_a_lockout_is_counted_once_and_refused_logins_as_locked_out(self):
        def run():
            for _ in range(4):  # auth_failures = 3: the fourth is refused unchecked
                imap = imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), ssl_context=client_tls())
                try:
                    imap.login("alice@example.test", "wrong")
                except imaplib.IMAP4.error:
                    pass
                imap.logout()

        yield in_thread(run)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_lockouts_total"), 1)
        self.assertEqual(scraped.value("mailplat_logins_total", protocol="imap", result="failed"), 3)
        self.assertEqual(scraped.value("mailplat_logins_total", protocol="imap", result="locked_out"), 1)

    @defer.inlineCallbacks
    def test_an_smtp_auth_login_is_counted(self):
        def run():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "alice-pw")

        yield in_thread(run)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_logins_total", protocol="smtp", result="ok"), 1)


class Sessions(MetricsCase):
    @defer.inlineCallbacks
    def test_open_sessions_are_counted_per_service_and_protocol(self):
        clients = []

        def connect():
            clients.append(LineClient(self.port("imap")))
            clients[-1].line()
            clients.append(LineClient(self.port("imap")))
            clients[-1].line()
            clients.append(LineClient(self.port("pop3")))
            clients[-1].line()

        yield in_thread(connect)
        self.addCleanup(lambda: [c.close() for c in clients])
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_sessions_open", service="imap", protocol="imap"), 2)
        self.assertEqual(scraped.value("mailplat_sessions_open", service="pop3", protocol="pop3"), 1)
        self.assertEqual(scraped.value("mailplat_sessions_open", service="smtp"), 0)
        for c in clients:
            c.close()
        scraped = yield self.scrape_until(lambda s: s.value("mailplat_sessions_open") == 0)
        self.assertEqual(scraped.value("mailplat_sessions_open"), 0)

    @defer.inlineCallbacks
    def test_an_imap_idle_session_is_counted_until_done(self):
        client = []

        def idle():
            imap = imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), ssl_context=client_tls())
            client.append(imap)
            imap.login("alice@example.test", "alice-pw")
            imap.select("INBOX")
            tag = imap._new_tag()
            imap.send(tag + b" IDLE\r\n")
            assert imap.readline().startswith(b"+"), "no continuation for IDLE"
            return tag

        tag = yield in_thread(idle)
        imap = client[0]
        self.addCleanup(imap.shutdown)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_imap_idle_sessions", service="imaps"), 1)
        self.assertEqual(scraped.value("mailplat_imap_idle_sessions", service="imap"), 0)
        self.assertEqual(scraped.value("mailplat_sessions_open", service="imaps"), 1)

        def done():
            imap.send(b"DONE\r\n")
            return imap.readline()

        answer = yield in_thread(done)
        self.assertTrue(answer.startswith(tag + b" OK"), answer)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_imap_idle_sessions", service="imaps"), 0)


class TLSFailures(MetricsCase):
    @defer.inlineCallbacks
    def test_a_failed_handshake_is_counted_as_an_error_by_service(self):
        def run():
            c = LineClient(self.port("imaps"))
            c.send(b"a LOGIN alice@example.test alice-pw\r\n")  # not a ClientHello
            return c.closed(wait=5)

        closed = yield in_thread(run)
        self.assertTrue(closed)
        scraped = yield self.scrape_until(
            lambda s: s.value("mailplat_tls_handshake_failures_total", service="imaps", reason="error") == 1
        )
        self.assertEqual(scraped.value("mailplat_tls_handshake_failures_total", service="imaps", reason="error"), 1)
        self.assertEqual(scraped.value("mailplat_tls_handshake_failures_total", reason="timeout"), 0)

    @defer.inlineCallbacks
    def test_a_starttls_handshake_the_client_refuses_is_counted(self):
        def run():
            # A client that wants a verified certificate gives up on our self-signed one.
            context = ssl.create_default_context()
            with smtplib.SMTP("127.0.0.1", self.port("smtp")) as s:
                try:
                    s.starttls(context=context)
                except (ssl.SSLError, smtplib.SMTPServerDisconnected, OSError):
                    pass

        yield in_thread(run)
        scraped = yield self.scrape_until(
            lambda s: s.value("mailplat_tls_handshake_failures_total", service="smtp", reason="error") == 1
        )
        self.assertEqual(scraped.value("mailplat_tls_handshake_failures_total", service="smtp", reason="error"), 1)

    @defer.inlineCallbacks
    def test_a_good_handshake_is_not_counted(self):
        def run():
            imap = imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), ssl_context=client_tls())
            imap.logout()

        yield in_thread(run)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_tls_handshake_failures_total"), 0)


class TLSDeadline(MetricsCase):
    listeners = ("imaps", "metrics")
    extra = "\n[limits]\ncommand_timeout = 1\n"

    @defer.inlineCallbacks
    def test_a_handshake_not_finished_in_time_is_counted_as_a_timeout(self):
        def run():
            c = LineClient(self.port("imaps"))  # and never a ClientHello
            try:
                return c.closed(wait=5)
            finally:
                c.close()

        closed = yield in_thread(run)
        self.assertTrue(closed)
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_tls_handshake_failures_total", service="imaps", reason="timeout"), 1)
        self.assertEqual(scraped.value("mailplat_tls_handshake_failures_total", reason="error"), 0)


class RelayQueue(MetricsCase):
    listeners = ("submission", "metrics")

    @property
    def extra(self):
        # A smarthost nobody listens on: the message stays in the queue, deferred.
        return relay_config(smarthost=f"127.0.0.1:{free_port()}", smarthost_tls="none", retry_first=3600,
                            connect_timeout=2)

    @defer.inlineCallbacks
    def test_the_queue_size_oldest_age_and_a_deferred_attempt_are_shown(self):
        scraped = yield self.scrape()
        self.assertEqual(scraped.value("mailplat_relay_queue_messages"), 0)
        self.assertEqual(scraped.value("mailplat_relay_queue_oldest_seconds"), 0)

        def send():
            with smtplib.SMTP("127.0.0.1", self.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "alice-pw")
                s.sendmail("alice@example.test", ["bob@remote.test", "carol@remote.test"], MESSAGE)

        yield in_thread(send)
        scraped = yield self.scrape_until(
            lambda s: s.value("mailplat_deliveries_total", backend="relay", outcome="deferred") == 2, timeout=10
        )
        self.assertEqual(scraped.value("mailplat_deliveries_total", backend="relay", outcome="deferred"), 2)
        self.assertEqual(scraped.value("mailplat_deliveries_total", backend="relay", outcome="sent"), 0)
        self.assertEqual(scraped.value("mailplat_relay_queue_messages"), 1)
        self.assertEqual(scraped.value("mailplat_relay_queue_recipients"), 2)
        self.assertGreater(scraped.value("mailplat_relay_queue_oldest_seconds"), 0)
        self.assertEqual(scraped.value("mailplat_messages_accepted_total", port="submission"), 1)


class RelaySent(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_relayed_recipient_is_counted_sent_with_its_latency(self):
        other = DomainServer(self, "example.org", listeners=("smtp",))
        yield other.start(users={"bob@example.org": "bob-pw"})
        extra = relay_config(smarthost=f"127.0.0.1:{other.port('smtp')}", smarthost_tls="none")
        server = DomainServer(self, "example.test", listeners=("submission", "metrics"), extra=extra)
        yield server.start(users=USERS)

        def send():
            with smtplib.SMTP("127.0.0.1", server.port("submission")) as s:
                s.starttls(context=client_tls())
                s.login("alice@example.test", "alice-pw")
                s.sendmail("alice@example.test", ["bob@example.org"], MESSAGE)

        yield in_thread(send)
        scraped = None
        for _ in range(200):
            _, _, body = yield in_thread(fetch, server.port("metrics"))
            scraped = Scraped(body)
            if scraped.value("mailplat_relay_delivery_seconds_count", outcome="sent") == 1:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(scraped.value("mailplat_deliveries_total", backend="relay", outcome="sent"), 1)
        self.assertEqual(scraped.value("mailplat_relay_delivery_seconds_count", outcome="sent"), 1)
        self.assertEqual(scraped.value("mailplat_relay_delivery_seconds_bucket", outcome="sent", le="+Inf"), 1)
        self.assertLess(scraped.value("mailplat_relay_delivery_seconds_sum", outcome="sent"), 10)


class TwoServers(unittest.TestCase):
    @defer.inlineCallbacks
    def test_two_servers_in_one_process_have_their_own_registries(self):
        first = yield MailServer(self, listeners=("smtp", "metrics")).start(users=USERS)
        second = yield MailServer(self, listeners=("imap", "metrics")).start(users=USERS)
        self.assertIsNot(first.service.metrics.registry, second.service.metrics.registry)
        _, _, body = yield in_thread(fetch, second.port("metrics"))
        services = {s.labels["service"] for s in Scraped(body).samples("mailplat_sessions_open")}
        self.assertEqual(services, {"imap"})


class Configuration(unittest.TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nhostname = "mail.example.test"\nstate_dir = "var"\n' + text)
        return path

    def test_metrics_is_a_listen_key(self):
        config = configuration.load(self.write('[listen]\nsmtp = "tcp:2525"\nmetrics = "tcp:port=9154:interface=127.0.0.1"\n'))
        self.assertEqual(config.listen["metrics"], "tcp:port=9154:interface=127.0.0.1")

    def test_a_misspelt_metrics_key_is_refused_with_the_spelling(self):
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(self.write('[listen]\nsmtp = "tcp:2525"\nmetrcs = "tcp:9154"\n'))
        self.assertIn("listen.metrcs: unknown key (did you mean metrics?)", str(caught.exception))

    def test_metrics_alone_is_no_service(self):
        config = configuration.load(self.write('[listen]\nmetrics = "tcp:9154"\n'))
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.require_service(config)
        self.assertIn("no service is turned on", str(caught.exception))

    def test_the_embedded_defaults_have_no_metrics_listener(self):
        self.assertNotIn("metrics", configuration.load(None).listen)


class BindFirst(unittest.TestCase):
    def test_a_metrics_port_in_use_names_its_key(self):
        from mailplat.listeners import bind

        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                '[server]\nhostname = "mail.example.test"\nstate_dir = "var"\n[listen]\n'
                f'smtp = "tcp:port=0:interface=127.0.0.1"\nmetrics = "tcp:port={busy.getsockname()[1]}:interface=127.0.0.1"\n'
            )
        config = configuration.load(path)
        with self.assertRaises(configuration.ConfigError) as caught:
            bind(config)
        self.assertIn("listen.metrics: cannot listen on tcp:port=", str(caught.exception))
