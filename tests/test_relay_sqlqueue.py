"""
The sql relay queue (`[relay] queue = "sql"`) on a real PostgreSQL (CI
starts one; MAILPLAT_TEST_PG_DSN names it): the relay conformance kit,
then two queue nodes on one table — each message delivered once, a dead
node's messages taken by the other after the lease, a deferred message
retried by whichever node looks first — and a whole server relaying
through it. Each test gets a PostgreSQL schema of its own.
"""

import json
import os

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.delivery.relay import RetryPolicy, Route, Router
from mailplat.delivery.relay.client import ConnectionPool
from mailplat.delivery.relay.sqlqueue import QueueTable, SQLRelayQueue
from mailplat.interfaces import Envelope
from mailplat.store.source import BytesSource
from mailplat.testing import RelayConformance
from tests.helpers import free_port, in_thread
from tests.test_store_sql import PostgresSchema
from tests.test_relay_delivery import (ALICE, BOB, DomainServer, messages_in, queue_cli, relay_config, scripted_server,
                                       submit, wait_for)

MESSAGE = b"From: alice@example.test\nTo: bob@example.org\nSubject: sql queue\n\nHello.\n"


class PostgreSQLSchema(PostgresSchema):
    """A schema of its own per test (L{PostgresSchema}: `self.dsn`), and queue nodes on it."""

    def rows(self):
        """(id, record, message, owner) of every row, read straight from the table."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as c:
            return [(i, json.loads(r), bytes(m), o) for i, r, m, o in
                    c.execute("SELECT id, record, message, owner FROM mailplat_relay_queue ORDER BY id").fetchall()]

    def node(self, route_port=None, lease=300.0, retry=None, dsn=None):
        """A queue node on the test's table; every domain routed to `route_port` (default a closed port)."""
        port = route_port or free_port()
        route = Route("127.0.0.1", port)
        router = Router(routes={"example.org": route, "example.net": route})
        pool = ConnectionPool("mx.example.test", timeout=5, connect_timeout=5)
        table = QueueTable(dsn or self.dsn, pool_size=2)
        self.addCleanup(table.close)
        state = os.path.abspath(self.mktemp())
        queue = SQLRelayQueue(table, state, "mx.example.test", ["example.test"], router, pool,
                              retry or RetryPolicy(first=3600, initial=3600), lease=lease)
        queue.spool.ensure()
        return queue

    def start(self, queue):
        queue.startService()
        self.addCleanup(lambda: queue.running and queue.stopService())
        return queue


def envelope(sender="alice@example.test"):
    return Envelope(sender, helo="client.example.test", client_address="192.0.2.1", protocol="ESMTPA",
                    authenticated_as=sender, received_by="mx.example.test")


class SQLQueueConforms(PostgreSQLSchema, RelayConformance, unittest.TestCase):
    def make_queue(self):
        return self.node()

    def reopen_queue(self, queue):
        return self.node()

    def queued(self, queue):
        held = {}
        for queue_id, record, message, _ in self.rows():
            waiting = [r["address"] for r in record["recipients"] if r["state"] in ("queued", "deferred")]
            held[queue_id] = (record["sender"], waiting, message)
        return held

    def make_unwritable_queue(self):
        # A database that is not there: every INSERT fails.
        return self.node(dsn=f"postgresql://mailplat@127.0.0.1:{free_port()}/nothing")


class TwoNodes(PostgreSQLSchema, unittest.TestCase):
    @defer.inlineCallbacks
    def test_messages_enqueued_on_both_nodes_are_each_delivered_once(self):
        factory, port = scripted_server(self)
        a, b = self.start(self.node(port)), self.start(self.node(port))
        for i in range(10):
            for node in (a, b):
                yield node.enqueue(envelope(), ["bob@example.org"],
                                   BytesSource(MESSAGE.replace(b"Hello.", f"Hello {node.node} {i}.".encode())))
        yield wait_for(lambda: len(factory.messages) >= 20 and not self.rows())
        self.assertEqual(len(factory.messages), 20)
        self.assertEqual(len(set(factory.messages)), 20)
        self.assertEqual(self.rows(), [])

    @defer.inlineCallbacks
    def test_a_dead_nodes_messages_are_sent_by_the_other_after_the_lease(self):
        factory, port = scripted_server(self)
        # Node A takes the message and dies: never started, never stopped,
        # its claim on the row left behind.
        a = self.node(port, lease=2.0)
        yield a.enqueue(envelope(), ["bob@example.org"], BytesSource(MESSAGE))
        [(_, _, _, owner)] = self.rows()
        self.assertEqual(owner, a.node)
        b = self.start(self.node(port, lease=2.0))
        yield wait_for(lambda: factory.messages, timeout=15)
        self.assertEqual(len(factory.messages), 1)
        self.assertIn(b"Hello.", factory.messages[0])
        yield wait_for(lambda: not self.rows())
        self.assertNotEqual(a.node, b.node)

    @defer.inlineCallbacks
    def test_a_held_message_is_not_taken_while_its_lease_lasts(self):
        factory, port = scripted_server(self)
        a = self.node(port, lease=60.0)
        yield a.enqueue(envelope(), ["bob@example.org"], BytesSource(MESSAGE))
        b = self.start(self.node(port, lease=60.0))
        taken = yield b._claim(9e12)
        self.assertEqual(taken, [])
        self.assertEqual(factory.messages, [])

    @defer.inlineCallbacks
    def test_a_deferred_message_is_let_go_for_any_node_to_retry(self):
        factory, port = scripted_server(self, rcpt_replies=[b"451 4.3.0 later"])
        retry = RetryPolicy(first=1, initial=1)
        a = self.start(self.node(port, retry=retry))
        yield a.enqueue(envelope(), ["bob@example.org"], BytesSource(MESSAGE))
        # The first try is refused for now: the row waits, held by nobody.
        yield wait_for(lambda: [r for r in self.rows() if r[1]["recipients"][0]["attempts"] == 1 and r[3] is None])
        yield a.stopService()
        b = self.start(self.node(port, retry=retry))
        yield wait_for(lambda: factory.messages, timeout=15)
        yield wait_for(lambda: not self.rows())
        self.assertNotIn(a.node, [b.node])

    @defer.inlineCallbacks
    def test_stopping_a_node_lets_go_of_what_it_held(self):
        a = self.node(lease=300.0)
        yield a.enqueue(envelope(), ["bob@example.org"], BytesSource(MESSAGE))
        self.start(a)
        yield a.stopService()
        [(_, _, _, owner)] = self.rows()
        self.assertIsNone(owner)

    @defer.inlineCallbacks
    def test_flush_makes_every_waiting_message_due_on_any_node(self):
        factory, port = scripted_server(self, rcpt_replies=[b"451 4.3.0 later"])
        a = self.start(self.node(port))  # retries an hour later
        yield a.enqueue(envelope(), ["bob@example.org"], BytesSource(MESSAGE))
        yield wait_for(lambda: [r for r in self.rows() if r[1]["recipients"][0]["attempts"] == 1 and r[3] is None])
        b = self.start(self.node(port))
        message = yield b.flush()
        self.assertIn("1 more message(s) in the table due now", message)
        yield wait_for(lambda: factory.messages, timeout=15)
        yield wait_for(lambda: not self.rows())


