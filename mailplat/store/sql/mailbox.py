"""
The SQL of one mailbox's messages: adding, flag changes, expunges, copies,
and the read of what changed since a mod-sequence. Each function runs in
a pool thread inside one transaction (`cursor`); nothing here touches the
in-memory view (folder.py does, in the reactor, with the answers).

Serialisation: every change to a mailbox's messages first locks its
mailbox row (`SELECT ... FOR UPDATE`, L{lock}) and holds it to COMMIT. A
row lock rather than a sequence or an advisory lock because

  - it makes UIDs ascend in commit order across nodes: the next writer
    reads `uidnext` only after the last one committed, so no session can
    see UID n+1 before UID n and then have n appear below it (RFC 3501
    2.3.1.1), which a sequence allows;
  - the same lock gives each change its mod-sequence (`highestmodseq` +
    1) in that order, so "changed since modseq M" is one indexed query;
  - it goes away with the transaction (a node killed mid-change holds
    nothing), and deleting the mailbox waits for it, with no lock keys of
    our own to manage.

Its cost is that writes to one mailbox are serial (a few ms each);
writes to different mailboxes run in parallel. Two mailboxes (COPY, MOVE)
are locked in id order, so two copies in opposite directions can't
deadlock.
"""

import time

from mailplat.store import modseq as modseqs
from mailplat.store.sql import flags as flagset
from mailplat.store.sql import info

# NOTIFY channel; the payload is "<schema>:<mailbox id>" (listener.py).
CHANNEL = "mailplat_store"


def _message_columns():
    """
    A message row, and its cached values (mailplat_body_index.fields) in two
    parts: the string values of `info.STRING_FIELDS` as text columns, and
    the rest as JSON text, which the folder decodes only when a value of it
    is asked for (folder.py). Why: decoding every message's JSON (ENVELOPE,
    BODYSTRUCTURE, sort keys) was most of a 20,000-message folder's SELECT
    (benchmarks/imap_fetch.py --store sql), and a FETCH of ENVELOPE should
    find it ready. A field holding something other than a string stays in
    the JSON, so any value round-trips.
    """
    strings = [f"CASE WHEN jsonb_typeof(i.fields->'{f}') = 'string' THEN i.fields->>'{f}' END" for f in info.STRING_FIELDS]
    split = " AND ".join(f"coalesce(jsonb_typeof(i.fields->'{f}'), 'string') = 'string'" for f in info.STRING_FIELDS)
    keys = "{" + ",".join(info.STRING_FIELDS) + "}"
    rest = f"(CASE WHEN {split} THEN i.fields - '{keys}'::text[] ELSE i.fields END)::text"
    return ", ".join(["m.uid, m.modseq, m.flags, m.keywords, m.internaldate, m.savedate, m.size, m.body"] + strings + [rest])


MESSAGE_COLUMNS = _message_columns()


class FolderGone(KeyError):
    """The mailbox was deleted (by this node or another)."""


def notify(cursor, mailbox_id):
    """
    Tell every node's listener that the mailbox changed: right after COMMIT
    under L{StoreDatabase.run} (database.py says why), else at COMMIT.
    """
    pending = getattr(cursor, "notify_after_commit", None)
    if pending is not None:
        pending.add(mailbox_id)
        return
    cursor.execute(NOTIFY, (CHANNEL, str(mailbox_id)))


NOTIFY = "SELECT pg_notify(%s, current_schema() || ':' || %s)"


def lock(cursor, ids):
    """
    Lock the mailbox rows of `ids` (in id order) to the end of the
    transaction; @return: {id: (uidvalidity, uidnext, highestmodseq)}.
    @raise FolderGone: when one of them no longer exists.
    """
    wanted = sorted(set(ids))
    cursor.execute(
        "SELECT id, uidvalidity, uidnext, highestmodseq FROM mailplat_mailboxes WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        (wanted,),
    )
    rows = {row[0]: tuple(row[1:]) for row in cursor.fetchall()}
    if len(rows) != len(wanted):
        raise FolderGone(min(set(wanted) - set(rows)))
    return rows


