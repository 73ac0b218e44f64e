"""
Relay delivery between two mailplat instances on loopback: A (example.test)
relays mail submitted by its users to B (example.org) through a static
route; the queue keeps what B cannot take yet, retries it, and bounces
what B refuses with a DSN into the sender's mailbox on A.
"""

import glob
import json
import os
import smtplib
import subprocess
import sys
import time

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.protocols import basic
from twisted.trial import unittest

from mailplat.interfaces import Envelope
from mailplat.store.source import BytesSource
from tests.helpers import MailServer, client_tls, free_port, in_thread

ALICE = {"alice@example.test": "alice-pw"}
BOB = {"bob@example.org": "bob-pw"}
MESSAGE = (
    b"From: alice@example.test\r\nTo: bob@example.org\r\nSubject: over the wire\r\n"
    b"Message-ID: <m1@example.test>\r\n\r\n"
    b"Hello, Bob.\r\n.a line starting with a dot\r\n..two dots\r\n.\r\nlast line\r\n"
)


class DomainServer(MailServer):
    """A MailServer for one domain, on fixed ports when given (to start it later)."""

    def __init__(self, testcase, domain, hostname=None, ports=None, **kw):
        super().__init__(testcase, **kw)
        self.domain = domain
        self.hostname = hostname or f"mail.{domain}"
        self.fixed = ports or {}

    def config_text(self):
        text = super().config_text()
        text = text.replace('local = ["example.test", "example.org"]', f'local = ["{self.domain}"]')
        text = text.replace('hostname = "mail.example.test"', f'hostname = "{self.hostname}"')
        for name, port in self.fixed.items():
            text = text.replace(f'{name} = "tcp:port=0:', f'{name} = "tcp:port={port}:')
        return text


def relay_config(routes=None, **keys):
    lines = ["[relay]"]
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    if routes:
        lines.append("[relay.routes]")
        lines.extend(f'"{d}" = "{hp}"' for d, hp in routes.items())
    return "\n".join(lines) + "\n"


def messages_in(server, address):
    root = server.maildir(address)
    paths = glob.glob(os.path.join(root, "new", "*")) + glob.glob(os.path.join(root, "cur", "*"))
    out = []
    for path in sorted(paths, key=os.path.getmtime):
        with open(path, "rb") as f:
            out.append(f.read())
    return out


@defer.inlineCallbacks
def wait_for(condition, timeout=10.0, step=0.05):
    """Poll `condition()` until it is true (returns its value) or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        yield deferLater(reactor, step, lambda: None)


def submit(port, sender, password, recipients, message=MESSAGE):
    """Blocking: submit over STARTTLS + AUTH (run in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=client_tls())
        s.login(sender, password)
        return s.sendmail(sender, recipients, message)


