"""
The rspamd check (docs/check-rspamd.md), against a real rspamd (Debian's
package, started here on free loopback ports from a directory of its own)
and against a stand-in HTTP server for the actions and failures a real
rspamd is not easily made to give: GTUBE refused on the MX port, a clean
message delivered with X-Spam-* fields, "add header" filed into Junk,
"soft reject" tempfailed, rspamd down or silent decided by on_error.

Without rspamd installed the real-rspamd tests skip, or fail when
MAILPLAT_TEST_RSPAMD_REQUIRED=1 (.ci/run sets it).
"""

import atexit
import email
import glob
import json
import os
import shutil
import smtplib
import subprocess
import tempfile
import time
import urllib.request

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web import resource, server

from mailplat.checks import EnabledCheck, run_stage
from mailplat.interfaces import BackendContext, CheckSession, Envelope, Verdict
from mailplat.store.source import BytesSource
from mailplat.testing.check import CheckConformance
from plugins import mailplat_spam
from tests.helpers import MailServer, free_port, in_thread

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CLEAN = (
    "From: a@remote.test\r\nTo: alice@example.test\r\nSubject: lunch\r\n"
    "Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <lunch-1@remote.test>\r\n\r\n"
    "Shall we have lunch on Friday?\r\n"
)
SPAM = "From: a@remote.test\r\nTo: alice@example.test\r\nSubject: offer\r\n\r\n" + GTUBE + "\r\n"
REQUIRED = os.environ.get("MAILPLAT_TEST_RSPAMD_REQUIRED") == "1"
START_LIMIT = 180  # seconds; the first start compiles rspamd's regular expressions (~45 s), later ones reuse them


def rspamd_binary():
    for path in [shutil.which("rspamd"), "/usr/bin/rspamd", "/usr/sbin/rspamd"]:
        if path and os.path.exists(path):
            return path
    return None