def _bump(cursor, mailbox_id, modseq, uidnext=None):
    if uidnext is None:
        cursor.execute("UPDATE mailplat_mailboxes SET highestmodseq = %s WHERE id = %s", (modseq, mailbox_id))
    else:
        cursor.execute(
            "UPDATE mailplat_mailboxes SET highestmodseq = %s, uidnext = %s WHERE id = %s", (modseq, uidnext, mailbox_id)
        )
    notify(cursor, mailbox_id)


def _insert(cursor, mailbox_id, first_uid, modseq, entries):
    """entries: [(body hash, size, flags, internaldate)]; @return: their UIDs."""
    now = time.time()
    rows, uids = [], []
    for n, (body, size, flags, internaldate) in enumerate(entries):
        system, keywords = flagset.split(flags)
        uid = first_uid + n
        uids.append(uid)
        rows.append((mailbox_id, uid, modseq, system, keywords, internaldate, now, size, body))
    cursor.executemany(
        "INSERT INTO mailplat_messages (mailbox, uid, modseq, flags, keywords, internaldate, savedate, size, body) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        rows,
    )
    return uids


def add(cursor, mailbox_id, entries):
    """
    New messages (delivery, APPEND) with the next UIDs and one new modseq.
    @return: (uidvalidity, [uid]).
    """
    validity, uidnext, top = lock(cursor, [mailbox_id])[mailbox_id]
    uids = _insert(cursor, mailbox_id, uidnext, top + 1, entries)
    _bump(cursor, mailbox_id, top + 1, uidnext + len(uids))
    return validity, uids


def restore(cursor, mailbox_id, uidvalidity, uidnext, highestmodseq, entries):
    """
    Migration (mailplat/store/migration): messages with the UIDs, flags,
    internal dates and modseqs they had in another store, and that store's
    UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ, so clients keep what they
    cached; none of them \\Recent. For a mailbox that holds none of these
    UIDs yet; may be called once per batch.
    entries: [(uid, body hash, size, flags, internaldate, modseq)].
    """
    lock(cursor, [mailbox_id])
    now = time.time()
    cursor.executemany(
        "INSERT INTO mailplat_messages (mailbox, uid, modseq, flags, keywords, internaldate, savedate, size, body) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [(mailbox_id, uid, max(modseq, 1), *flagset.split(flagset.normalise(flags)), date, now, size, body)
         for uid, body, size, flags, date, modseq in entries],
    )
    top = max([highestmodseq, 1] + [e[5] for e in entries])
    uidnext = max([uidnext, 1] + [e[0] + 1 for e in entries])
    cursor.execute(
        "UPDATE mailplat_mailboxes SET uidvalidity = %s, uidnext = GREATEST(uidnext, %s), "
        "highestmodseq = GREATEST(highestmodseq, %s), first_recent = GREATEST(first_recent, %s) WHERE id = %s",
        (uidvalidity, uidnext, top, uidnext, mailbox_id),
    )
    notify(cursor, mailbox_id)


