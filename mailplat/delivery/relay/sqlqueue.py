"""
The relay queue on PostgreSQL (`[relay] queue = "sql"`), for several
mailplat nodes sharing one database: any node accepts a message, any node
sends it, and a node that dies mid-delivery leaves its messages to the
others once their lease runs out.

    mailplat_relay_queue(id, record, message, due, owner, lease_until)

One row per queued message: `record` is the same JSON record the spool
keeps in its .json file (envelope, per-recipient state), `message` the
message as it leaves, `due` the earliest time one of its recipients is to
be tried, `owner` the node holding it and `lease_until` until when.

A node claims due rows with `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE
SKIP LOCKED)`, so two nodes never take the same row and neither waits for
the other; it renews the lease of what it holds while it works and lets go
of a message (owner NULL) after each attempt that leaves recipients
waiting, so the next try may be any node's. Leases are timed by the
database's clock, never a node's. The 250 of SMTP comes after the INSERT
is committed (PostgreSQL's fsync, not ours). A node keeps a copy of the
messages it holds under `<state_dir>/queue/messages/` for the SMTP client
and DSNs; that copy is a cache, rebuilt from the database.

Delivery is at least once: a node that dies after the remote server's 250
and before its COMMIT leaves a message another node sends again.
"""

import json
import os
import secrets
import socket
import time

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailplat.delivery.relay.queue import Entry, RelayQueue
from mailplat.delivery.relay.spool import PENDING

log = Logger()

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mailplat_relay_queue (
        id          TEXT PRIMARY KEY,
        record      TEXT NOT NULL,
        message     BYTEA NOT NULL,
        due         DOUBLE PRECISION NOT NULL,
        owner       TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS mailplat_relay_queue_due ON mailplat_relay_queue (due)",
)

NOW = "extract(epoch from clock_timestamp())"

# How many rows one claim takes: a burst is spread over the nodes rather
# than taken whole by the first to look.
CLAIM_BATCH = 50


def due_of(record):
    """The earliest `next` of the recipients still waiting (None: nothing waits)."""
    times = [r["next"] for r in record["recipients"] if r["state"] in PENDING]
    return min(times) if times else None


def node_name():
    """This process among the nodes: host, pid and a random part (a restarted node is a new owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class QueueTable:
    """
    The queue's table through a twisted.enterprise.adbapi pool (psycopg):
    every method returns a Deferred and runs its SQL in the pool's threads,
    one transaction each.
    """

    def __init__(self, dsn, pool_size=4):
        from twisted.enterprise import adbapi

        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            raise ValueError("dsn: the sql relay queue needs psycopg (pip install 'mailplat[sql]')")
        self.pool = adbapi.ConnectionPool("psycopg", dsn, connect_timeout=10, cp_min=1, cp_max=pool_size,
                                          cp_reconnect=True, cp_noisy=False)
        self._ready = None

    def ready(self):
        """The table exists (made on first use; IF NOT EXISTS, so any node may be first)."""
        if self._ready is None:
            self._ready = self.pool.runInteraction(self._create)
            self._ready.addErrback(self._not_ready)
        return self._ready

    def _not_ready(self, failure):
        self._ready = None
        return failure

    @staticmethod
    def _create(cursor):
        import psycopg

        # Two nodes creating the table at once: one of them gets a unique
        # violation on the catalogue; the table is there all the same.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('mailplat_relay_queue'))")
        for statement in SCHEMA:
            try:
                cursor.execute(statement)
            except psycopg.errors.UniqueViolation:
                pass

    def _run(self, function, *args):
        return self.ready().addCallback(lambda _: self.pool.runInteraction(function, *args))

    def insert(self, record, message, owner, lease):
        def run(cursor):
            cursor.execute(
                f"INSERT INTO mailplat_relay_queue (id, record, message, due, owner, lease_until) "
                f"VALUES (%s, %s, %s, %s, %s, {NOW} + %s)",
                (record["id"], json.dumps(record, separators=(",", ":")), message, due_of(record), owner, lease))

        return self._run(run)

    def update(self, record, owner, release):
        """Write `record` if `owner` still holds it; let go of it when `release`. Fires with True if written."""
        def run(cursor):
            cursor.execute(
                "UPDATE mailplat_relay_queue SET record = %s, due = %s"
                + (", owner = NULL, lease_until = 0" if release else "")
                + " WHERE id = %s AND owner = %s",
                (json.dumps(record, separators=(",", ":")), due_of(record) or 0, record["id"], owner))
            return cursor.rowcount == 1

        return self._run(run)

    def delete(self, queue_id):
        def run(cursor):
            cursor.execute("DELETE FROM mailplat_relay_queue WHERE id = %s", (queue_id,))

        return self._run(run)

    def claim(self, owner, lease, now, limit=CLAIM_BATCH, queue_id=None):
        """
        Rows due by `now` (or the one row `queue_id`, due or not) that
        nobody holds or whose lease ran out, now held by `owner`:
        [(record, message bytes, due)].
        """
        def run(cursor):
            which = "id = %s" if queue_id else "due <= %s"
            cursor.execute(
                f"UPDATE mailplat_relay_queue SET owner = %s, lease_until = {NOW} + %s "
                f"WHERE id IN (SELECT id FROM mailplat_relay_queue WHERE {which} "
                f"AND (owner IS NULL OR lease_until < {NOW}) ORDER BY due LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"RETURNING record, message, due",
                (owner, lease, queue_id or now, limit))
            return [(json.loads(record), bytes(message), due) for record, message, due in cursor.fetchall()]

        return self._run(run)

    def renew(self, owner, ids, lease):
        def run(cursor):
            cursor.execute(f"UPDATE mailplat_relay_queue SET lease_until = {NOW} + %s WHERE owner = %s AND id = ANY(%s)",
                           (lease, owner, list(ids)))

        return self._run(run)

    def release_all(self, owner):
        def run(cursor):
            cursor.execute("UPDATE mailplat_relay_queue SET owner = NULL, lease_until = 0 WHERE owner = %s", (owner,))

        return self._run(run)

    def make_due(self, now):
        """`mailplat queue flush`: every waiting message is due now, whoever holds it."""
        def run(cursor):
            cursor.execute("UPDATE mailplat_relay_queue SET due = %s WHERE due > %s", (now, now))
            return cursor.rowcount

        return self._run(run)

    def records(self):
        """Every record, oldest first (for `mailplat queue list` and the tests)."""
        def run(cursor):
            cursor.execute("SELECT record, message FROM mailplat_relay_queue ORDER BY id")
            return [(json.loads(record), bytes(message)) for record, message in cursor.fetchall()]

        return self._run(run)

    def close(self):
        if self.pool.running:
            self.pool.close()


def list_records(dsn):
    """Every record in the table, oldest first, read at once (blocking: for `mailplat queue list`)."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as connection:
        try:
            rows = connection.execute("SELECT record FROM mailplat_relay_queue ORDER BY id").fetchall()
        except psycopg.errors.UndefinedTable:
            return []
    return [json.loads(record) for (record,) in rows]


