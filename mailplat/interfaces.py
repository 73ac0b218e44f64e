"""
The contract between mailplat's protocols and its backends: the public API
for plugin authors (see docs/plugins.md).

This module imports nothing from the server and does not install a reactor:
only zope.interface. It is safe to import from a plugin module, a test, or
a tool that never starts a server.

Rules every backend follows:

  - B{One calling convention.} Each method may return a plain value, a
    Deferred, or be written C{async def} (C{await} Deferreds inside): the
    server makes every call through C{mailplat.calls.call_backend}, which
    takes all three. Where this module says "Deferred firing with X", any
    of the three answering X will do.
  - B{Never block the reactor.} Every method that may touch a disk, a
    database or the network waits for it without holding the reactor
    thread: slow work goes to a thread pool (C{deferToThread}, C{adbapi},
    C{mailplat.realm.passwords.verify_later}) or is asynchronous I/O.
    The conformance kit fails a call, or a step of an C{async def}, that
    holds the reactor longer than 50 ms.
  - B{Errors are split the way SMTP splits them.} Fail with
    L{TemporaryFailure} for "try again later" (database down, disk full,
    a timeout: 4xx, the message stays with the sender or the queue) and
    L{PermanentFailure} for "this will never work" (no such user: 5xx, a
    bounce). Any other exception is treated as temporary and logged.
    When unsure, fail temporarily: a retry costs little, a wrong bounce
    cannot be taken back. The failure's text is logged in full and sent to
    the remote client only when raised with C{public=True}; otherwise the
    client gets a generic text with the enhanced status code.
  - B{Warnings.} Any backend (realm, store, delivery agent, check) may
    have a C{problems()} method returning a list of strings: `mailplat
    check-config` prints each as a warning.
  - B{Threads.} Methods are called from the reactor thread only, but many
    calls may be outstanding at once (one per session); Deferreds must fire
    in the reactor thread (C{deferToThread} and C{adbapi} do that for you).
    Objects are shared by every session of the process: keep per-session
    state out of them.

Additions to this module are additive only: existing methods keep their
meaning, so plugins written against an older version keep working.
"""

from zope.interface import Attribute, Interface


class MailplatError(Exception):
    """Base of the errors a backend may raise to a protocol."""


class TemporaryFailure(MailplatError):
    """
    The operation failed for a reason that may go away (disk full, database
    down). Protocols answer 4xx / NO and the client tries again.

    C{text} is logged in full. It reaches the remote client only when
    C{public} is true: leave it unset for texts with paths, host names or
    library errors in them, and the client is sent a generic text with
    the C{enhanced} status code instead.
    """

    def __init__(self, text="temporary failure", enhanced="4.3.0", public=None):
        super().__init__(text)
        self.text = text
        self.enhanced = enhanced
        # None: not said (the server's own texts are public; a plugin's are
        # not, see mailplat.calls); True or False: as the raiser decided.
        self.public = public


class PermanentFailure(MailplatError):
    """
    The operation can never succeed as asked (no such user, over quota for
    good). Protocols answer 5xx / NO. C{text} and C{public} as for
    L{TemporaryFailure}.
    """

    def __init__(self, text="permanent failure", enhanced="5.0.0", code=550, public=None):
        super().__init__(text)
        self.text = text
        self.enhanced = enhanced
        self.code = code
        self.public = public


class NoSuchUser(PermanentFailure):
    """The address names nobody this realm knows."""

    def __init__(self, address):
        # The client gave the address: saying it back leaks nothing.
        super().__init__(f"no such user: {address}", "5.1.1", 550, public=True)
        self.address = address


class QuotaExceeded(MailplatError):
    """
    Base of the two quota refusals (C{mailplat.quota}); IMAP answers either
    with C{NO [OVERQUOTA]} (RFC 9208 4.3).
    """


class OverQuota(QuotaExceeded, TemporaryFailure):
    """The mailbox is full for now (RFC 3463 4.2.2): SMTP 452, may fit after expunges."""

    code = 452

    def __init__(self, text="mailbox full"):
        TemporaryFailure.__init__(self, text, "4.2.2", public=True)