def queue_cli(server, *args):
    """Run `mailplat --config ... queue ARGS` (blocking); (status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailplat.cli", "--config", server.config_path, "queue", *args],
        cwd=server.dir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stdout, done.stderr


def queue_of(server):
    return server.service.backends.relay


def records(server):
    return queue_of(server).spool.list()


class ScriptedSMTP(basic.LineReceiver):
    """A receiving server for behaviours mailplat won't show: each session answers RCPT from a script."""

    delimiter = b"\r\n"

    def connectionMade(self):
        self.factory.sessions.append([])
        self.in_data = False
        self.accepted = 0
        self.sendLine(b"220 scripted ESMTP")

    def lineReceived(self, line):
        log = self.factory.sessions[-1]
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.factory.messages.append(b"\r\n".join(self.data))
                self.accepted = 0
                self.sendLine(b"250 2.0.0 ok")
            else:
                self.data.append(line)
            return
        log.append(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            tls = b"250-STARTTLS\r\n" if self.factory.broken_tls else b""
            self.sendLine(b"250-scripted\r\n" + tls + b"250-PIPELINING\r\n250 SIZE 1000000")
        elif verb == b"STARTTLS":
            self.sendLine(b"220 go ahead")
            self.transport.write(b"this is not a TLS handshake\r\n")
            self.transport.loseConnection()
        elif verb == b"RCPT":
            code = self.factory.rcpt_replies.pop(0) if self.factory.rcpt_replies else b"250 2.1.5 ok"
            self.accepted += code.startswith(b"2")
            self.sendLine(code)
        elif verb == b"DATA" and not self.accepted:
            self.sendLine(b"554 5.5.1 no valid recipients")
        elif verb == b"DATA":
            self.in_data, self.data = True, []
            self.sendLine(b"354 go on")
        elif verb == b"RSET":
            self.accepted = 0
            self.sendLine(b"250 ok")
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 ok")


def scripted_server(testcase, rcpt_replies=(), broken_tls=False):
    factory = protocol.ServerFactory()
    factory.broken_tls = broken_tls
    factory.protocol = ScriptedSMTP
    factory.sessions, factory.messages, factory.rcpt_replies = [], [], list(rcpt_replies)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return factory, port.getHost().port


class RelayTestCase(unittest.TestCase):
    relay_keys = {}

    @defer.inlineCallbacks
    def start_b(self, ports=None, users=BOB):
        self.b = DomainServer(self, "example.org", listeners=("smtp", "smtps"), ports=ports)
        yield self.b.start(users=users)

    @defer.inlineCallbacks
    def start_a(self, route_port, **keys):
        settings = dict(self.relay_keys, **keys)
        extra = relay_config({"example.org": f"127.0.0.1:{route_port}"}, **settings)
        self.a = DomainServer(self, "example.test", listeners=("smtp", "submission"), extra=extra)
        yield self.a.start(users=ALICE)


class StaticRoute(RelayTestCase):
    @defer.inlineCallbacks
    def test_submitted_mail_reaches_the_other_instance(self):
        yield self.start_b()
        yield self.start_a(self.b.port("smtp"))
        refused = yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["bob@example.org"])
        self.assertEqual(refused, {})
        [data] = yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        # Dot-stuffed on the wire and unstuffed by B: the body arrives unchanged.
        self.assertTrue(data.endswith(MESSAGE.replace(b"\r\n", b"\n")), data)
        self.assertIn(b"Return-Path: <alice@example.test>", data)
        self.assertIn(b"by mail.example.test", data)  # A's trace header travelled
        yield wait_for(lambda: not records(self.a))

    @defer.inlineCallbacks
    def test_each_attempt_is_one_structured_log_line(self):
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.start_b()
        yield self.start_a(self.b.port("smtp"))
        queue_id = yield queue_of(self.a).enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: x\n\nx\n"))
        yield wait_for(lambda: [e for e in events if e.get("result") and e.get("queue_id") == queue_id])
        [event] = [e for e in events if e.get("result") and e.get("queue_id") == queue_id]
        self.assertEqual((event["recipient"], event["result"]), ("bob@example.org", "sent"))
        self.assertEqual(str(event["destination"]), f"127.0.0.1:{self.b.port('smtp')}")
        self.assertTrue(event["reply"].startswith("250 "), event["reply"])

    @defer.inlineCallbacks
    def test_the_queue_file_is_gone_after_delivery(self):
        yield self.start_b()
        yield self.start_a(self.b.port("smtp"))
        yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["bob@example.org"])
        yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        spool = queue_of(self.a).spool.messages
        yield wait_for(lambda: os.listdir(spool) == [])

    @defer.inlineCallbacks
    def test_several_messages_share_one_connection(self):
        factory, port = scripted_server(self)
        yield self.start_a(port, connections_per_destination=1)
        queue = queue_of(self.a)
        envelope = Envelope("alice@example.test")
        for i in range(5):
            yield queue.enqueue(envelope, ["bob@example.org"], BytesSource(b"Subject: %d\n\nbody\n" % i))
        yield wait_for(lambda: len(factory.messages) == 5)
        self.assertLessEqual(len(factory.sessions), 2)

    @defer.inlineCallbacks
    def test_pipelining_sends_mail_rcpt_and_data_and_size(self):
        factory, port = scripted_server(self)
        yield self.start_a(port)
        yield queue_of(self.a).enqueue(Envelope("alice@example.test"), ["bob@example.org", "carol@example.org"], BytesSource(b"Subject: x\n\nbody\n"))
        yield wait_for(lambda: factory.messages)
        commands = [c for c in factory.sessions[0] if not c.startswith((b"EHLO", b"STARTTLS"))]
        self.assertEqual(commands[0], b"MAIL FROM:<alice@example.test> SIZE=%d" % len(b"Subject: x\r\n\r\nbody\r\n"))
        self.assertEqual(commands[1:3], [b"RCPT TO:<bob@example.org>", b"RCPT TO:<carol@example.org>"])
        self.assertEqual(factory.messages[0], b"Subject: x\r\n\r\nbody")