class SQLRelayQueue(RelayQueue):
    """
    L{RelayQueue}'s runner (routing, attempts, retries, DSNs) over a
    L{QueueTable} shared by every node, instead of a spool one process owns.

    @param lease: seconds a claim lasts without renewal; a dead node's
        messages wait this long before another node takes them.
    """

    def __init__(self, table, *args, lease=300.0, node=None, **kwargs):
        RelayQueue.__init__(self, *args, **kwargs)
        self.table = table
        self.lease = float(lease)
        self.node = node or node_name()
        self._claiming = None
        self._renewed = 0.0
        self._sql_writes = set()  # writes of messages already let go of (not in self.entries)

    # --- the runner ---------------------------------------------------------------

    def startService(self):
        self.spool.ensure()
        self._clear_cache()
        RelayQueue.startService(self)

    def stopService(self):
        d = defer.maybeDeferred(RelayQueue.stopService, self)
        # A claim under way would leave its rows held by a node that is gone.
        d.addCallback(lambda _: defer.DeferredList(list(self._sql_writes) + ([self._claiming] if self._claiming else [])))
        d.addCallback(lambda _: self.table.release_all(self.node))
        d.addErrback(lambda f: log.warn("sql relay queue: cannot let go of its messages ({error}); "
                                        "other nodes take them when the lease ends", error=f.getErrorMessage()))
        d.addBoth(lambda _: self.table.close())
        return d

    def _clear_cache(self):
        try:
            names = os.listdir(self.spool.messages)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".eml"):
                os.unlink(os.path.join(self.spool.messages, name))

    def _take_lock(self):
        return True  # many nodes, one table: rows are claimed, not the queue

    def _load(self):
        pass  # nothing is held on start: rows are claimed as they fall due

    def _tick(self):
        RelayQueue._tick(self)
        if not self.running:
            return
        now = time.time()
        if self.entries and now - self._renewed >= self.lease / 3:
            self._renewed = now
            self.table.renew(self.node, list(self.entries), self.lease).addErrback(
                lambda f: log.warn("sql relay queue: lease renewal failed: {error}", error=f.getErrorMessage()))
        if self._claiming is None:
            self._claiming = self._claim(now).addBoth(self._claimed)

    def _claimed(self, result):
        self._claiming = None
        return None

    @defer.inlineCallbacks
    def _claim(self, now, queue_id=None):
        try:
            rows = yield self.table.claim(self.node, self.lease, now, queue_id=queue_id)
        except Exception as e:
            log.warn("sql relay queue: cannot read the queue table: {error}", error=f"{type(e).__name__}: {e}")
            return []
        entries = []
        for record, message, due in rows:
            # `mailplat queue flush` moves `due` earlier than the recipients' `next`.
            for r in record["recipients"]:
                if r["state"] in PENDING:
                    r["next"] = min(r["next"], due)
            yield threads.deferToThread(self._cache, record["id"], message)
            entry = Entry(record)
            self.entries[entry.id] = entry
            entries.append(entry)
        if entries:
            log.info("sql relay queue: {count} message(s) taken", count=len(entries))
        now = time.time()
        for entry in entries:
            if not entry.busy and entry.due(now) and queue_id is None:
                self._attempt(entry)
        return entries

    def _cache(self, queue_id, message):
        with open(self.spool.eml(queue_id), "wb") as f:
            f.write(message)

    def _uncache(self, queue_id):
        try:
            os.unlink(self.spool.eml(queue_id))
        except FileNotFoundError:
            pass

    # --- where records live ---------------------------------------------------------

    def _store_new(self, record, source):
        def copied(record):
            with open(self.spool.eml(record["id"]), "rb") as f:
                message = f.read()
            return record, message

        d = threads.deferToThread(lambda: copied(self.spool.copy_message(record, source, sync=False)))
        d.addCallback(lambda pair: self.table.insert(pair[0], pair[1], self.node, self.lease).addCallback(lambda _: pair[0]))
        return d

    def _store_discard(self, queue_id):
        d = threads.deferToThread(self._uncache, queue_id)
        return d.addCallback(lambda _: self.table.delete(queue_id))

    def _save(self, entry):
        return self._write_sql(entry, release=False)

    def _save_or_forget(self, entry):
        if not entry.pending():
            return self._forget(entry)
        # Still waiting: let go of it, so that the next try is any node's.
        self.entries.pop(entry.id, None)
        d = self._write_sql(entry, release=True)
        d.addBoth(lambda r: threads.deferToThread(self._uncache, entry.id).addBoth(lambda _: r))
        self._sql_writes.add(d)
        d.addBoth(lambda r: self._sql_writes.discard(d) or r)
        return d

    def _forget(self, entry):
        self.entries.pop(entry.id, None)

        def run(_):
            d = self.table.delete(entry.id)
            d.addCallback(lambda _: threads.deferToThread(self._uncache, entry.id))
            return d

        entry.writes = entry.writes.addBoth(run)
        entry.writes.addErrback(lambda f: log.failure("relay {queue_id}: cannot remove the queue row", f, queue_id=entry.id))
        return entry.writes

    def _write_sql(self, entry, release):
        def run(_):
            return self.table.update(entry.record, self.node, release)

        def written(ok):
            if not ok:
                log.warn("relay {queue_id}: another node took the message while this one held it "
                         "(the lease ran out); its record is theirs now", queue_id=entry.id)

        entry.writes = entry.writes.addBoth(run).addCallback(written)
        entry.writes.addErrback(lambda f: log.failure("relay {queue_id}: cannot write the queue row", f, queue_id=entry.id))
        return entry.writes

    # --- operator actions: the whole table, not only what this node holds -----------

    def _poll_control(self):
        """Command files of `mailplat queue` while the control channel is down: this node's messages only."""
        from mailplat.delivery.relay import control

        actions = {"flush": lambda _: RelayQueue.flush(self), "delete": lambda i: RelayQueue.delete(self, i),
                   "bounce": lambda i: RelayQueue.bounce(self, i)}
        for name, message in control.run_commands(self.spool.control, actions):
            log.info("relay queue: control {name}: {message}", name=name, message=message)

    def flush(self):
        message = RelayQueue.flush(self)
        d = self.table.make_due(time.time())
        return d.addCallback(lambda count: f"{message}; {count} more message(s) in the table due now")

    @defer.inlineCallbacks
    def _held(self, queue_id):
        if queue_id not in self.entries:
            yield self._claim(time.time(), queue_id=queue_id)
        if queue_id not in self.entries:
            raise KeyError(queue_id)

    @defer.inlineCallbacks
    def delete(self, queue_id):
        yield self._held(queue_id)
        return RelayQueue.delete(self, queue_id)

    @defer.inlineCallbacks
    def bounce(self, queue_id):
        yield self._held(queue_id)
        return RelayQueue.bounce(self, queue_id)