class OverQuotaForGood(QuotaExceeded, PermanentFailure):
    """The message is bigger than the whole quota (RFC 3463 5.2.2): SMTP 552."""

    def __init__(self, text="message larger than the mailbox quota"):
        PermanentFailure.__init__(self, text, "5.2.2", 552, public=True)


# --- realm -----------------------------------------------------------------


class IRealmBackend(Interface):
    """
    Who the users are. One address is one user; the address is their login
    name and their mailbox name.

    Used by every protocol: SMTP AUTH, IMAP and POP3 logins call
    L{check_password}; SMTP RCPT resolution calls L{lookup}. Both are on the
    hot path, so answer from memory, an index or a connection pool, and do
    slow password hashing off the reactor thread
    (C{mailplat.realm.passwords.verify_later}). Stored hashes use Dovecot's
    C{{SCHEME}hash} notation (C{mailplat.realm.passwords}: ARGON2ID,
    BLF-CRYPT, PLAIN). A backend that can't be reached (database down, file
    unreadable) fails with L{TemporaryFailure}: logins answer "try again",
    RCPT answers 451, and nobody is told "no such user" by mistake.
    Checked by C{mailplat.testing.RealmConformance}.
    """

    def lookup(address):
        """
        Find a user by address (case-insensitive in the domain).

        @return: Deferred firing with the canonical address (str) or None.
            Fails with L{TemporaryFailure} when the backend can't answer.
        """

    def check_password(address, password):
        """
        @param password: the password as given by the client (str).
        @return: Deferred firing with the canonical address when the password
            is right, None when the user is unknown or the password wrong.
            Fails with L{TemporaryFailure} when the backend can't answer.
        """

    def list_users():
        """@return: Deferred firing with a sorted list of addresses."""


class IRealmAdmin(Interface):
    """
    Optional: a realm whose users can be managed by `mailplat user`.

    Each method may return a plain value or raise (file backends), return
    a Deferred or be C{async def} (database backends); the CLI waits for
    any. Addresses are given lower-cased. A write is atomic (a file is
    replaced whole: temporary file, fsync, rename; a crash leaves the old
    file or the new one) and is seen by the realm's next lookup and
    password check, even one that had cached the users before.
    """

    def add_user(address, password_hash):
        """Add a user with an already hashed password (`{SCHEME}hash`).
        Fails with L{PermanentFailure} if the user exists."""

    def set_password(address, password_hash):
        """Replace a user's password hash. Fails with NoSuchUser."""

    def delete_user(address):
        """Remove a user. Fails with NoSuchUser."""


class IAliasSource(Interface):
    """
    Optional: where aliases come from, when not from the aliases file
    (C{mailplat.delivery.aliases.AliasesFile} has the same method). A realm
    backend that also keeps aliases (the C{sql} realm) provides it, and the
    address resolver can ask it instead of, or besides, the file.
    """

    def targets(address):
        """
        @param address: a lower-cased address.
        @return: the list of targets (lower-cased addresses) of the alias, or
            None when the address is no alias; or a Deferred firing with
            one of those (a database). Fails with L{TemporaryFailure} when
            the source can't answer (RCPT then gets 451, never 550).
        """


class IQuotaSource(Interface):
    """
    Optional: a realm that keeps per-user quota overrides (the passwd-file's
    C{userdb_quota_rule} extra fields, the sql realm's C{quota_storage} and
    C{quota_messages} columns). C{mailplat.quota} asks it once per check and
    applies the answer over the C{[quota]} defaults.
    """

    def quota_rules(address):
        """
        @param address: a lower-cased address.
        @return: a list of Dovecot quota rules (C{"*:storage=1G"},
            C{"*:messages=10000"}, C{"*:bytes=+100M"}), empty for "the
            defaults"; or a Deferred firing with one. Fails with
            L{TemporaryFailure} when the realm can't answer.
        """


class IMailUser(Interface):
    """
    The avatar a protocol gets from the portal when all it needs is to know
    who logged in (SMTP AUTH).
    """

    address = Attribute("The user's canonical address (str).")


# --- store -----------------------------------------------------------------


class IMessageSource(Interface):
    """
    A message's bytes, readable more than once: the body of a delivery.
    Lines end in LF; the store writes them as they are.
    """

    size = Attribute("Number of bytes.")

    def open():
        """@return: a new binary file object positioned at the start; it
        is seekable (C{seek}, C{tell}), so it can be read more than once."""