def store_flags(cursor, mailbox_id, uids, flags, mode, unchangedsince=None):
    """
    STORE: @return: ({uid: new flags} for the messages that exist and passed
    the test, [uids that failed UNCHANGEDSINCE], [uids whose flags changed]).
    A STORE that changes nothing gives no new modseq.
    """
    _, _, top = lock(cursor, [mailbox_id])[mailbox_id]
    cursor.execute(
        "SELECT uid, modseq, flags, keywords FROM mailplat_messages WHERE mailbox = %s AND uid = ANY(%s) ORDER BY uid",
        (mailbox_id, sorted(set(uids))),
    )
    answer, modified, updates = {}, [], []
    for uid, modseq, system, keywords in cursor.fetchall():
        if unchangedsince is not None and modseq > unchangedsince:
            modified.append(uid)  # RFC 7162 3.1.3: left as it is
            continue
        current = flagset.joined(system, keywords)
        wanted = flagset.changed(current, flags, mode)
        answer[uid] = wanted
        if wanted != current:
            updates.append((uid, wanted))
    if updates:
        modseq = top + 1
        cursor.executemany(
            "UPDATE mailplat_messages SET flags = %s, keywords = %s, modseq = %s WHERE mailbox = %s AND uid = %s",
            [(*flagset.split(wanted), modseq, mailbox_id, uid) for uid, wanted in updates],
        )
        _bump(cursor, mailbox_id, modseq)
    return answer, modified, [uid for uid, _ in updates]


def expunge(cursor, mailbox_id, uids=None, only_deleted=True):
    """
    Remove messages (those flagged \\Deleted, among `uids` when given; or,
    with only_deleted false, exactly `uids`: POP3's DELE), remembering each
    UID with the modseq it went at. @return: the removed UIDs, ascending.
    """
    _, _, top = lock(cursor, [mailbox_id])[mailbox_id]
    where, args = "mailbox = %s", [mailbox_id]
    if only_deleted:
        where += " AND '\\Deleted' = ANY(flags)"
    if uids is not None:
        where += " AND uid = ANY(%s)"
        args.append(sorted(set(uids)))
    cursor.execute(f"DELETE FROM mailplat_messages WHERE {where} RETURNING uid", args)
    removed = sorted(row[0] for row in cursor.fetchall())
    if removed:
        _forget(cursor, mailbox_id, removed, top + 1)
        _bump(cursor, mailbox_id, top + 1)
    return removed


def _forget(cursor, mailbox_id, uids, modseq):
    cursor.executemany(
        "INSERT INTO mailplat_expunged (mailbox, uid, modseq) VALUES (%s, %s, %s) "
        "ON CONFLICT (mailbox, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
        [(mailbox_id, uid, modseq) for uid in uids],
    )
    # Expunged UIDs are remembered for VANISHED (RFC 7162 3.2.5, 3.2.6) as
    # the other stores keep them (mailplat.store.modseq.KEEP_EXPUNGED);
    # past that the oldest are dropped, and `vanished_floor` says
    # up to which modseq VANISHED can no longer answer.
    cursor.execute(
        "WITH old AS (DELETE FROM mailplat_expunged WHERE mailbox = %s AND modseq <= ("
        "  SELECT modseq FROM mailplat_expunged WHERE mailbox = %s ORDER BY modseq DESC OFFSET %s LIMIT 1)"
        " RETURNING modseq) "
        "UPDATE mailplat_mailboxes SET vanished_floor = GREATEST(vanished_floor, (SELECT max(modseq) FROM old)) "
        "WHERE id = %s AND EXISTS (SELECT 1 FROM old)",
        (mailbox_id, mailbox_id, modseqs.KEEP_EXPUNGED, mailbox_id),
    )


def transfer(cursor, source_id, target_id, uids, move):
    """
    COPY or MOVE (RFC 6851): the messages get the target's next UIDs, with
    their flags, internal dates and bodies (the same body rows: a copy
    costs no bytes); a move removes the sources in the same transaction.
    @return: [(source uid, new uid)], ascending.
    """
    rows = lock(cursor, [source_id, target_id])
    cursor.execute(
        "SELECT uid, flags, keywords, internaldate, size, body FROM mailplat_messages "
        "WHERE mailbox = %s AND uid = ANY(%s) ORDER BY uid",
        (source_id, sorted(set(uids))),
    )
    found = cursor.fetchall()
    if not found:
        return []
    _, uidnext, top = rows[target_id]
    modseq = top + 1
    entries = [(bytes(body), size, flagset.joined(system, keywords), date) for _, system, keywords, date, size, body in found]
    new = _insert(cursor, target_id, uidnext, modseq, entries)
    _bump(cursor, target_id, modseq, uidnext + len(new))
    old = [row[0] for row in found]
    if move:
        source_modseq = modseq if source_id == target_id else rows[source_id][2] + 1
        cursor.execute("DELETE FROM mailplat_messages WHERE mailbox = %s AND uid = ANY(%s)", (source_id, old))
        _forget(cursor, source_id, old, source_modseq)
        if source_id != target_id:
            _bump(cursor, source_id, source_modseq)
    return list(zip(old, new))