class ThroughTheServer(PostgreSQLSchema, unittest.TestCase):
    @defer.inlineCallbacks
    def test_submitted_mail_is_relayed_through_the_sql_queue(self):
        self.b = DomainServer(self, "example.org", listeners=("smtp",))
        yield self.b.start(users=BOB)
        extra = relay_config({"example.org": f"127.0.0.1:{self.b.port('smtp')}"}, queue="sql")
        extra += f'[relay.sql]\ndsn = "{self.dsn}"\nlease = 30\n'
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        yield self.a.start(users=ALICE)
        refused = yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["bob@example.org"])
        self.assertEqual(refused, {})
        [data] = yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        self.assertIn(b"Subject: over the wire", data)
        yield wait_for(lambda: not self.rows())

    @defer.inlineCallbacks
    def test_queue_list_reads_the_table(self):
        extra = relay_config({"example.org": f"127.0.0.1:{free_port()}"}, queue="sql", retry_first=3600, retry_initial=3600)
        extra += f'[relay.sql]\ndsn = "{self.dsn}"\n'
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        yield self.a.start(users=ALICE)
        yield in_thread(submit, self.a.port("submission"), "alice@example.test", "alice-pw", ["bob@example.org"])
        yield wait_for(lambda: [r for r in self.rows() if r[1]["recipients"][0]["attempts"] == 1])
        status, out, err = yield in_thread(queue_cli, self.a, "list")
        self.assertEqual(status, 0, err)
        [(queue_id, _, _, _)] = self.rows()
        self.assertIn(queue_id, out)
        self.assertIn("bob@example.org  deferred  attempts=1", out)
        self.assertIn("1 message(s) in the queue", out)

    @defer.inlineCallbacks
    def test_without_a_dsn_the_server_names_the_key(self):
        from mailplat.config import ConfigError

        extra = relay_config({"example.org": "127.0.0.1:25"}, queue="sql")
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        try:
            yield self.a.start(users=ALICE)
        except ConfigError as e:
            self.assertIn("relay.sql.dsn", str(e))
        else:
            self.fail("the server started without relay.sql.dsn")


class KillNineNode(PostgreSQLSchema, unittest.TestCase):
    """A twistd node killed while it holds messages mid-delivery: another node sends them after the lease."""

    @defer.inlineCallbacks
    def test_the_other_node_delivers_what_the_dead_one_held(self):
        import signal
        import subprocess

        from twisted.internet import protocol, reactor

        from tests.test_relay_restart import CONFIG, TWISTD, wait_port

        # Where the doomed node sends: a server that accepts and never says a word.
        silent = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(protocol.Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        submission = free_port()
        config = CONFIG.format(submission=submission, route=silent.getHost().port)
        config = config.replace("[relay]\n", '[relay]\nqueue = "sql"\n')
        config += f'\n[relay.sql]\ndsn = "{self.dsn}"\nlease = 5\n'
        with open(os.path.join(directory, "mailplat.toml"), "w") as f:
            f.write(config)
        with open(os.path.join(directory, "users"), "w") as f:
            f.write("alice@example.test:{PLAIN}alice-pw\n")
        out = open(os.path.join(directory, "twistd.out"), "ab")
        self.addCleanup(out.close)
        proc = subprocess.Popen(TWISTD + ["-n", "--pidfile=", "mailplat", "--config", "mailplat.toml"],
                                cwd=directory, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(10)))
        yield in_thread(wait_port, submission)
        for _ in range(5):
            refused = yield in_thread(submit, submission, "alice@example.test", "alice-pw", ["bob@example.org"])
            self.assertEqual(refused, {})
        # Every message is held by the node, which is waiting for a banner.
        yield wait_for(lambda: len([r for r in self.rows() if r[3]]) == 5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        factory, port = scripted_server(self)
        self.start(self.node(port, lease=5.0))
        yield wait_for(lambda: len(factory.messages) >= 5, timeout=30)
        yield wait_for(lambda: not self.rows())
        self.assertEqual(len(factory.messages), 5)