class IStoredMessage(Interface):
    """One message in a folder, as seen by the last scan."""

    key = Attribute(
        "Stable name of the message (str): the same across sessions and "
        "flag changes; POP3 uses it for UIDL."
    )
    size = Attribute("Size in octets with CRLF line endings (as POP3/IMAP count).")
    flags = Attribute("frozenset of IMAP system flags, e.g. {'\\\\Seen'}.")


class IFolder(Interface):
    """A folder of one user's mail (INBOX, Sent, ...)."""

    name = Attribute("The folder's name as IMAP shows it ('INBOX', 'Sent').")

    def messages():
        """
        Scan the folder.

        @return: Deferred firing with a list of L{IStoredMessage}, oldest
            first. The order is stable for a given set of messages.
        """

    def open_message(key):
        """
        @return: Deferred firing with a binary file of the message (LF line
            endings), or failing with KeyError if it has gone.
        """

    def remove(keys):
        """
        Delete messages for good. Keys already gone are ignored.
        @return: Deferred firing when the removal is on disk.
        """


class IMailStore(Interface):
    """Where mail lives."""

    def deliver(address, source, folder=None):
        """
        Store a message for a user, durably: when the Deferred fires, the
        message is on disk and survives a crash.

        @param address: canonical address of the recipient.
        @param source: an L{IMessageSource}, headers already prepended.
        @param folder: folder name, or None for INBOX. A folder that does not
            exist means INBOX.
        @return: Deferred firing with the new message's key. Fails with
            L{TemporaryFailure} (disk full, unwritable) or L{PermanentFailure}.

        Optional: a store whose deliver also takes a keyword argument
        C{flags} (a tuple of IMAP flags and keywords, e.g. C{("\\Seen",
        "$Work")}) stores them with the message; local delivery passes it
        only when a Sieve script set flags (imap4flags, RFC 5232), so a
        store without it keeps working (the copy is stored unflagged).
        """

    def inbox(address):
        """@return: Deferred firing with the user's INBOX as an L{IFolder}."""


class IFolderStore(IMailStore):
    """A store IMAP can serve: folders with UIDs, flags and notifications."""

    def account(address):
        """
        @return: Deferred firing with the user's L{IMailAccount} (created on
            first use, with the special-use folders Sent, Drafts, Trash,
            Junk and Archive).
        """


class QuotaReport:
    """
    A user's quota as C{IQuotaStore.quota} reports it: octets and messages
    used, and the limits (0: no limit). Octets count RFC822.SIZE (CRLF).
    """

    __slots__ = ("storage", "storage_limit", "messages", "messages_limit")

    def __init__(self, storage, storage_limit, messages, messages_limit):
        self.storage = storage
        self.storage_limit = storage_limit
        self.messages = messages
        self.messages_limit = messages_limit

    @property
    def limited(self):
        return bool(self.storage_limit or self.messages_limit)

    def __repr__(self):
        return f"<QuotaReport {self.storage}/{self.storage_limit} octets {self.messages}/{self.messages_limit} messages>"


class IQuotaStore(Interface):
    """
    Optional, beside L{IMailStore}: a store that keeps quotas
    (C{mailplat.quota.QuotaStore} wraps the built-in ones). The local
    delivery agent asks it at RCPT and before it writes any copy; the
    accounts it gives IMAP provide C{quota()} too (RFC 9208 GETQUOTAROOT).
    """

    def check_quota(address, size=None, count=1):
        """
        @param size: octets about to be added, or None for "is the user
            already over?" (SMTP RCPT).
        @return: Deferred firing with None when it fits; failing with
            L{OverQuota} (full for now) or L{OverQuotaForGood} (bigger than
            the whole quota).
        """

    def quota(address):
        """@return: Deferred firing with a L{QuotaReport}."""


# --- IMAP view of a store ----------------------------------------------------