class OpportunisticTLS(RelayTestCase):
    relay_keys = {"retry_first": 1, "retry_initial": 1}

    @defer.inlineCallbacks
    def test_uses_starttls_when_offered(self):
        yield self.start_b()
        yield self.start_a(self.b.port("smtp"))
        yield queue_of(self.a).enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: x\n\nx\n"))
        [data] = yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        self.assertIn(b"with ESMTPS", data)  # RFC 3848: B saw TLS

    @defer.inlineCallbacks
    def test_a_failed_handshake_falls_back_to_plaintext_on_the_retry(self):
        factory, port = scripted_server(self, broken_tls=True)
        yield self.start_a(port)
        queue = queue_of(self.a)
        queue_id = yield queue.enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: x\n\nx\n"))
        yield wait_for(lambda: factory.messages, timeout=5)
        self.assertIn(b"STARTTLS", factory.sessions[0])
        self.assertNotIn(b"STARTTLS", factory.sessions[-1])
        yield wait_for(lambda: queue_id not in queue.entries)


class Outage(RelayTestCase):
    relay_keys = {"retry_first": 3600, "retry_initial": 3600}

    @defer.inlineCallbacks
    def test_down_then_listed_then_flushed_when_back(self):
        port = free_port()
        yield self.start_a(port)
        yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["bob@example.org"])
        yield wait_for(lambda: [r for rec in records(self.a) for r in rec["recipients"] if r["attempts"]])
        status, out, err = yield in_thread(queue_cli, self.a, "list")
        self.assertEqual(status, 0, err)
        [record] = records(self.a)
        self.assertIn(record["id"], out)
        self.assertIn("alice@example.test", out)
        self.assertIn("bob@example.org  deferred", out)
        self.assertIn("refused", out.lower())  # the last error: connection refused
        yield self.start_b(ports={"smtp": port})
        status, out, err = yield in_thread(queue_cli, self.a, "flush")
        self.assertEqual(status, 0, err)
        self.assertIn("scheduled now", out)
        yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        yield wait_for(lambda: not records(self.a))

    @defer.inlineCallbacks
    def test_queue_delete_removes_a_message_without_a_dsn(self):
        yield self.start_a(free_port())
        queue_id = yield queue_of(self.a).enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: x\n\nx\n"))
        yield wait_for(lambda: not queue_of(self.a).entries[queue_id].busy and queue_of(self.a).entries[queue_id].record["recipients"][0]["attempts"])
        status, out, err = yield in_thread(queue_cli, self.a, "delete", queue_id)
        self.assertEqual((status, out.strip()), (0, f"{queue_id} deleted"), err)
        self.assertEqual(records(self.a), [])
        self.assertEqual(messages_in(self.a, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_queue_bounce_sends_a_dsn_to_the_sender(self):
        yield self.start_a(free_port())
        queue_id = yield queue_of(self.a).enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: keep me\n\nx\n"))
        yield wait_for(lambda: queue_of(self.a).entries[queue_id].record["recipients"][0]["attempts"])
        yield wait_for(lambda: not queue_of(self.a).entries[queue_id].busy)
        status, out, err = yield in_thread(queue_cli, self.a, "bounce", queue_id)
        self.assertEqual(status, 0, err)
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"))
        self.assertIn(b"Final-Recipient: rfc822; bob@example.org", dsn)
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"Subject: keep me", dsn)

    @defer.inlineCallbacks
    def test_unknown_id_is_an_error(self):
        yield self.start_a(free_port())
        status, out, err = yield in_thread(queue_cli, self.a, "delete", "nosuchid")
        self.assertEqual(status, 1)
        self.assertIn("no such message", err)


class Refusals(RelayTestCase):
    relay_keys = {"retry_first": 1, "retry_initial": 1}

    @defer.inlineCallbacks
    def test_550_comes_back_as_a_dsn_in_the_senders_mailbox(self):
        yield self.start_b()
        yield self.start_a(self.b.port("smtp"))
        yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["nobody@example.org"])
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"))
        self.assertIn(b"Return-Path: <>", dsn)
        self.assertIn(b"Content-Type: multipart/report; report-type=delivery-status;", dsn)
        self.assertIn(b"Content-Type: message/delivery-status", dsn)
        self.assertIn(b"Final-Recipient: rfc822; nobody@example.org", dsn)
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"Status: 5.1.1", dsn)
        self.assertIn(b"Diagnostic-Code: smtp; 550", dsn)
        self.assertIn(b"Remote-MTA: dns; 127.0.0.1", dsn)
        # RFC 3464: the original header comes back (text/rfc822-headers).
        self.assertIn(b"Content-Type: text/rfc822-headers", dsn)
        self.assertIn(b"Subject: over the wire", dsn)
        self.assertNotIn(b"Hello, Bob.", dsn)
        yield wait_for(lambda: not records(self.a))

    @defer.inlineCallbacks
    def test_one_refused_recipient_does_not_stop_the_other(self):
        yield self.start_b()
        yield self.start_a(self.b.port("smtp"))
        yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["nobody@example.org", "bob@example.org"])
        yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"))
        self.assertIn(b"nobody@example.org", dsn)
        self.assertNotIn(b"Final-Recipient: rfc822; bob@example.org", dsn)

    @defer.inlineCallbacks
    def test_4xx_is_retried_later(self):
        factory, port = scripted_server(self, rcpt_replies=[b"451 4.3.0 try later"])
        yield self.start_a(port)
        queue = queue_of(self.a)
        queue_id = yield queue.enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: x\n\nbody\n"))
        yield wait_for(lambda: factory.sessions and queue.entries[queue_id].record["recipients"][0]["state"] == "deferred")
        self.assertEqual(factory.messages, [])
        self.assertIn("451 4.3.0 try later", queue.entries[queue_id].record["recipients"][0]["error"])
        yield wait_for(lambda: factory.messages, timeout=5)
        self.assertEqual(len(factory.sessions), 2)
        yield wait_for(lambda: queue_id not in queue.entries)
        self.assertEqual(messages_in(self.a, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_4xx_until_max_age_bounces(self):
        factory, port = scripted_server(self, rcpt_replies=[b"451 4.3.0 try later"] * 20)
        yield self.start_a(port, max_age=2)
        yield queue_of(self.a).enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: x\n\nbody\n"))
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"), timeout=8)
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"451 4.3.0 try later", dsn)

    @defer.inlineCallbacks
    def test_a_delay_warning_is_sent_once_and_the_message_stays(self):
        factory, port = scripted_server(self, rcpt_replies=[b"451 4.3.0 try later"] * 50)
        yield self.start_a(port, delay_warning=1, retry_first=3600, retry_initial=3600)
        queue = queue_of(self.a)
        queue_id = yield queue.enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: slow\n\nx\n"))
        [warning] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"), timeout=5)
        self.assertIn(b"Action: delayed", warning)
        self.assertIn(b"Status: 4.3.0", warning)
        self.assertIn(b"Will-Retry-Until:", warning)
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(len(messages_in(self.a, "alice@example.test")), 1)
        self.assertIn(queue_id, queue.entries)

    @defer.inlineCallbacks
    def test_null_sender_is_never_bounced(self):
        yield self.start_b()
        yield self.start_a(self.b.port("smtp"))
        queue = queue_of(self.a)
        queue_id = yield queue.enqueue(Envelope(""), ["nobody@example.org"], BytesSource(b"Subject: a bounce\n\nx\n"))
        yield wait_for(lambda: queue_id not in queue.entries)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(records(self.a), [])
        self.assertEqual(messages_in(self.a, "alice@example.test"), [])


class Smarthost(RelayTestCase):
    @defer.inlineCallbacks
    def test_implicit_tls_and_auth_from_a_file(self):
        self.b = DomainServer(self, "example.org", listeners=("smtps",), extra="[smtp]\nrestrict_sender = false\n")
        yield self.b.start(users=BOB)
        auth = os.path.join(self.b.dir, "smarthost.auth")
        with open(auth, "w") as f:
            f.write("# user:password\nbob@example.org:bob-pw\n")
        extra = relay_config(
            smarthost=f"127.0.0.1:{self.b.port('smtps')}",
            smarthost_tls="implicit",
            smarthost_tls_verify=False,
            smarthost_auth_file=auth,
        )
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        yield self.a.start(users=ALICE)
        yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["bob@example.org"])
        [data] = yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        self.assertIn(b"with ESMTPSA", data)  # RFC 3848: TLS and AUTH on the hop to the smarthost

    @defer.inlineCallbacks
    def test_required_starttls_refuses_a_server_without_it(self):
        factory, port = scripted_server(self)
        extra = relay_config(smarthost=f"127.0.0.1:{port}", smarthost_tls="starttls", retry_first=3600)
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        yield self.a.start(users=ALICE)
        queue = queue_of(self.a)
        queue_id = yield queue.enqueue(Envelope("alice@example.test"), ["bob@example.org"], BytesSource(b"Subject: x\n\nx\n"))
        yield wait_for(lambda: queue.entries[queue_id].record["recipients"][0]["state"] == "deferred")
        self.assertEqual(factory.messages, [])
        self.assertIn("TLS", queue.entries[queue_id].record["recipients"][0]["error"])
