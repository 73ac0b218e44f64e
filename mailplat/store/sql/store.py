"""
SQLStore: users' mail in PostgreSQL (IMailStore for SMTP delivery and
POP3, IFolderStore for IMAP). Any number of mailplat nodes may share one
database: UIDs, mod-sequences and flags live in the rows, and each node's
folder views catch up by mod-sequence (folder.py).

Within a process there is one L{SQLMailFolder} per mailbox (a weak
registry), as the IMAP server expects; writers here sync it at once, and
the listener (listener.py) syncs it when another node's commit is
announced by NOTIFY.

Durability: deliver, append, copy, move, expunge and STORE fire after
their transaction's COMMIT (database.py), so the 250 and the IMAP OK come
after the data is in PostgreSQL's WAL.
"""

import time
import weakref

from twisted.internet import defer, reactor, task, threads
from twisted.logger import Logger
from zope.interface import alsoProvides, implementer

from mailplat.interfaces import IFolderStore, IQuotaStore, QuotaReport
from mailplat.store.sql import account as accounts
from mailplat.store.sql import flags as flagset
from mailplat.store.sql import delivery, mailbox, names
from mailplat.store.sql.blobs import PostgresBlobStore, digest
from mailplat.store.sql.folder import SQLMailFolder, crlf_size, read_source
from mailplat.store.sql.info import message_key
from mailplat.store.sql.inbox import SQLInbox
from mailplat.store.sql.listener import Listener

log = Logger()

# Cached values and \Recent claims are written this long after the first unwritten one.
WRITE_DELAY = 1.0
# Bodies no message refers to are looked for this often (seconds; blobs.py).
COLLECT_INTERVAL = 3600.0


def normalize(address):
    return address.strip().lower()


def _wanted(folder):
    """The mailbox name a delivery to `folder` asks for (None: INBOX); None for a name no mailbox has."""
    if not folder:
        return names.INBOX
    try:
        return names.check(folder)
    except ValueError:
        return None