class IMessageInfo(Interface):
    """One message as a folder's index knows it (no need to open the file)."""

    uid = Attribute("IMAP UID (int), strictly ascending in arrival order.")
    key = Attribute("The store's stable name for the message (str).")
    size = Attribute("RFC822.SIZE: octets with CRLF line ends.")
    flags = Attribute("frozenset of flags and keywords ('\\Seen', '$Junk'); never \\Recent.")
    internaldate = Attribute("Arrival time, seconds since the epoch (float).")
    # Only in folders that provide IModSeqFolder (added in a later version):
    # modseq = the message's mod-sequence (int >= 1, RFC 7162 3.1).
    # Optional too: savedate = when the message was saved in this folder
    # (seconds since the epoch, RFC 8514), None or absent where not kept.


class FolderEvent:
    """
    A change to a folder, published to every session that watches it.

    kind: 'exists' (new messages), 'flags' (flags changed), 'expunge'
    (messages removed); uids: the UIDs concerned; origin: the object that
    made the change (a session ignores its own), or None for the store or
    an outside program.
    """

    __slots__ = ("kind", "uids", "origin")

    def __init__(self, kind, uids, origin=None):
        self.kind = kind
        self.uids = tuple(uids)
        self.origin = origin

    def __repr__(self):
        return f"<FolderEvent {self.kind} {self.uids}>"


class IMailFolder(Interface):
    """
    A folder with IMAP semantics: UIDs, UIDVALIDITY, flags, a metadata
    cache, and change notification. One object per (user, folder) per
    process, shared by every session that opens it.
    """

    name = Attribute("The folder's IMAP name ('INBOX', 'Archive.2025').")
    uidvalidity = Attribute("int; changes only if the folder's UID list is lost.")
    uidnext = Attribute("int; the UID the next message will get.")

    def sync():
        """
        Bring the view up to date with the disk: new messages (delivered,
        or dropped in by other programs) get the next UIDs, vanished ones
        are dropped, flags changed by other programs are re-read. Cheap when
        nothing changed. Publishes the differences as FolderEvents.

        @return: Deferred firing with the list of L{IMessageInfo}, by UID.
        """

    def messages():
        """The list of L{IMessageInfo} as of the last sync, by UID (no I/O)."""

    def open(uid):
        """
        @return: Deferred firing with a binary file of the message as stored
            (LF line ends); fails with KeyError if it is gone. A folder that
            can open many messages in one trip to its thread pool also
            provides L{IBatchOpen}; FETCH and SEARCH then use that.
        """

    def cached(uid, field):
        """A value the protocol computed once for this message (e.g.
        'envelope', 'bodystructure'), kept in the folder's index; None if
        absent. Values are JSON-serialisable."""

    def cache(uid, field, value):
        """Remember `value` for `cached`; written to the index lazily."""

    def store_flags(uids, flags, mode, origin=None):
        """
        Change flags: mode '+' adds, '-' removes, '=' replaces.
        @return: Deferred firing with {uid: new frozenset of flags} for the
            messages that still exist.
        """

    def append(source, flags=(), internaldate=None, origin=None):
        """
        Add a message (IMAP APPEND, a copy). Durable when the Deferred fires.
        @param source: an L{IMessageSource}.
        @return: Deferred firing with the new UID.
        """

    def copy_to(uids, target, origin=None):
        """@return: Deferred firing with [(source uid, new uid in target)]."""

    def move_to(uids, target, origin=None):
        """Copy then remove (RFC 6851). @return: as L{copy_to}."""

    def expunge(uids=None, origin=None):
        """
        Remove the messages flagged \\Deleted (only those among `uids` when
        given, for UID EXPUNGE). @return: Deferred firing with the removed UIDs.
        """

    def claim_recent(uids):
        """
        RFC 3501 \\Recent: the first session to see a message is told it is
        recent; later ones are not. @return: the subset of `uids` that this
        call is the first to claim.
        """

    def recent_count():
        """
        How many messages of L{messages} no session has claimed yet
        (L{claim_recent}), without claiming them: STATUS RECENT (RFC 3501
        6.3.10) and EXAMINE (6.3.2, which must not take \\Recent away).
        Claims go in arrival order (as Dovecot's first_recent_uid), so the
        unclaimed messages are the last N of L{messages}. No I/O.

        @return: int. (Added in a later version: the IMAP server answers 0
            for a folder without it.)
        """

    def subscribe(callback):
        """
        Call `callback(event)` with each L{FolderEvent}; also makes the
        folder watch the disk for outside changes while anyone listens.
        @return: a no-argument callable that unsubscribes.
        """


