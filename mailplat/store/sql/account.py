"""
One user's mailboxes in the sql store as IMAP sees them (L{IMailAccount}):
the folder list, create / delete / rename, subscriptions and special-use
folders. The blocking functions run in one transaction each (`cursor`);
L{SQLAccount} calls them through the store's pool.
"""

from twisted.internet import defer
from zope.interface import implementer

from mailplat.interfaces import IMailAccount
from mailplat.store import boundary
from mailplat.store.sql import mailbox, names
from mailplat.store.specialuse import SPECIAL_USE, SPECIAL_USE_ATTRIBUTES


# --- blocking: one transaction each ------------------------------------------------


def account_id(cursor, address):
    """The account of `address`, made with INBOX and the special-use folders on first use."""
    cursor.execute("SELECT id FROM mailplat_accounts WHERE address = %s", (address,))
    row = cursor.fetchone()
    if row is not None:
        return row[0]
    cursor.execute(
        "INSERT INTO mailplat_accounts (address) VALUES (%s) ON CONFLICT (address) DO NOTHING RETURNING id",
        (address,),
    )
    row = cursor.fetchone()
    if row is not None:
        set_up(cursor, row[0])
        return row[0]
    # Made by another transaction (perhaps on another node), committed with its folders.
    cursor.execute("SELECT id FROM mailplat_accounts WHERE address = %s", (address,))
    return cursor.fetchone()[0]


def set_up(cursor, account):
    make(cursor, account, names.INBOX)
    for name, attribute in SPECIAL_USE:
        make(cursor, account, name, attribute)
    cursor.executemany(
        "INSERT INTO mailplat_subscriptions (account, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        [(account, name) for name in [names.INBOX] + sorted(n for n, _ in SPECIAL_USE)],
    )


def make(cursor, account, name, special_use=None):
    """One mailbox with a new UIDVALIDITY; @return: its id, or None if it exists."""
    cursor.execute(
        "INSERT INTO mailplat_mailboxes (account, name, special_use, uidvalidity) "
        "VALUES (%s, %s, %s, nextval('mailplat_uidvalidity')) ON CONFLICT (account, name) DO NOTHING RETURNING id",
        (account, name, special_use),
    )
    row = cursor.fetchone()
    return None if row is None else row[0]


def find(cursor, account, name):
    """@return: the mailbox id of `name`, or None."""
    cursor.execute("SELECT id FROM mailplat_mailboxes WHERE account = %s AND name = %s", (account, name))
    row = cursor.fetchone()
    return None if row is None else row[0]


def deliver_target(cursor, address, folder):
    """(account id, mailbox id) a delivery goes to: `folder` when it exists, else INBOX."""
    account = account_id(cursor, address)
    target = None
    if folder:
        try:
            target = find(cursor, account, names.check(folder))
        except ValueError:
            target = None
    if target is None:
        target = find(cursor, account, names.INBOX)
    if target is None:  # INBOX is never deleted; made again if a database lost it
        target = make(cursor, account, names.INBOX)
    return account, target


def listing(cursor, account):
    """[(name, attributes)], INBOX first, then by name (RFC 3501 7.2.2, RFC 6154)."""
    cursor.execute("SELECT name, special_use FROM mailplat_mailboxes WHERE account = %s", (account,))
    real = dict(cursor.fetchall())
    has_children = {p for n in real for p in names.parents(n)}
    out = []
    for name in sorted(set(real) | has_children, key=lambda n: (n != names.INBOX, n)):
        attributes = {"\\HasChildren" if name in has_children else "\\HasNoChildren"}
        if name not in real:
            attributes.add("\\Noselect")  # a parent deleted while its children stayed
        elif real[name]:
            attributes.add(real[name])
        out.append((name, frozenset(attributes)))
    return out


def create(cursor, account, name, special_use):
    # RFC 3501 6.3.3: the superiors a name needs are made too.
    if find(cursor, account, name) is not None:
        raise boundary.FolderExists(f"folder exists: {name}")
    for parent in names.parents(name):
        make(cursor, account, parent)
    if make(cursor, account, name, special_use) is None:
        raise boundary.FolderExists(f"folder exists: {name}")


def delete(cursor, account, name):
    """@return: the id of the deleted mailbox (its messages go with it)."""
    found = find(cursor, account, name)
    if found is None:
        raise KeyError(name)
    mailbox.lock(cursor, [found])  # waits for a change in flight to commit
    cursor.execute("DELETE FROM mailplat_mailboxes WHERE id = %s", (found,))
    mailbox.notify(cursor, found)
    return found


def _family(cursor, account, name):
    """[(id, name)] of `name` and its inferiors."""
    prefix = name + names.SEPARATOR
    cursor.execute(
        "SELECT id, name FROM mailplat_mailboxes WHERE account = %s AND (name = %s OR left(name, %s) = %s)",
        (account, name, len(prefix), prefix),
    )
    return cursor.fetchall()