@implementer(IFolderStore)
class SQLStore:
    """
    @param database: a L{StoreDatabase}.
    @param blobs: the L{IBlobStore} for bodies (default: in PostgreSQL).
    @param listen: keep a connection LISTENing for other nodes' changes
        (listener.py), so that IDLE sessions here hear of them.
    @param quotas: a L{SQLQuotas} when [quota] or the realm sets limits:
        the store then provides IQuotaStore, and APPEND and COPY are checked.
    @param indexer: optional `indexer(data) -> {field: value}`, run once
        per new body at delivery (in a pool thread): the values the IMAP
        layer would otherwise compute at the first FETCH (envelope, body
        structure), kept per body for every copy.
    """

    def __init__(self, database, blobs=None, indexer=None, listen=True, quotas=None, clock=reactor):
        self.db = database
        self.quotas = quotas
        if quotas is not None:
            alsoProvides(self, IQuotaStore)
        self.blobs = blobs if blobs is not None else PostgresBlobStore()
        self.indexer = indexer
        self._clock = clock
        self._folders = weakref.WeakValueDictionary()  # mailbox id -> SQLMailFolder
        self._watched = set()  # folders with subscribers (strong refs)
        self._index_pending = {}  # body hash -> {field: value}
        self._claims_pending = {}  # mailbox id -> first unclaimed UID
        self._held = set()  # folders whose pending state is not written yet
        self._account_ids = {}  # address -> account id
        self._targets = {}  # (address, folder) -> (mailbox id, name) deliveries go to
        self._indexed = {}  # body hashes indexed by this process (pool threads write it)
        self._mailbox_ids = {}  # (account id, name) -> mailbox id, checked by each sync
        self._write_call = None
        self._writing = None
        self._listen = listen
        self.listener = None  # started when the first session subscribes to a folder
        self._collector = task.LoopingCall(self._collect)
        self._collector.clock = clock
        self._collector.start(COLLECT_INTERVAL, now=False)

    def __repr__(self):
        return f"<SQLStore {self.db.where}>"

    # --- bodies ---------------------------------------------------------------------

    def _index_values(self, data):
        """In a pool thread: the indexer's values for a body not indexed by this process yet, or None."""
        if self.indexer is None:
            return None
        key = digest(data)
        if key in self._indexed:
            return None  # another recipient of the same message, or a copy
        try:
            fields = self.indexer(data)
        except Exception:
            log.failure("sql store: indexing a message")
            return None
        if len(self._indexed) > 10000:
            self._indexed.clear()
        self._indexed[key] = True
        return fields

    def _put_body(self, cursor, data, fields=None):
        """In a pool thread: keep the body, and its index values (`fields`, else L{_index_values})."""
        key = self.blobs.put(cursor, data)
        if fields is None:
            fields = self._index_values(data)
        if fields:
            mailbox.save_index(cursor, {key: fields})
        return key

    def _collect(self):
        d = self.collect_bodies()
        d.addCallback(lambda n: log.info("sql store: {n} unused bodies dropped", n=n) if n else None)
        return d.addErrback(lambda f: log.failure("sql store: collecting bodies", f))

    def collect_bodies(self, grace_seconds=None):
        """Drop bodies no message refers to (blobs.py); @return: Deferred firing with how many."""
        args = () if grace_seconds is None else (grace_seconds,)
        return self.db.run("collecting bodies", self.blobs.collect, *args)

    # --- IMailStore ------------------------------------------------------------------

    def deliver(self, address, source, folder=None, flags=()):
        """
        IMailStore.deliver; `flags` (optional): what a Sieve script set
        (imap4flags, RFC 5232). One pipelined round trip when the target
        mailbox is known (delivery.py), else a look-up first.
        """
        address = normalize(address)
        flags = flagset.normalise(flags)

        def transaction(cursor):
            data = read_source(source)
            size = crlf_size(data)
            fields = self._index_values(data)
            known = self._targets.get((address, folder))
            if known is not None:
                added = delivery.add_one(cursor, self.blobs, known, data, size, flags, fields)
                if added is not None:
                    return known[0], message_key(*added)
                self._targets.pop((address, folder), None)  # deleted or renamed meanwhile
            # The first delivery to this target in this process: found (or
            # made) and locked as every other change is (mailbox.add).
            body = self._put_body(cursor, data, fields)
            _, target = accounts.deliver_target(cursor, address, folder)
            validity, [uid] = mailbox.add(cursor, target, [(body, size, flags, time.time())])
            cursor.execute("SELECT name FROM mailplat_mailboxes WHERE id = %s", (target,))
            name = cursor.fetchone()[0]
            if name == _wanted(folder):  # not a fileinto that fell back to INBOX
                if len(self._targets) > 100000:
                    self._targets.clear()
                self._targets[(address, folder)] = (target, name)
            return target, message_key(validity, uid)

        def published(result):
            target, key = result
            # IMAP sessions of this node hear of it now; other nodes by NOTIFY.
            return self._changed(target).addCallback(lambda _: key)

        return self.db.run("delivering", transaction).addCallback(published)

    def inbox(self, address):
        return defer.succeed(SQLInbox(self, normalize(address)))

    # --- IFolderStore --------------------------------------------------------------------

    def account(self, address):
        address = normalize(address)
        known = self._account_ids.get(address)
        if known is not None:
            # An account is never deleted while the server runs: one query per user and process.
            return defer.succeed(accounts.SQLAccount(self, address, known))

        def made(account):
            if len(self._account_ids) > 100000:
                self._account_ids.clear()
            self._account_ids[address] = account
            return accounts.SQLAccount(self, address, account)

        return self.db.run("opening an account", accounts.account_id, address).addCallback(made)

    # --- IQuotaStore (when quotas are on) ------------------------------------------------

    def check_quota(self, address, size=None, count=1):
        if self.quotas is None:
            return defer.succeed(None)
        return self.quotas.check_quota(normalize(address), size, count)

    def quota(self, address):
        if self.quotas is None:
            return defer.succeed(QuotaReport(0, 0, 0, 0))
        return self.quotas.quota(normalize(address))

    def _limits(self, address):
        """Deferred Limits of `address`, or None without quotas."""
        return defer.succeed(None) if self.quotas is None else self.quotas.limits(address)

    # --- the folder registry ---------------------------------------------------------------

    def _open_folder(self, account, name):
        """The one folder object of mailbox `name`, synced; KeyError if there is none."""
        cached = self._mailbox_ids.get((account.id, name))
        if cached is not None:
            # One query instead of two; the sync says whether the id still has this name.
            def checked(folder):
                if folder.name != name:
                    raise KeyError(name)  # renamed meanwhile (on another node)
                return folder

            d = self._sync_folder(account, cached, name).addCallback(checked)
            return d.addErrback(self._look_up_again, account, name)
        return self._look_up(account, name)

    def _look_up_again(self, failure, account, name):
        failure.trap(KeyError)
        self._mailbox_ids.pop((account.id, name), None)
        return self._look_up(account, name)

    def _look_up(self, account, name):
        def found(mailbox_id):
            if mailbox_id is None:
                raise KeyError(name)
            if len(self._mailbox_ids) > 100000:
                self._mailbox_ids.clear()
            self._mailbox_ids[(account.id, name)] = mailbox_id
            return self._sync_folder(account, mailbox_id, name)

        return self.db.run("opening a folder", accounts.find, account.id, name).addCallback(found)

    def _sync_folder(self, account, mailbox_id, name):
        folder = self._folders.get(mailbox_id)
        if folder is None or folder._gone:
            folder = SQLMailFolder(self, mailbox_id, name, account.address)
            self._folders[mailbox_id] = folder
        return folder.sync().addCallback(lambda _: folder)

    def _changed(self, mailbox_id):
        """A mailbox changed (here or on another node): sync its folder if open. Never fails."""
        folder = self._folders.get(mailbox_id)
        if folder is None or not folder._loaded or folder._gone:
            return defer.succeed(None)
        d = folder.sync()
        d.addErrback(lambda f: None if f.check(KeyError) else log.failure("syncing {folder}", f, folder=folder))
        return d

    def _forget_folder(self, mailbox_id):
        folder = self._folders.pop(mailbox_id, None)
        if folder is not None:
            self._watched.discard(folder)
            folder._forget()

    def _renamed(self, moves):
        for mailbox_id, name in moves:
            folder = self._folders.get(mailbox_id)
            if folder is not None:
                folder.name = name

    def _resync(self):
        """After the listener (re)connected: catch up every open folder by modseq."""
        for mailbox_id in list(self._folders.keys()):
            self._changed(mailbox_id)

    def _watch(self, folder):
        self._watched.add(folder)
        if self._listen and self.listener is None:
            self.listener = Listener(self.db.dsn, self._changed, self._resync, self.db.where)
            self.listener.start()

    def _unwatch(self, folder):
        self._watched.discard(folder)

    # --- lazily written state: cached values, \Recent claims --------------------------------

    # A folder with unwritten state is held (strongly) until it is written:
    # a folder object made again meanwhile would load the older state.

    def _queue_index(self, folder, body, field, value):
        self._index_pending.setdefault(body, {})[field] = value
        self._held.add(folder)
        self._schedule_write()

    def _queue_claim(self, folder, first_recent):
        mailbox_id = folder.id
        self._claims_pending[mailbox_id] = max(first_recent, self._claims_pending.get(mailbox_id, 0))
        self._held.add(folder)
        self._schedule_write()

    def _schedule_write(self):
        if self._write_call is None or not self._write_call.active():
            self._write_call = self._clock.callLater(WRITE_DELAY, self.write_pending)

    def write_pending(self):
        """Write the cached values and \\Recent claims not written yet; @return: Deferred."""
        if self._write_call is not None and self._write_call.active():
            self._write_call.cancel()
        self._write_call = None
        previous = self._writing or defer.succeed(None)
        index, self._index_pending = self._index_pending, {}
        claims, self._claims_pending = self._claims_pending, {}
        held, self._held = self._held, set()
        if not index and not claims:
            return previous

        def transaction(cursor):
            if claims:
                mailbox.save_claims(cursor, claims)
            if index:
                mailbox.save_index(cursor, index)

        def write(_):
            d = self.db.run("writing the index", transaction)
            d.addErrback(lambda f: log.failure("sql store: writing cached values", f))
            return d.addBoth(lambda _: held.clear())

        self._writing = d = previous.addCallback(write)
        return d

    # --- lifecycle ------------------------------------------------------------------------

    def close(self):
        """Write what is pending, stop listening, close the pool (server stop)."""
        listener, self.listener = self.listener, None
        if self._collector.running:
            self._collector.stop()
        d = self.write_pending()
        if listener is not None:
            d.addCallback(lambda _: threads.deferToThread(listener.stop))
        return d.addCallback(lambda _: self.db.close())