class IBatchOpen(Interface):
    """
    Optional, beside L{IMailFolder}: a folder that opens many messages in
    one go. A FETCH or SEARCH that needs message text on a large folder
    asks for a batch at a time (about 200) instead of one L{IMailFolder.open}
    per message, which costs a trip to the thread pool each. A folder that
    does not provide this interface is read with C{open}, one by one.
    """

    def open_many(uids):
        """
        @param uids: a list of UIDs.
        @return: Deferred firing with a list as long as `uids`, in the same
            order: for each, a binary file of the message as stored (LF line
            ends; the caller reads and closes it), or None when the message
            is gone or can't be opened. Fails (L{TemporaryFailure}) only
            when the folder can't be read at all.
        """


class IModSeqFolder(Interface):
    """
    Optional, beside L{IMailFolder}: a folder that keeps RFC 7162
    mod-sequences (CONDSTORE, QRESYNC), durably. Every change to the folder
    - a flag change, new messages, an expunge, by a session or found on disk
    - gets a mod-sequence greater than any given before, also across
    restarts and crashes; the messages it touched carry it as
    C{IMessageInfo.modseq}. A folder without this interface gets
    C{[NOMODSEQ]} and no CONDSTORE commands from the IMAP server.
    Checked by C{mailplat.testing.StoreConformance} when provided.
    """

    highestmodseq = Attribute(
        "int >= 1: the greatest mod-sequence given in the folder (HIGHESTMODSEQ, "
        "RFC 7162 3.1.2.1, 3.1.7); raised by expunges too. No I/O."
    )

    def store_flags_unchanged_since(uids, flags, mode, modseq, origin=None):
        """
        STORE with UNCHANGEDSINCE (RFC 7162 3.1.3): L{IMailFolder.store_flags}
        for the messages whose modseq is at most `modseq`; the others are
        left as they are. The test and the change happen in one step: no
        other change to the folder comes between them.

        @return: Deferred firing with ({uid: new frozenset of flags} as
            store_flags gives, sorted list of the UIDs that failed the test).
        """

    def vanished(modseq):
        """
        The UIDs expunged at a mod-sequence greater than `modseq` (QRESYNC's
        VANISHED, RFC 7162 3.2.5, 3.2.6), ascending; or None when the folder
        no longer remembers expunges that old (the IMAP server then reports
        every UID the client knows that is not in the folder). How long
        expunges are remembered is the store's to say (docs). No I/O.
        """


class IMailAccount(Interface):
    """One user's folders, as IMAP sees them."""

    address = Attribute("The user's canonical address.")
    separator = Attribute("Hierarchy separator ('.' for Maildir++).")

    def folders():
        """
        @return: Deferred firing with [(name, attributes)], attributes a
            frozenset such as {'\\HasNoChildren', '\\Sent'} (RFC 6154).
        """

    def folder(name):
        """@return: Deferred firing with the L{IMailFolder}; fails with
        KeyError if there is no such folder."""

    def create(name, special_use=None):
        """Create a folder (and missing parents). Fails with ValueError if
        it exists or the name is not allowed."""

    def delete(name):
        """Delete a folder. Fails with KeyError / ValueError (INBOX)."""

    def rename(old, new):
        """Rename a folder; renaming INBOX moves its messages (RFC 3501 6.3.5)."""

    def subscriptions():
        """@return: Deferred firing with the subscribed folder names."""

    def subscribe(name):
        """Add to the subscriptions."""

    def unsubscribe(name):
        """Remove from the subscriptions."""


# --- delivery --------------------------------------------------------------


