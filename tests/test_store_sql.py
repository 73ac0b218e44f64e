"""
The conformance kit's store suite against the sql store on a real
PostgreSQL (MAILPLAT_TEST_PG_DSN; CI starts one, see .ci/run), and what
the kit does not cover: bodies kept once, the schema's version, errors
when the database is down. Each test gets a PostgreSQL schema of its own.
"""

import uuid

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.interfaces import TemporaryFailure
from mailplat.store.source import BytesSource
from mailplat.testing import StoreConformance
from mailplat.testing.store import message

from tests.test_conformance_sql import PG_DSN, PG_SKIP, pg_dsn_with_schema


class PostgresSchema:
    """Mix-in: a PostgreSQL schema of the test's own (self.dsn), dropped after."""

    skip = PG_SKIP

    def setUp(self):
        if not PG_DSN:
            self.fail("MAILPLAT_TEST_PG_REQUIRED is set but MAILPLAT_TEST_PG_DSN is not: PostgreSQL did not start")
        import psycopg

        self.schema = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(PG_DSN, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {self.schema}")
        self.addCleanup(self._drop)
        self.dsn = pg_dsn_with_schema(PG_DSN, self.schema)

    def _drop(self):
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {self.schema} CASCADE")

    def new_store(self, **kw):
        from mailplat.store.sql import SQLStore, StoreDatabase

        store = SQLStore(StoreDatabase(self.dsn, pool_size=4), **kw)
        self.addCleanup(store.close)
        return store

    def query(self, text, *args):
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as c:
            cursor = c.execute(text, args)
            return cursor.fetchall() if cursor.description else None


class SQLStoreConforms(PostgresSchema, StoreConformance, unittest.TestCase):
    def make_store(self):
        return self.new_store()

    def reopen_store(self, store):
        return store.close().addCallback(lambda _: self.new_store())


class SQLStoreBehaviour(PostgresSchema, unittest.TestCase):
    user = "alice@example.test"

    @defer.inlineCallbacks
    def test_a_message_to_many_recipients_keeps_one_body(self):
        store = self.new_store()
        for n in range(5):
            yield store.deliver(f"user{n}@example.test", BytesSource(message(1)))
        self.assertEqual(self.query("SELECT count(*) FROM mailplat_bodies"), [(1,)])
        self.assertEqual(self.query("SELECT count(*) FROM mailplat_messages"), [(5,)])

    @defer.inlineCallbacks
    def test_large_text_bodies_are_compressed_and_read_back_exact(self):
        store = self.new_store()
        data = message(1) + b"a line of text that repeats\n" * 2000
        yield store.deliver(self.user, BytesSource(data))
        [(stored, size)] = self.query("SELECT length(data), size FROM mailplat_bodies")
        self.assertEqual(size, len(data))
        self.assertLess(stored, len(data) // 4)
        inbox = yield store.inbox(self.user)
        [m] = yield inbox.messages()
        f = yield inbox.open_message(m.key)
        self.assertEqual(f.read(), data)

    @defer.inlineCallbacks
    def test_bodies_no_message_refers_to_are_collected(self):
        store = self.new_store()
        yield store.deliver(self.user, BytesSource(message(1)))
        yield store.deliver(self.user, BytesSource(message(2)))
        inbox = yield store.inbox(self.user)
        first = (yield inbox.messages())[0]
        yield inbox.remove([first.key])
        # Within the grace period a body is kept (a delivery may reuse it).
        self.assertEqual((yield store.collect_bodies()), 0)
        self.assertEqual((yield store.collect_bodies(grace_seconds=0)), 1)
        [m] = yield inbox.messages()
        f = yield inbox.open_message(m.key)
        self.assertEqual(f.read(), message(2))

    @defer.inlineCallbacks
    def test_delivery_keeps_the_flags_a_sieve_script_set(self):
        store = self.new_store()
        yield store.deliver(self.user, BytesSource(message(1)), None, flags=("\\seen", "$Work", "\\Recent"))
        folder = yield (yield store.account(self.user)).folder("INBOX")
        [info] = folder.messages()
        self.assertEqual(info.flags, frozenset({"\\Seen", "$Work"}))

    @defer.inlineCallbacks
    def test_the_schema_is_created_once_and_versioned(self):
        from mailplat.store.sql import schema

        store = self.new_store()
        yield store.deliver(self.user, BytesSource(message(1)))
        yield store.close()
        again = self.new_store()
        yield again.deliver(self.user, BytesSource(message(2)))
        self.assertEqual(self.query("SELECT version FROM mailplat_store_schema"), [(schema.VERSION,)])

    @defer.inlineCallbacks
    def test_tables_of_a_newer_version_are_refused_with_a_temporary_failure(self):
        from mailplat.store.sql import SQLStore, StoreDatabase, schema

        first = self.new_store()
        yield first.deliver(self.user, BytesSource(message(1)))
        yield first.close()
        self.query("UPDATE mailplat_store_schema SET version = %s", schema.VERSION + 1)
        store = SQLStore(StoreDatabase(self.dsn))
        self.addCleanup(store.close)
        yield self.assertFailure(store.deliver(self.user, BytesSource(message(2))), TemporaryFailure)
        self.flushLoggedErrors()
        self.assertEqual(self.query("SELECT count(*) FROM mailplat_messages"), [(1,)])

    @defer.inlineCallbacks
    def test_indexer_values_computed_at_delivery_are_cached_for_imap(self):
        calls = []

        def indexer(data):
            calls.append(data)
            return {"envelope": "ENV " + data.split(b"\n")[2].decode()}

        store = self.new_store(indexer=indexer)
        yield store.deliver(self.user, BytesSource(message(1)))
        yield store.deliver("bob@example.test", BytesSource(message(1)))
        self.assertEqual(len(calls), 1)  # once per body
        account = yield store.account(self.user)
        folder = yield account.folder("INBOX")
        [info] = folder.messages()
        self.assertEqual(folder.cached(info.uid, "envelope"), "ENV Subject: message 1")

    @defer.inlineCallbacks
    def test_values_cached_here_and_not_written_yet_survive_a_sync_of_stored_ones(self):
        from twisted.internet import task

        # A clock never advanced: what this process caches stays unwritten.
        store = self.new_store(indexer=lambda data: {"envelope": "ENV"}, clock=task.Clock())
        yield store.deliver(self.user, BytesSource(message(1)))
        folder = yield (yield store.account(self.user)).folder("INBOX")
        [info] = folder.messages()
        folder.cache(info.uid, "sortkeys", ["key"])
        # The flag change brings the message's stored values (the envelope) again.
        yield folder.store_flags([info.uid], ["\\Seen"], "+")
        self.assertEqual(folder.cached(info.uid, "envelope"), "ENV")
        self.assertEqual(folder.cached(info.uid, "sortkeys"), ["key"])

    @defer.inlineCallbacks
    def test_stored_values_of_any_kind_come_back_beside_values_cached_after_the_load(self):
        store = self.new_store(indexer=lambda data: {"envelope": "ENV"})
        yield store.deliver(self.user, BytesSource(message(1)))
        folder = yield (yield store.account(self.user)).folder("INBOX")
        [info] = folder.messages()
        folder.cache(info.uid, "sortkeys", ["key", 1])
        folder.cache(info.uid, "body", {"not": "a string"})
        yield store.write_pending()
        del folder
        yield store.close()
        again = self.new_store()
        folder = yield (yield again.account(self.user)).folder("INBOX")
        folder.cache(info.uid, "bodystructure", "BS")
        self.assertEqual(
            [folder.cached(info.uid, f) for f in ("envelope", "bodystructure", "body", "sortkeys")],
            ["ENV", "BS", {"not": "a string"}, ["key", 1]],
        )

    @defer.inlineCallbacks
    def test_a_database_that_is_down_gives_temporary_failure(self):
        from mailplat.store.sql import SQLStore, StoreDatabase
        from tests.helpers import free_port

        store = SQLStore(StoreDatabase(f"postgresql://mailplat@127.0.0.1:{free_port()}/nothing"))
        self.addCleanup(store.close)
        yield self.assertFailure(store.deliver(self.user, BytesSource(message(1))), TemporaryFailure)

    @defer.inlineCallbacks
    def test_two_stores_on_one_database_give_distinct_ascending_uids(self):
        # Two nodes: UIDs come from the mailbox row, locked to COMMIT.
        a, b = self.new_store(), self.new_store()
        keys = yield defer.gatherResults(
            [(a if n % 2 else b).deliver(self.user, BytesSource(message(n))) for n in range(40)]
        )
        self.assertEqual(len(set(keys)), 40)
        account = yield a.account(self.user)
        folder = yield account.folder("INBOX")
        uids = [m.uid for m in (yield folder.sync())]
        self.assertEqual(uids, list(range(1, 41)))

    @defer.inlineCallbacks
    def test_old_expunges_are_forgotten_and_vanished_says_so(self):
        from mailplat.store import modseq

        self.patch(modseq, "KEEP_EXPUNGED", 2)
        store = self.new_store()
        for n in range(4):
            yield store.deliver(self.user, BytesSource(message(n)))
        account = yield store.account(self.user)
        folder = yield account.folder("INBOX")
        yield folder.sync()
        start = folder.highestmodseq
        for uid in (1, 2, 3):
            yield folder.store_flags([uid], ["\\Deleted"], "+")
            yield folder.expunge()
        # Three expunges, two remembered: from before the first, no answer.
        self.assertIsNone(folder.vanished(start))
        self.assertEqual(folder.vanished(folder.highestmodseq - 3), [2, 3])
        store = yield store.close().addCallback(lambda _: self.new_store())
        again = yield (yield store.account(self.user)).folder("INBOX")
        self.assertIsNone(again.vanished(start))
        self.assertEqual(again.vanished(again.highestmodseq - 3), [2, 3])


class AcrossNodes(PostgresSchema, unittest.TestCase):
    """Two stores on one database, as two nodes: push by LISTEN/NOTIFY."""

    user = "alice@example.test"

    @defer.inlineCallbacks
    def _watched_inbox(self, store):
        account = yield store.account(self.user)
        folder = yield account.folder("INBOX")
        events = []
        self.addCleanup(folder.subscribe(events.append))
        yield self._until(lambda: store.listener.connected, "the listener to connect")
        return folder, events

    @defer.inlineCallbacks
    def _until(self, condition, what, timeout=5.0):
        from twisted.internet import reactor, task
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"waited {timeout} s for {what() if callable(what) else what}")
            yield task.deferLater(reactor, 0.02, lambda: None)

    @defer.inlineCallbacks
    def test_changes_on_one_node_reach_the_other_nodes_subscribers(self):
        a, b = self.new_store(), self.new_store()
        folder, events = yield self._watched_inbox(a)
        yield b.deliver(self.user, BytesSource(message(1)))
        yield self._until(lambda: [e.kind for e in events] == ["exists"], "an exists event from the other node")
        self.assertIsNone(events[0].origin)
        other = yield (yield b.account(self.user)).folder("INBOX")
        yield other.store_flags([1], ["\\Deleted"], "+")
        yield other.expunge()
        yield self._until(
            lambda: events[-1].kind == "expunge", lambda: f"the expunge from the other node (events: {events})"
        )
        # The flags change may reach this node in the same catch-up as the
        # expunge (both committed before it read): then only the expunge is told.
        self.assertIn([e.kind for e in events], [["exists", "flags", "expunge"], ["exists", "expunge"]])
        self.assertEqual(folder.messages(), [])

    @defer.inlineCallbacks
    def test_a_node_that_lost_its_listening_connection_catches_up(self):
        from mailplat.store.sql.listener import APPLICATION_NAME

        a, b = self.new_store(), self.new_store()
        folder, events = yield self._watched_inbox(a)
        self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", APPLICATION_NAME)
        yield self._until(lambda: not a.listener.connected, "the listener to notice")
        # Committed while node A listens to nobody: its NOTIFY reaches no one.
        yield b.deliver(self.user, BytesSource(message(1)))
        yield self._until(lambda: a.listener.connected, "the listener to reconnect")
        yield self._until(lambda: [e.kind for e in events] == ["exists"], "the change found after reconnecting")
        self.assertEqual([m.uid for m in folder.messages()], [1])