def rename(cursor, account, old, new):
    """@return: [(mailbox id, new name)] of the folder and its inferiors."""
    family = _family(cursor, account, old)
    if not any(n == old for _, n in family):
        raise KeyError(old)
    if new == old or new.startswith(old + names.SEPARATOR):
        raise ValueError(f"can't rename {old} into itself")
    moves = [(i, new + n[len(old):]) for i, n in family]
    for _, target in moves:
        if find(cursor, account, target) is not None:
            raise boundary.FolderExists(f"folder exists: {target}")
    for parent in names.parents(new):
        make(cursor, account, parent)
    renamed = {n: new + n[len(old):] for _, n in family}
    mailbox.lock(cursor, [i for i, _ in moves])
    cursor.executemany("UPDATE mailplat_mailboxes SET name = %s WHERE id = %s", [(n, i) for i, n in moves])
    # RFC 3501 6.3.5 leaves subscriptions alone; Dovecot moves them, and so do we.
    cursor.execute("SELECT name FROM mailplat_subscriptions WHERE account = %s", (account,))
    subscribed = [row[0] for row in cursor.fetchall() if row[0] in renamed]
    cursor.executemany(
        "UPDATE mailplat_subscriptions SET name = %s WHERE account = %s AND name = %s",
        [(renamed[n], account, n) for n in subscribed],
    )
    for i, _ in moves:
        mailbox.notify(cursor, i)
    return moves


def rename_inbox(cursor, account, new):
    """RFC 3501 6.3.5: INBOX's messages move to a new folder; INBOX stays, empty. @return: (inbox id, new id)."""
    if find(cursor, account, new) is not None:
        raise boundary.FolderExists(f"folder exists: {new}")
    for parent in names.parents(new):
        make(cursor, account, parent)
    target = make(cursor, account, new)
    inbox = find(cursor, account, names.INBOX)
    cursor.execute("SELECT uid FROM mailplat_messages WHERE mailbox = %s", (inbox,))
    uids = [row[0] for row in cursor.fetchall()]
    if uids:
        mailbox.transfer(cursor, inbox, target, uids, move=True)
    return inbox, target


def subscriptions(cursor, account):
    cursor.execute("SELECT name FROM mailplat_subscriptions WHERE account = %s ORDER BY name", (account,))
    return [row[0] for row in cursor.fetchall()]


def subscribe(cursor, account, name):
    cursor.execute(
        "INSERT INTO mailplat_subscriptions (account, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (account, name)
    )


def unsubscribe(cursor, account, name):
    cursor.execute("DELETE FROM mailplat_subscriptions WHERE account = %s AND name = %s", (account, name))


# --- the account ---------------------------------------------------------------------


@implementer(IMailAccount)
class SQLAccount:
    """A user's mailboxes; made by L{SQLStore.account}."""

    separator = names.SEPARATOR

    def __init__(self, store, address, account):
        self.store = store
        self.address = address
        self.id = account

    def __repr__(self):
        return f"<SQLAccount {self.address}>"

    def _run(self, what, function, *args):
        return self.store.db.run(what, function, self.id, *args)

    def folders(self):
        return self._run("listing folders", listing)

    def folder(self, name):
        try:
            name = names.check(name)
        except boundary.RefusedName:
            return defer.fail()
        return self.store._open_folder(self, name)

    def create(self, name, special_use=None):
        try:
            name = names.check(name)
            attribute = None
            if special_use is not None:
                attribute = SPECIAL_USE_ATTRIBUTES.get(special_use.lower())
                if attribute is None:
                    raise ValueError(f"unknown special use {special_use!r}")
        except ValueError:
            return defer.fail()
        return self._run("creating a folder", create, name, attribute)

    def delete(self, name):
        try:
            name = names.check(name)
        except boundary.RefusedName:
            return defer.fail()
        if names.is_inbox(name):
            return defer.fail(ValueError("INBOX can't be deleted"))
        return self._run("deleting a folder", delete, name).addCallback(self.store._forget_folder)

    def rename(self, old, new):
        try:
            old, new = names.check(old), names.check(new)
        except boundary.RefusedName:
            return defer.fail()
        if names.is_inbox(new):
            return defer.fail(boundary.FolderExists("folder exists: INBOX"))
        if names.is_inbox(old):
            d = self._run("renaming INBOX", rename_inbox, new)
            return d.addCallback(lambda ids: defer.gatherResults([self.store._changed(i) for i in ids]))
        return self._run("renaming a folder", rename, old, new).addCallback(self.store._renamed)

    def quota(self):
        """RFC 9208 GETQUOTAROOT: the user's usage and limits (one root for all folders)."""
        return self.store.quota(self.address)

    def subscriptions(self):
        return self._run("listing subscriptions", subscriptions)

    def subscribe(self, name):
        # RFC 3501 6.3.6: a name that does not exist may be subscribed, not one no folder can have.
        try:
            name = names.check(name)
        except boundary.RefusedName:
            return defer.fail()
        return self._run("subscribing", subscribe, name)

    def unsubscribe(self, name):
        return self._run("unsubscribing", unsubscribe, names.canonical(name))