class Envelope:
    """
    What the SMTP session knows about a message besides its bytes.

    Plain data so that backends in other processes or languages could be fed
    the same facts.
    """

    def __init__(
        self,
        sender,
        helo="",
        client_address="",
        client_name="",
        protocol="ESMTP",
        authenticated_as=None,
        received_by="",
        folder=None,
        require_tls=False,
        received_at=None,
    ):
        self.sender = sender  # str, "" for the null sender <>
        self.helo = helo
        self.client_address = client_address
        self.client_name = client_name
        self.protocol = protocol  # RFC 3848: ESMTP, ESMTPS, ESMTPA, ESMTPSA
        self.authenticated_as = authenticated_as
        self.received_by = received_by  # our hostname
        # A folder every local copy should go to instead of INBOX, set by a
        # check's Verdict.folder() before deliver() (e.g. "Junk"); None for
        # the usual place. A store with no such folder uses INBOX.
        self.folder = folder
        # RFC 8689: MAIL FROM had REQUIRETLS; the relay sends such mail only
        # over verified TLS to a next hop that offers REQUIRETLS too.
        self.require_tls = require_tls
        # time.time() when the message was received (end of DATA): the
        # `delay` of its `delivered` lines counts from here.
        self.received_at = received_at
        # The id of the `accepted` line and the 250 answer (set at MAIL).
        self.queue_id = None
        # RFC 1870: MAIL FROM's SIZE= (octets) when the client gave it, else None.
        self.size_hint = None
        # Filters' scores at end of data, {"spam"|"virus": (score, threshold)},
        # noted by mailplat.checks.record_score for Sieve's spamtest/virustest.
        self.scores = {}

    def __repr__(self):
        return f"<Envelope from={self.sender!r} via={self.protocol}>"


class DeliveryOutcome:
    """
    One recipient's result of L{IDeliveryTransaction.deliver}, for the
    fan-out's `delivered` / `delivery-failed` lines (docs/operating.md).

    @param recipient: the final mailbox address (str).
    @param mailbox: where the copy went: the folder ("INBOX", "Junk") or,
        for an agent that hands mail on, the server it went to.
    @param error: None when delivered, else the L{TemporaryFailure} or
        L{PermanentFailure} this recipient got.
    """

    __slots__ = ("recipient", "mailbox", "error")

    def __init__(self, recipient, mailbox=None, error=None):
        self.recipient = recipient
        self.mailbox = mailbox
        self.error = error

    @property
    def delivered(self):
        return self.error is None

    def __repr__(self):
        return f"<DeliveryOutcome {self.recipient} {'delivered' if self.delivered else self.error!r}>"


class IDeliveryAgent(Interface):
    """
    What happens to an accepted message. A delivery is a transaction that
    maps one to one onto MAIL / RCPT / DATA / end-of-data.

    The local agent (C{[delivery] local}) is driven by the fan-out, which
    has already expanded aliases: each address given to
    L{IDeliveryTransaction.add_recipient} is a final mailbox (a user of the
    realm, maybe with a plus tag naming a folder, or postmaster@). The
    server answers 250 to the client only after L{IDeliveryTransaction.deliver}
    fired: what it promises must be durable by then. One agent serves every
    SMTP session at once; keep per-message state in the transaction.
    Checked by C{mailplat.testing.DeliveryConformance}.
    """

    def start(envelope):
        """
        Begin a transaction for one message (SMTP MAIL FROM).

        @param envelope: an L{Envelope}.
        @return: an L{IDeliveryTransaction} (or a Deferred of one); fail with
            L{PermanentFailure} / L{TemporaryFailure} to refuse the sender.
        """


class IDeliveryTransaction(Interface):
    """One message on its way; see L{IDeliveryAgent.start}."""

    def add_recipient(address):
        """
        Accept or refuse one recipient (SMTP RCPT TO). Each recipient gets
        its own answer.

        @return: Deferred firing with None when accepted; failing with
            L{PermanentFailure} (e.g. L{NoSuchUser}) or L{TemporaryFailure}.
        """

    def deliver(source):
        """
        Hand over the message (end of DATA) and make it durable.

        @param source: an L{IMessageSource} with the message as received
            (LF line endings) with the server's trace header on top: its
            C{Received:} field (and on submission C{Date:} / C{Message-ID:}
            when the client left them out). C{Return-Path:} is not there
            yet: a local agent adds it at final delivery (RFC 5321 4.4).
        @return: Deferred firing when every accepted recipient's copy is on
            disk (or safely queued); only then may the server answer 250.
            Fails with L{TemporaryFailure} / L{PermanentFailure}; on failure
            nothing of this transaction is left delivered (an agent that
            hands mail to another server and cannot take a copy back, as
            LMTP, fails temporarily and says so in its docs: a duplicate on
            the client's retry, never a loss).
            A local agent files every copy into C{envelope.folder} when a
            check set one (a store without that folder uses INBOX).

            Optional: an agent that sets C{outcomes} on the transaction, a
            list of L{DeliveryOutcome} (one per recipient, filled before
            deliver's Deferred fires or fails), gets one log line per
            recipient with its mailbox and reason; without it the fan-out
            logs the transaction's result for every recipient.
        """

    def abort():
        """Forget the transaction (RSET, a dropped connection)."""