class Delta:
    """What changed in a mailbox since a modseq: read in one snapshot by L{changes}."""

    __slots__ = ("name", "uidvalidity", "uidnext", "highestmodseq", "first_recent", "vanished_floor", "messages", "expunged")

    def __init__(self, row, messages, expunged):
        (self.name, self.uidvalidity, self.uidnext, self.highestmodseq, self.first_recent, self.vanished_floor) = row
        self.messages = messages  # [(SQLMessageInfo, cached strings or None, the other cached values as JSON text or None)], by UID
        self.expunged = expunged  # [(uid, modseq)]


def changes(cursor, mailbox_id, since):
    """
    The mailbox's state and every message changed or expunged at a modseq
    above `since` (0: all of them); None when the mailbox is gone. Inside a
    write (after L{lock}) or a REPEATABLE READ transaction, the three reads
    see one state of the mailbox.
    """
    cursor.execute(
        "SELECT name, uidvalidity, uidnext, highestmodseq, first_recent, vanished_floor "
        "FROM mailplat_mailboxes WHERE id = %s",
        (mailbox_id,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    cursor.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM mailplat_messages m LEFT JOIN mailplat_body_index i ON i.hash = m.body "
        "WHERE m.mailbox = %s AND m.modseq > %s ORDER BY m.uid",
        (mailbox_id, since),
    )
    messages = [info.from_row(r, row[1]) for r in cursor.fetchall()]
    cursor.execute(
        "SELECT uid, modseq FROM mailplat_expunged WHERE mailbox = %s AND modseq > %s ORDER BY modseq, uid",
        (mailbox_id, since),
    )
    return Delta(row, messages, cursor.fetchall())


def read_changes(cursor, mailbox_id, since):
    """L{changes} in a read-only snapshot (a sync with no write)."""
    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    return changes(cursor, mailbox_id, since)


def bodies_of(cursor, blobs, mailbox_id, uids):
    """{uid: bytes} of the messages of `uids` that exist."""
    cursor.execute(
        "SELECT uid, body FROM mailplat_messages WHERE mailbox = %s AND uid = ANY(%s)", (mailbox_id, sorted(set(uids)))
    )
    by_uid = {uid: bytes(body) for uid, body in cursor.fetchall()}
    data = blobs.get_many(cursor, list(by_uid.values()))
    return {uid: data[h] for uid, h in by_uid.items() if h in data}


def save_claims(cursor, claims):
    """\\Recent claims: {mailbox id: first unclaimed UID}; never moved back."""
    cursor.executemany(
        "UPDATE mailplat_mailboxes SET first_recent = GREATEST(first_recent, %s) WHERE id = %s",
        [(first, mailbox_id) for mailbox_id, first in sorted(claims.items())],
    )


def save_index(cursor, fields):
    """Cached values: {body hash: {field: value}}, merged into what is kept."""
    from psycopg.types.json import Jsonb

    cursor.executemany(
        "INSERT INTO mailplat_body_index (hash, fields) SELECT %s, %s WHERE EXISTS "
        "(SELECT 1 FROM mailplat_bodies WHERE hash = %s) "
        "ON CONFLICT (hash) DO UPDATE SET fields = mailplat_body_index.fields || EXCLUDED.fields",
        [(h, Jsonb(values), h) for h, values in sorted(fields.items())],
    )
