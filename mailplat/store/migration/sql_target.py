"""
Writing an L{AccountSnapshot} into the sql store: the whole account in one
transaction, so a migration that fails half-way leaves nothing behind and
can simply be run again. Bodies go through the store's blob store (stored
once per content hash, indexed as at delivery); each folder gets the
source's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ (mailbox.restore).

An account that exists with no messages (the server makes one, with the
special-use folders, at a user's first login) gives way to the source's
folders; one with any message is refused (L{AlreadyMigrated}).
"""

from twisted.internet import reactor, threads

from mailplat.store import boundary
from mailplat.store.migration.snapshot import AlreadyMigrated, MigrationError, NoSuchAccount, batches
from mailplat.store.sql import account as accounts
from mailplat.store.sql import mailbox, names
from mailplat.store.sql.folder import crlf_size


def target_name(levels):
    """The sql store's name of a folder; @raise MigrationError: one it can't hold."""
    name = names.SEPARATOR.join(levels)
    try:
        return names.check(name)
    except boundary.RefusedName as e:
        raise MigrationError(f"folder {name!r} can't be a folder of the sql store ({e.args[0] if e.args else e})")


def message_count(cursor, address):
    """Messages the sql store holds for `address`; None when it has no such account."""
    cursor.execute("SELECT id FROM mailplat_accounts WHERE address = %s", (address,))
    row = cursor.fetchone()
    if row is None:
        return None
    cursor.execute(
        "SELECT count(*) FROM mailplat_messages m JOIN mailplat_mailboxes b ON b.id = m.mailbox WHERE b.account = %s",
        (row[0],),
    )
    return cursor.fetchone()[0]


def check_source(store, address):
    """Deferred: fails with NoSuchAccount when the sql store has no account of `address`."""

    def checked(count):
        if count is None:
            raise NoSuchAccount(f"{address}: no account in the sql store")

    return store.db.run("looking up an account", message_count, address).addCallback(checked)


def write(store, snapshot):
    """
    Deferred firing with a list of warnings once the account is committed.
    Runs in one of the store's pool threads; bodies are read from the
    source in the reactor, a batch at a time (blockingCallFromThread).
    """

    def fetch(levels, uids):
        return threads.blockingCallFromThread(reactor, snapshot.bodies, levels, uids)

    return store.db.run("migrating an account", _write, store, snapshot, fetch)


def _write(cursor, store, snapshot, fetch):
    address = snapshot.address.strip().lower()
    planned = [(target_name(f.levels), f) for f in snapshot.folders]
    cursor.execute("SELECT id FROM mailplat_accounts WHERE address = %s FOR UPDATE", (address,))
    row = cursor.fetchone()
    if row is not None:
        count = message_count(cursor, address)
        if count:
            raise AlreadyMigrated(f"{address}: the sql store already holds {count} messages of this user; nothing changed")
        account = row[0]
        # Empty folders made at a first login: the source's take their place.
        cursor.execute("SELECT id FROM mailplat_mailboxes WHERE account = %s", (account,))
        old = [r[0] for r in cursor.fetchall()]
        cursor.execute("DELETE FROM mailplat_mailboxes WHERE account = %s", (account,))
        cursor.execute("DELETE FROM mailplat_subscriptions WHERE account = %s", (account,))
        for mailbox_id in old:
            mailbox.notify(cursor, mailbox_id)
    else:
        cursor.execute("INSERT INTO mailplat_accounts (address) VALUES (%s) RETURNING id", (address,))
        account = cursor.fetchone()[0]
    warnings = []
    put = getattr(store, "_put_body", None) or (lambda c, data: store.blobs.put(c, data))
    for name, folder in planned:
        mailbox_id = accounts.make(cursor, account, name, folder.special_use)
        if mailbox_id is None:
            raise MigrationError(f"{address}: folder {name!r} appears twice in the source")
        states = {m.uid: m for m in folder.messages}
        mailbox.restore(cursor, mailbox_id, folder.uidvalidity, folder.uidnext, folder.highestmodseq, [])
        for batch in batches(sorted(states)):
            found = fetch(folder.levels, batch)
            entries = []
            for uid in batch:
                data = found.get(uid)
                if data is None:
                    warnings.append(f"{name}: UID {uid} vanished from the source during the migration")
                    continue
                m = states[uid]
                entries.append((uid, put(cursor, data), crlf_size(data), m.flags, m.internaldate, m.modseq))
            mailbox.restore(cursor, mailbox_id, folder.uidvalidity, folder.uidnext, folder.highestmodseq, entries)
    for levels in snapshot.subscriptions:
        try:
            accounts.subscribe(cursor, account, target_name(levels))
        except MigrationError as e:
            warnings.append(f"subscription not kept: {e}")
    # A folder made later must never get an UIDVALIDITY a migrated one has
    # (RFC 3501 2.3.1.1), so the sequence moves above them.
    top = max([f.uidvalidity for f in snapshot.folders] + [0])
    cursor.execute(
        "SELECT setval('mailplat_uidvalidity', GREATEST((SELECT last_value FROM mailplat_uidvalidity), %s))", (top,)
    )
    return warnings