class IRelayQueue(Interface):
    """
    Where mail for remote recipients goes: a persistent queue that carries
    it to other servers, retries, and bounces (RFC 5321 4.5.4, RFC 3464).
    """

    def enqueue(envelope, recipients, source):
        """
        Accept a message for remote delivery.

        @param envelope: the L{Envelope} (sender, client, protocol).
        @param recipients: list of remote addresses (str).
        @param source: an L{IMessageSource} with the message as it should
            leave (trace headers already added, LF line ends).
        @return: Deferred firing with the queue id (str) once the message and
            its envelope are on disk (fsync'd); fails with L{TemporaryFailure}.
        """

    def cancel(queue_id):
        """
        Take back a message enqueued moments ago, before any attempt (the
        rest of its SMTP transaction failed). @return: Deferred.
        """


# --- plugins ---------------------------------------------------------------


class IBackendFactory(Interface):
    """
    What every plugin object provides: it makes a backend from its config
    section. Plugins are found in the modules of the top-level `plugins`
    package and of the entry-point group `mailplat.plugins`, and chosen by
    `name` in the config (C{mailplat.plugin}).
    """

    name = Attribute("The name the config uses, e.g. 'maildir'.")
    description = Attribute("One line saying what it is for.")

    def from_config(section, context):
        """
        Build the backend.

        @param section: the config table (dict) of this backend.
        @param context: a L{BackendContext}.
        @raise ValueError: with a message naming the bad key.
        """


class IRealmFactory(IBackendFactory):
    """A plugin making an L{IRealmBackend}."""


class IStoreFactory(IBackendFactory):
    """A plugin making an L{IMailStore}."""


class IDeliveryFactory(IBackendFactory):
    """A plugin making an L{IDeliveryAgent} for local mail."""


class IRelayQueueFactory(IBackendFactory):
    """
    A plugin making the L{IRelayQueue} for remote mail (C{[relay] queue =
    "NAME"}, default the built-in "spool"). Its section is the checked
    C{[relay]} table, its own keys in C{[relay.NAME]}; C{context.delivery}
    is the local agent (for bounces to local senders) and C{context.dns}
    the server's resolver. A queue that also provides
    C{twisted.application.service.IService} is started before the
    listeners and stopped after them. Checked by
    C{mailplat.testing.RelayConformance}.
    """


class BackendContext:
    """What a plugin may need from the rest of the server when it is built."""

    def __init__(self, config, realm=None, store=None, resolver=None):
        self.config = config  # mailplat.config.Config
        self.realm = realm  # IRealmBackend, set once built
        self.store = store  # IMailStore, set once built
        # mailplat.delivery.addresses.AddressResolver: aliases, plus tags,
        # users; set once the realm is built.
        self.resolver = resolver
        # The local IDeliveryAgent, set once built (a relay queue sends
        # bounces to local senders through it).
        self.delivery = None

    @property
    def state_dir(self):
        return self.config.state_dir


# --- checks (SMTP stage filters) ---------------------------------------------


class CheckSession:
    """
    What a check may know about the SMTP session it judges: plain data the
    server fills in as the session goes on. C{state} is a dict a check may
    use to remember things between stages of one session (key it by the
    check's name).
    """

    def __init__(self, client_address="", client_name="", policy="mx", secure=False):
        self.client_address = client_address
        self.client_name = client_name  # reverse DNS name, "" when unknown
        self.policy = policy  # "mx", "submission" or "smtps"
        self.secure = secure  # TLS in use
        self.helo = None  # str once HELO/EHLO was given
        self.authenticated_as = None  # the SMTP AUTH user's address
        self.sender = None  # str ("" for <>) once MAIL was accepted
        self.size_hint = None  # MAIL FROM's SIZE= value, when given
        self.recipients = []  # accepted RCPT addresses, in order
        self.state = {}

    def __repr__(self):
        return f"<CheckSession {self.client_address} helo={self.helo!r} from={self.sender!r}>"


