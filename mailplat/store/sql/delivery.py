"""
One SMTP delivery in two round trips to PostgreSQL: BEGIN with the body
and its index values (pipelined), then the message row with COMMIT.

Why: a delivery is the hot path of a node, and each round trip from a pool
thread waits for the GIL behind the reactor (up to the 5 ms switch
interval when the process is busy). Worse, the mailbox row lock
(mailbox.py) used to be held across the round trips that followed it, so
deliveries to one mailbox queued behind another node's network and GIL
waits. Here the body and index rows go first, and the lock is taken by the
statement that also inserts the message, sent with COMMIT (and then the
NOTIFY, see database.py) as one simple query: it is held only for
PostgreSQL's own work and its WAL flush, never for a trip back to Python.

Ordering is that of L{mailbox.add}: the UPDATE of the mailbox row takes the
row lock (it conflicts with `SELECT ... FOR UPDATE`), and in READ COMMITTED
a waiting UPDATE re-reads the row its predecessor committed, so UIDs and
modseqs ascend in commit order on every node.

The mailbox id is remembered per (address, folder) by the store; the
statement checks id and name, so a folder deleted or renamed since (on any
node) gives no row, and the caller looks the target up again
(L{SQLStore.deliver}).
"""

import time

from mailplat.store.sql import flags as flagset
from mailplat.store.sql.mailbox import CHANNEL

# The mailbox row locked and advanced, the message inserted with the UID
# and modseq it had; no row when the mailbox with this id and name is gone.
ADD_ONE = (
    "WITH box AS ("
    " UPDATE mailplat_mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
    " WHERE id = %(mailbox)s AND name = %(name)s"
    " RETURNING id, uidvalidity, uidnext - 1 AS uid, highestmodseq AS modseq"
    "), message AS ("
    " INSERT INTO mailplat_messages (mailbox, uid, modseq, flags, keywords, internaldate, savedate, size, body)"
    " SELECT id, uid, modseq, %(flags)s::text[], %(keywords)s::text[], %(internaldate)s::float8,"
    " %(savedate)s::float8, %(size)s::bigint, %(body)s::bytea FROM box"
    ") "
    "SELECT uidvalidity, uid FROM box"
)

# Sent after COMMIT in the same query (database.py, _committing, says why).
NOTIFY_ONE = "SELECT pg_notify(%(channel)s, current_schema() || ':' || %(announced)s)"

INDEX_ONE = "INSERT INTO mailplat_body_index (hash, fields) VALUES (%s, %s) ON CONFLICT (hash) DO NOTHING"


def add_one(cursor, blobs, target, data, size, flags, fields=None):
    """
    In a pool thread: store one delivered message in mailbox `target`
    (id, name) and COMMIT. @return: (uidvalidity, uid), or None when that
    mailbox is gone (the body stays, unreferenced, for L{blobs.collect}).
    `fields`: index values of a new body (or None).
    """
    import psycopg

    connection = cursor.connection  # psycopg's, under adbapi's cursor
    system, keywords = flagset.split(flags)
    now = time.time()
    args = {
        "mailbox": target[0], "name": target[1], "flags": system, "keywords": keywords,
        "internaldate": now, "savedate": now, "size": size, "channel": CHANNEL, "announced": str(target[0]),
    }
    # The body and its index first, no lock held: BEGIN and both INSERTs
    # in one round trip where libpq can pipeline (14+).
    if psycopg.Pipeline.is_supported():
        with connection.pipeline():
            args["body"] = _put(cursor, blobs, data, fields)
    else:
        args["body"] = _put(cursor, blobs, data, fields)
    # Then the locking statement, COMMIT and NOTIFY as one simple query
    # (so bound client-side: the values are short): PostgreSQL runs them
    # without waiting for us, so the row lock never waits on this process.
    added = psycopg.ClientCursor(connection)
    try:
        added.execute(f"{ADD_ONE}; COMMIT; {NOTIFY_ONE}", args)
        row = added.fetchone()
    finally:
        added.close()
    return None if row is None else row[:2]


def _put(cursor, blobs, data, fields):
    from psycopg.types.json import Jsonb

    key = blobs.put(cursor, data)
    if fields:
        cursor.execute(INDEX_ONE, (key, Jsonb(fields)))
    return key