class RealRspamd:
    """One rspamd for this test process: normal, controller and proxy workers on free loopback ports."""

    instance = None

    def __init__(self):
        binary = rspamd_binary()
        if binary is None:
            message = "rspamd is not installed (Debian: apt-get install rspamd)"
            if REQUIRED:
                raise AssertionError(message + " and MAILPLAT_TEST_RSPAMD_REQUIRED=1")
            raise unittest.SkipTest(message)
        self.dir = tempfile.mkdtemp(prefix="mailplat-rspamd-")
        # rspamd's compiled expressions are kept between runs: starting then takes seconds, not a minute.
        cache = os.environ.get("MAILPLAT_TEST_RSPAMD_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "mailplat-tests", "rspamd-db")
        os.makedirs(cache, exist_ok=True)
        local = os.path.join(self.dir, "local.d")
        os.makedirs(local)
        os.makedirs(os.path.join(self.dir, "run"))
        self.port = free_port()
        for worker in ("normal", "controller", "proxy"):
            port = self.port if worker == "normal" else free_port()
            with open(os.path.join(local, f"worker-{worker}.inc"), "w") as f:
                f.write(f'bind_socket = "127.0.0.1:{port}";\n')
        # No lookups on the machine's resolver: a name server that refuses at once.
        with open(os.path.join(local, "options.inc"), "w") as f:
            f.write('dns { nameserver = ["127.0.0.1:9"]; timeout = 0.5s; retransmits = 1; }\n')
        self.log = open(os.path.join(self.dir, "out.log"), "wb")
        self.process = subprocess.Popen(
            [binary, "-f", "-i", "-c", "/etc/rspamd/rspamd.conf", "--var", f"LOCAL_CONFDIR={self.dir}",
             "--var", f"DBDIR={cache}", "--var", f"RUNDIR={self.dir}/run", "--var", f"LOGDIR={self.dir}"],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        self._wait()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _wait(self):
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"rspamd exited with {self.process.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                    if b"pong" in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"rspamd did not answer /ping in {START_LIMIT}s: {self.tail()}")

    def tail(self):
        text = ""
        for name in ("out.log", "rspamd.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += f.read()[-2000:]
            except OSError:
                pass
        return text

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, True)

    @classmethod
    def get(cls):
        if cls.instance is None:
            cls.instance = cls()
        return cls.instance


class FakeRspamd(resource.Resource):
    """Answers /checkv2 with `answer` (or never, when `silent`), keeping what was asked."""

    isLeaf = True

    def __init__(self, answer):
        resource.Resource.__init__(self)
        self.answer = answer
        self.silent = False
        self.requests = []
        self.pending = []

    def render_POST(self, request):
        self.requests.append((request.path, request.requestHeaders, request.content.read()))
        if self.silent:
            self.pending.append(request)
            return server.NOT_DONE_YET
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(self.answer).encode()


def start_fake(testcase, answer):
    fake = FakeRspamd(answer)
    port = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    fake.url = f"http://127.0.0.1:{port.getHost().port}"
    return fake


def build(url, **section):
    section["url"] = url
    return mailplat_spam.rspamd.from_config(section, BackendContext(None))


def scan(check, message=CLEAN, on_error="tempfail", timeout=30, user=None):
    session = CheckSession("192.0.2.1", client_name="mx.remote.test", policy="mx")
    session.authenticated_as = user
    session.helo = "mx.remote.test"
    session.sender = "a@remote.test"
    session.recipients = ["alice@example.test", "bob@example.test"]
    envelope = Envelope("a@remote.test", helo="mx.remote.test", client_address="192.0.2.1",
                        client_name="mx.remote.test", received_by="mail.example.test")
    envelope.queue_id = "Q123"
    data = message.replace("\r\n", "\n").encode()
    d = run_stage([EnabledCheck("rspamd", check, timeout=timeout, on_error=on_error)], "data", session, envelope,
                  BytesSource(data))
    return d.addCallback(lambda verdict: (verdict, envelope))


def added(envelope):
    return b"".join(getattr(envelope, "added_headers", [])).decode()


ANSWER = {"action": "no action", "score": 1.5, "required_score": 15.0,
          "symbols": {"MIME_GOOD": {"score": -0.1}, "ZERO": {"score": 0.0}}}


class Actions(unittest.TestCase):
    """rspamd's actions as verdicts, and what the check tells rspamd (a stand-in server)."""

    @defer.inlineCallbacks
    def test_what_rspamd_is_told(self):
        fake = start_fake(self, ANSWER)
        yield scan(build(fake.url))
        ((path, headers, body),) = fake.requests
        self.assertEqual(path, b"/checkv2")
        self.assertEqual(headers.getRawHeaders(b"IP"), [b"192.0.2.1"])
        self.assertEqual(headers.getRawHeaders(b"Helo"), [b"mx.remote.test"])
        self.assertEqual(headers.getRawHeaders(b"Hostname"), [b"mx.remote.test"])
        self.assertEqual(headers.getRawHeaders(b"From"), [b"a@remote.test"])
        self.assertEqual(headers.getRawHeaders(b"Rcpt"), [b"alice@example.test", b"bob@example.test"])
        self.assertEqual(headers.getRawHeaders(b"Queue-Id"), [b"Q123"])
        self.assertIsNone(headers.getRawHeaders(b"User"))
        self.assertIn(b"Shall we have lunch", body)

    @defer.inlineCallbacks
    def test_the_authenticated_user_is_told(self):
        fake = start_fake(self, ANSWER)
        yield scan(build(fake.url), user="alice@example.test")
        ((_, headers, _),) = fake.requests
        self.assertEqual(headers.getRawHeaders(b"User"), [b"alice@example.test"])

    @defer.inlineCallbacks
    def test_no_action_accepts_with_x_spam_fields(self):
        fake = start_fake(self, ANSWER)
        verdict, envelope = yield scan(build(fake.url))
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        fields = added(envelope)
        self.assertIn("X-Spam-Flag: NO\n", fields)
        self.assertIn("X-Spam-Score: 1.50 / 15.00\n", fields)
        self.assertIn("X-Spam-Action: no action\n", fields)
        self.assertIn("X-Spam-Symbols: MIME_GOOD\n", fields)

    @defer.inlineCallbacks
    def test_the_score_is_kept_for_sieve_spamtest(self):
        fake = start_fake(self, ANSWER)
        _, envelope = yield scan(build(fake.url))
        self.assertEqual(envelope.scores, {"spam": (1.5, 15.0)})

    @defer.inlineCallbacks
    def test_reject_is_550(self):
        fake = start_fake(self, dict(ANSWER, action="reject", messages={"smtp_message": "Gtube\r\npattern"}))
        verdict, _ = yield scan(build(fake.url))
        self.assertEqual((verdict.action, verdict.code, verdict.enhanced), (Verdict.REJECT, 550, "5.7.1"))
        self.assertEqual(verdict.text, "Gtube pattern")

    @defer.inlineCallbacks
    def test_soft_reject_and_greylist_are_451(self):
        for action in ("soft reject", "greylist"):
            fake = start_fake(self, dict(ANSWER, action=action))
            verdict, _ = yield scan(build(fake.url))
            self.assertEqual((verdict.action, verdict.code, verdict.enhanced), (Verdict.TEMPFAIL, 451, "4.7.1"))

    @defer.inlineCallbacks
    def test_add_header_and_rewrite_subject_go_to_junk(self):
        for action in ("add header", "rewrite subject"):
            fake = start_fake(self, dict(ANSWER, action=action, score=7.0))
            verdict, envelope = yield scan(build(fake.url))
            self.assertEqual((verdict.action, verdict.folder_name), (Verdict.FOLDER, "Junk"))
            self.assertIn("X-Spam-Flag: YES\n", added(envelope))

    @defer.inlineCallbacks
    def test_a_big_message_is_sent_whole(self):
        fake = start_fake(self, ANSWER)
        big = CLEAN + "x" * 76 * 8000 + "\r\n"
        yield scan(build(fake.url), big)
        ((_, _, body),) = fake.requests
        self.assertEqual(body, big.replace("\r\n", "\n").encode())

    @defer.inlineCallbacks
    def test_over_max_size_is_not_scanned(self):
        fake = start_fake(self, dict(ANSWER, action="reject"))
        verdict, envelope = yield scan(build(fake.url, max_size=100))
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertEqual(fake.requests, [])
        self.assertIn("unchecked (too large)", added(envelope))

    @defer.inlineCallbacks
    def test_headers_false_adds_none(self):
        fake = start_fake(self, dict(ANSWER, action="add header"))
        verdict, envelope = yield scan(build(fake.url, headers=False))
        self.assertEqual(verdict.action, Verdict.FOLDER)
        self.assertEqual(added(envelope), "")

    @defer.inlineCallbacks
    def test_nonsense_from_rspamd_is_a_failure_for_on_error(self):
        fake = start_fake(self, {"no": "action"})
        verdict, _ = yield scan(build(fake.url))
        self.assertEqual((verdict.action, verdict.code), (Verdict.TEMPFAIL, 451))


class Unavailable(unittest.TestCase):
    """rspamd down or silent: the check's on_error decides; never a hang."""

    @defer.inlineCallbacks
    def test_down_tempfails_by_default(self):
        verdict, _ = yield scan(build(f"http://127.0.0.1:{free_port()}"))
        self.assertEqual((verdict.action, verdict.code, verdict.enhanced), (Verdict.TEMPFAIL, 451, "4.7.1"))

    @defer.inlineCallbacks
    def test_down_with_continue_accepts_marked_unchecked(self):
        verdict, envelope = yield scan(build(f"http://127.0.0.1:{free_port()}"), on_error="continue")
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertIn("X-Spam-Status: unchecked (rspamd unavailable)", added(envelope))

    @defer.inlineCallbacks
    def test_silent_rspamd_ends_at_the_timeout(self):
        fake = start_fake(self, ANSWER)
        fake.silent = True
        verdict, envelope = yield scan(build(fake.url), on_error="continue", timeout=0.5)
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertIn("unchecked", added(envelope))
        self.assertEqual(len(fake.requests), 1)
        verdict, _ = yield scan(build(fake.url), on_error="tempfail", timeout=0.5)
        self.assertEqual(verdict.action, Verdict.TEMPFAIL)


class RspamdConforms(CheckConformance, unittest.TestCase):
    def setUp(self):
        self.fake = start_fake(self, dict(ANSWER, action="reject"))

    cases = [
        ("data", (Envelope("a@remote.test"), BytesSource(SPAM.encode())), Verdict.REJECT),
        ("rcpt", ("b@example.test",), Verdict.NEXT),
    ]

    def make_check(self):
        return build(self.fake.url)


class AgainstRealRspamd(unittest.TestCase):
    """The check against Debian's rspamd: GTUBE refused, a clean message accepted."""

    def setUp(self):
        self.rspamd = RealRspamd.get()

    @defer.inlineCallbacks
    def test_gtube_is_rejected(self):
        verdict, envelope = yield scan(build(self.rspamd.url), SPAM)
        self.assertEqual((verdict.action, verdict.code, verdict.enhanced), (Verdict.REJECT, 550, "5.7.1"))
        self.assertIn("X-Spam-Action: reject", added(envelope))


CHECKS = """
[checks]
enabled = ["rspamd"]

[checks.rspamd]
url = "{url}"
timeout = 20
"""


def send(port, data, sender="a@remote.test"):
    """One message over SMTP: the (code, text) of the end of data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail(sender)
        client.rcpt("alice@example.test")
        code, text = client.data(data.encode())
        return code, text.decode()


class OnTheMXPort(unittest.TestCase):
    """A server with rspamd enabled, over SMTP."""

    @defer.inlineCallbacks
    def start(self, url):
        self.server = MailServer(self, listeners=("smtp",), extra=CHECKS.format(url=url))
        yield self.server.start(users={"alice@example.test": "pw"})
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.server.maildir("alice@example.test"), ".Junk", sub))

    def stored(self, folder=""):
        base = self.server.maildir("alice@example.test")
        paths = glob.glob(os.path.join(base, f".{folder}" if folder else "", "new", "*"))
        messages = []
        for path in paths:
            with open(path, "rb") as f:
                messages.append(email.message_from_bytes(f.read()))
        return messages

    @defer.inlineCallbacks
    def test_gtube_is_refused_on_the_mx_port(self):
        yield self.start(RealRspamd.get().url)
        code, text = yield in_thread(send, self.server.port("smtp"), SPAM)
        self.assertEqual(code, 550, text)
        self.assertIn("5.7.1", text)
        self.assertEqual(self.stored(), [])

    @defer.inlineCallbacks
    def test_a_clean_message_is_delivered_with_x_spam_fields(self):
        yield self.start(RealRspamd.get().url)
        code, text = yield in_thread(send, self.server.port("smtp"), CLEAN)
        self.assertEqual(code, 250, text)
        (message,) = self.stored()
        self.assertEqual(message["X-Spam-Flag"], "NO")
        self.assertEqual(message["X-Spam-Action"], "no action")
        self.assertIn("Shall we have lunch", message.get_payload())

    @defer.inlineCallbacks
    def test_add_header_files_into_junk_with_x_spam_fields(self):
        fake = start_fake(self, dict(ANSWER, action="add header", score=7.25))
        yield self.start(fake.url)
        code, text = yield in_thread(send, self.server.port("smtp"), CLEAN)
        self.assertEqual(code, 250, text)
        self.assertEqual(self.stored(), [])
        (message,) = self.stored("Junk")
        self.assertEqual(message["X-Spam-Flag"], "YES")
        self.assertEqual(message["X-Spam-Score"], "7.25 / 15.00")
        ((_, headers, _),) = fake.requests
        self.assertEqual(headers.getRawHeaders(b"IP"), [b"127.0.0.1"])
        self.assertEqual(headers.getRawHeaders(b"Helo"), [b"client.remote.test"])
        self.assertTrue(headers.getRawHeaders(b"Queue-Id"))

    @defer.inlineCallbacks
    def test_rspamd_down_tempfails_the_message_without_a_traceback(self):
        yield self.start(f"http://127.0.0.1:{free_port()}")
        code, text = yield in_thread(send, self.server.port("smtp"), CLEAN)
        self.assertEqual(code, 451, text)
        self.assertIn("4.7.1", text)
        self.assertNotIn("Traceback", text)
        self.assertEqual(self.stored(), [])


class Connections(unittest.TestCase):
    """How the check reaches rspamd: straight to an address, quietly, one connection a scan."""

    @defer.inlineCallbacks
    def test_an_address_url_is_reached_without_client_log_lines(self):
        fake = start_fake(self, ANSWER)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        verdict, _ = yield scan(build(fake.url))
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertEqual([e for e in events if (e.get("log_namespace") or "").startswith("twisted.web.client")], [])

    @defer.inlineCallbacks
    def test_a_host_name_url_is_looked_up(self):
        fake = start_fake(self, ANSWER)
        verdict, _ = yield scan(build(fake.url.replace("127.0.0.1", "localhost")))
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        self.assertEqual(len(fake.requests), 1)

    @defer.inlineCallbacks
    def test_each_scan_asks_for_its_connection_to_be_closed(self):
        fake = start_fake(self, ANSWER)
        yield scan(build(fake.url))
        ((_, headers, _),) = fake.requests
        self.assertEqual(headers.getRawHeaders(b"Connection"), [b"close"])

    @defer.inlineCallbacks
    def test_the_host_header_names_the_address_and_port(self):
        fake = start_fake(self, ANSWER)
        yield scan(build(fake.url))
        ((_, headers, _),) = fake.requests
        self.assertEqual(headers.getRawHeaders(b"Host"), [fake.url.split("//", 1)[1].encode()])

    @defer.inlineCallbacks
    def test_a_path_in_the_url_is_kept(self):
        fake = start_fake(self, ANSWER)
        verdict, _ = yield scan(build(fake.url + "/rspamd/"))
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        ((path, _, _),) = fake.requests
        self.assertEqual(path, b"/rspamd/checkv2")

    @defer.inlineCallbacks
    def test_an_ipv6_address_url_is_reached(self):
        fake = FakeRspamd(ANSWER)
        try:
            port = reactor.listenTCP(0, server.Site(fake), interface="::1")
        except Exception as e:
            raise unittest.SkipTest(f"no IPv6 loopback here: {e}")
        self.addCleanup(port.stopListening)
        verdict, _ = yield scan(build(f"http://[::1]:{port.getHost().port}"))
        self.assertEqual(verdict.action, Verdict.ACCEPT)
        ((_, headers, _),) = fake.requests
        self.assertEqual(headers.getRawHeaders(b"Host"), [f"[::1]:{port.getHost().port}".encode()])

    @defer.inlineCallbacks
    def test_a_scan_cancelled_while_connecting_leaves_nothing_behind(self):
        from mailplat.spam.rspamd import BytesProducer, ScanFactory
        from twisted.web.client import Request
        from twisted.web.http_headers import Headers

        fake = start_fake(self, ANSWER)
        port = int(fake.url.rsplit(":", 1)[1])
        request = Request(b"POST", b"/checkv2", Headers({b"Host": [b"127.0.0.1"]}), BytesProducer(b"x"))
        factory = ScanFactory(request)
        answer = factory.connect(reactor, "127.0.0.1", port)
        answer.cancel()
        yield self.assertFailure(answer, defer.CancelledError)
        self.assertEqual(factory.connector.state, "disconnected")
        self.assertEqual(fake.requests, [])

    def test_rspamd_closes_every_connection_itself(self):
        """
        Why the check keeps no connections open: rspamd's normal worker ends
        each one after its answer, keep-alive asked or not. (Should a later
        rspamd keep them, a persistent pool would save a connection a scan.)
        """
        import http.client

        rspamd = RealRspamd.get()
        connection = http.client.HTTPConnection("127.0.0.1", rspamd.port, timeout=30)
        try:
            connection.request("POST", "/checkv2", body=CLEAN.encode(), headers={"Connection": "keep-alive"})
            response = connection.getresponse()
            response.read()
            self.assertEqual(response.status, 200)
            self.assertEqual(response.getheader("Connection"), "close")
        finally:
            connection.close()