class Verdict:
    """
    A check's answer. Build one with the class methods; a check that has
    no opinion returns None (or L{Verdict.next}) and the next check runs.

      - C{accept()}: the stage passes; later checks of this stage are skipped.
      - C{reject(text, code=550, enhanced="5.7.1")}: 5xx for this command.
      - C{tempfail(text, code=451, enhanced="4.7.1")}: 4xx for this command.
      - C{folder(name)}: accept, but file every local copy into folder
        C{name} (e.g. "Junk"); later checks still run and may reject.
    """

    NEXT, ACCEPT, REJECT, TEMPFAIL, FOLDER = "next", "accept", "reject", "tempfail", "folder"

    __slots__ = ("action", "code", "enhanced", "text", "folder_name", "check")

    def __init__(self, action, code=250, enhanced="2.0.0", text="OK", folder_name=None, check=None):
        self.action = action
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.folder_name = folder_name
        self.check = check  # the name of the check that decided, set by the runner

    @classmethod
    def next(cls):
        return cls(cls.NEXT)

    @classmethod
    def accept(cls, text="OK"):
        return cls(cls.ACCEPT, text=text)

    @classmethod
    def reject(cls, text, code=550, enhanced="5.7.1"):
        if not 500 <= code <= 599:
            raise ValueError(f"a reject needs a 5xx code, not {code}")
        return cls(cls.REJECT, code, enhanced, text)

    @classmethod
    def tempfail(cls, text, code=451, enhanced="4.7.1"):
        if not 400 <= code <= 499:
            raise ValueError(f"a tempfail needs a 4xx code, not {code}")
        return cls(cls.TEMPFAIL, code, enhanced, text)

    @classmethod
    def folder(cls, name, text="OK"):
        return cls(cls.FOLDER, text=text, folder_name=name)

    @property
    def refused(self):
        """True for reject and tempfail: the command gets this verdict's reply."""
        return self.action in (self.REJECT, self.TEMPFAIL)

    def __repr__(self):
        extra = f" {self.code} {self.text!r}" if self.refused else (f" {self.folder_name}" if self.folder_name else "")
        return f"<Verdict {self.action}{extra}>"


class ICheck(Interface):
    """
    A filter on the SMTP stages (a DNSBL, a spam score, a size rule). The
    server calls one method per stage, for each enabled check in the order
    of C{[checks] enabled}, through C{mailplat.checks.run_stage}.

    Each method returns a L{Verdict}, None (no opinion), or a Deferred of
    either; it must not block (DNS lookups through C{twisted.names}, a
    scanner through a client endpoint). Raising or failing counts as
    "tempfail" (451) unless the check's section says
    C{on_error = "continue"}; so does taking longer than its C{timeout}.
    A L{PermanentFailure} / L{TemporaryFailure} raised by a check becomes
    a reject / tempfail with its code and text.

    Subclass C{mailplat.checks.Check}: it answers None for every stage, so
    a check only writes the stages it cares about.
    """

    name = Attribute("The check's name as the config enables it (str).")

    def connect(session):
        """A client connected (before the 220 greeting).
        @param session: the L{CheckSession}."""

    def helo(session, hostname):
        """HELO/EHLO with its argument (str)."""

    def mail(session, sender):
        """MAIL FROM with the sender (str, "" for <>)."""

    def rcpt(session, recipient):
        """RCPT TO with one recipient (str); a reject refuses that one only."""

    def data(session, envelope, source):
        """
        End of data, before delivery.

        @param envelope: the L{Envelope} (sender, client, protocol).
        @param source: an L{IMessageSource}: the message as received (LF
            line ends), with the server's trace header on top.
        """


class ICheckFactory(IBackendFactory):
    """A plugin making an L{ICheck} from its C{[checks.<name>]} section."""
