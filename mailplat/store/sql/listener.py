"""
Push across nodes: one connection per node LISTENs on the store's NOTIFY
channel (mailbox.CHANNEL; every change NOTIFYs at COMMIT with
"<schema>:<mailbox id>"), and each notification syncs that mailbox's open
folder, which turns the change into EXISTS / FETCH / EXPUNGE for the IDLE
sessions of this node.

The connection is read by a thread of its own (psycopg's `notifies`, with
a timeout so that it can stop), never the reactor. When the connection is
lost the thread reconnects, and once listening again every open folder is
synced: a change committed while nobody listened is found by its
mod-sequence, never missed silently.
"""

import threading
import time

from twisted.internet import reactor
from twisted.logger import Logger

from mailplat.store.sql.mailbox import CHANNEL

log = Logger()

# Seconds between reconnection attempts; and how often the thread looks at its stop flag.
RECONNECT_DELAY = 1.0
POLL_TIMEOUT = 0.5
# How the connection shows in pg_stat_activity.
APPLICATION_NAME = "mailplat-listener"
# A dead server is noticed by a query this often, not by waiting for a notification.
PING_INTERVAL = 10.0


class Listener:
    """
    @param dsn: the store's DSN (its search_path picks the schema).
    @param notified: called in the reactor thread with a mailbox id.
    @param resync: called in the reactor thread after each (re)connection.
    """

    def __init__(self, dsn, notified, resync, where=None):
        self.dsn = dsn
        self.notified = notified
        self.resync = resync
        self.where = where or "the database"
        self.connected = False
        self._stopping = threading.Event()
        self._thread = None
        self._connection = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="mailplat sql store listener", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop the thread (it notices within POLL_TIMEOUT); @return: None."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(POLL_TIMEOUT * 4)

    def _run(self):
        import psycopg

        lost = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=10, application_name=APPLICATION_NAME
                ) as connection:
                    schema = connection.execute("SELECT current_schema()").fetchone()[0]
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._connection = connection
                    self.connected = True
                    if lost:
                        log.info("sql store: listening on {where} again", where=self.where)
                    # Changes made while we were not listening are found by modseq.
                    reactor.callFromThread(self.resync)
                    self._read(connection, schema)
            except Exception as e:
                if self._stopping.is_set():
                    break
                if not lost:
                    log.warn("sql store: listening connection to {where} lost: {error}", where=self.where, error=e)
                lost = True
            finally:
                self.connected = False
                self._connection = None
            self._stopping.wait(RECONNECT_DELAY)

    def _read(self, connection, schema):
        prefix = schema + ":"
        pinged = time.monotonic()
        while not self._stopping.is_set():
            for note in connection.notifies(timeout=POLL_TIMEOUT):
                payload = note.payload
                if payload.startswith(prefix) and payload[len(prefix):].isdigit():
                    reactor.callFromThread(self.notified, int(payload[len(prefix):]))
            if connection.closed or connection.broken:
                raise ConnectionError("connection closed")
            if time.monotonic() - pinged > PING_INTERVAL:
                connection.execute("SELECT 1")
                pinged = time.monotonic()
