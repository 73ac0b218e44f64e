"""
The sql store's connection pool: twisted.enterprise.adbapi over psycopg,
as the sql realm uses it (mailplat/realm/sql.py). Every transaction runs in
the pool's threads, never in the reactor; the Deferred fires after COMMIT,
which is what makes a delivery durable before the server answers 250.

The tables are created or upgraded on the first connection
(L{mailplat.store.sql.schema.ensure}) unless `create_tables` is false.
"""

import threading

from twisted.enterprise import adbapi
from twisted.internet import defer, task, reactor
from twisted.logger import Logger

from mailplat.interfaces import MailplatError, TemporaryFailure
from mailplat.realm.sql import _redact
from mailplat.store.sql import mailbox, schema

log = Logger()

# Deadlocks and serialisation failures are retried this many times.
RETRIES = 3


class StoreDatabase:
    """One adbapi pool on a PostgreSQL DSN; failures to reach it become TemporaryFailure."""

    def __init__(self, dsn, pool_size=8, create_tables=True):
        try:
            import psycopg
        except ImportError:
            raise ValueError("dsn: the sql store needs psycopg (pip install psycopg)")
        self.module = psycopg
        self.dsn = dsn
        self.where = _redact(dsn)
        self.create_tables = create_tables
        self._creating = threading.Lock()
        self._ready = False
        self.pool = adbapi.ConnectionPool(
            "psycopg",
            dsn,
            connect_timeout=10,
            cp_min=1,
            cp_max=pool_size,
            cp_reconnect=True,
            cp_noisy=False,
            cp_openfun=self._opened,
        )

    def _opened(self, connection):
        """A new connection (in a pool thread): the tables made or checked once per process."""
        with self._creating:
            if self._ready:
                return
            cursor = connection.cursor()
            try:
                if self.create_tables:
                    found = schema.ensure(cursor)
                    if found < schema.VERSION:
                        log.info("sql store: tables at version {v} (were {found})", v=schema.VERSION, found=found)
                else:
                    found = schema.current_version(cursor)
                    if found != schema.VERSION:
                        raise ValueError(
                            f"the sql store's tables are at version {found}, not {schema.VERSION}: "
                            "set create_tables = true on one node, or create them with the SQL of docs/store-sql.md"
                        )
                connection.commit()
            except ValueError as e:
                # Tables of another version: every query fails until an operator acts.
                connection.rollback()
                log.error("sql store: {where}: {problem}", where=self.where, problem=str(e))
                raise TemporaryFailure("mail database tables at another version")
            except BaseException:
                connection.rollback()
                raise
            finally:
                cursor.close()
            self._ready = True

    def _unavailable(self, failure, what):
        if failure.check(MailplatError, KeyError, ValueError):
            return failure
        log.error(
            "sql store: {what} failed on {where}: {error}", what=what, where=self.where, error=failure.getErrorMessage()
        )
        raise TemporaryFailure(f"mail database unavailable: {failure.type.__name__}", "4.3.0")

    def run(self, what, function, *args):
        """
        Run `function(cursor, *args)` in one transaction in a pool thread;
        fires with its result after COMMIT. Deadlocks and serialisation
        failures are tried again; KeyError, ValueError and MailplatError
        pass through; anything else becomes TemporaryFailure.
        """
        errors = self.module.errors
        retryable = (errors.DeadlockDetected, errors.SerializationFailure)

        def attempt(n):
            d = self.pool.runInteraction(_committing, function, *args)

            def again(failure):
                if n < RETRIES and failure.check(*retryable):
                    return task.deferLater(reactor, 0.01 * (n + 1), attempt, n + 1)
                return failure

            return d.addErrback(again)

        return attempt(0).addErrback(self._unavailable, what)

    def close(self):
        if self.pool.running:
            self.pool.close()
        return defer.succeed(None)


def _committing(cursor, function, *args):
    """
    In a pool thread: `function(cursor, *args)`, then COMMIT, then the
    NOTIFYs it asked for (mailbox.notify), sent as one simple query.

    Why after COMMIT: a transaction that NOTIFYs takes PostgreSQL's one
    notification-queue lock at commit and holds it through its WAL flush,
    so every notifying commit of every node waits for the one before it
    (no group commit). The NOTIFYs sent after COMMIT run in their own
    transaction, which wrote no WAL and so flushes none: the lock is held
    for microseconds. They are in the same query as the COMMIT, so a node
    that dies after sending it still announces what it committed.
    """
    cursor.notify_after_commit = pending = set()
    result = function(cursor, *args)
    if pending:
        from psycopg import ClientCursor

        ids = sorted(pending)
        statements = ["COMMIT"] + [mailbox.NOTIFY] * len(ids)
        values = [v for i in ids for v in (mailbox.CHANNEL, str(i))]
        notifying = ClientCursor(cursor.connection)
        try:
            notifying.execute("; ".join(statements), values)
        finally:
            notifying.close()
    return result
