"""
The contract between mailplat's protocols and its backends.

This module is what a plugin author codes against. It imports nothing from
the server: only zope.interface. Every method that may touch a disk, a
database or the network returns a Deferred (or a plain value, which callers
wrap with maybeDeferred); none may block the reactor for long.

Errors are split the way SMTP splits them: a L{TemporaryFailure} means
"try again later" (4xx, the message stays with the sender or the queue), a
L{PermanentFailure} means "this will never work" (5xx, a bounce).
"""

from zope.interface import Attribute, Interface


class MailplatError(Exception):
    """Base of the errors a backend may raise to a protocol."""


class TemporaryFailure(MailplatError):
    """
    The operation failed for a reason that may go away (disk full, database
    down). Protocols answer 4xx / NO and the client tries again.
    """

    def __init__(self, text="temporary failure", enhanced="4.3.0"):
        super().__init__(text)
        self.text = text
        self.enhanced = enhanced


class PermanentFailure(MailplatError):
    """
    The operation can never succeed as asked (no such user, over quota for
    good). Protocols answer 5xx / NO.
    """

    def __init__(self, text="permanent failure", enhanced="5.0.0", code=550):
        super().__init__(text)
        self.text = text
        self.enhanced = enhanced
        self.code = code


class NoSuchUser(PermanentFailure):
    """The address names nobody this realm knows."""

    def __init__(self, address):
        super().__init__(f"no such user: {address}", "5.1.1", 550)
        self.address = address


# --- realm -----------------------------------------------------------------


class IRealmBackend(Interface):
    """
    Who the users are. One address is one user; the address is their login
    name and their mailbox name.
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
    """Optional: a realm whose users can be managed by `mailplat user`."""

    def add_user(address, password_hash):
        """Add a user with an already hashed password (`{SCHEME}hash`)."""

    def set_password(address, password_hash):
        """Replace a user's password hash. Fails with NoSuchUser."""

    def delete_user(address):
        """Remove a user. Fails with NoSuchUser."""


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
        """@return: a new binary file object positioned at the start."""


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
        """

    def inbox(address):
        """@return: Deferred firing with the user's INBOX as an L{IFolder}."""


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
    ):
        self.sender = sender  # str, "" for the null sender <>
        self.helo = helo
        self.client_address = client_address
        self.client_name = client_name
        self.protocol = protocol  # RFC 3848: ESMTP, ESMTPS, ESMTPA, ESMTPSA
        self.authenticated_as = authenticated_as
        self.received_by = received_by  # our hostname

    def __repr__(self):
        return f"<Envelope from={self.sender!r} via={self.protocol}>"


class IDeliveryAgent(Interface):
    """
    What happens to an accepted message. A delivery is a transaction that
    maps one to one onto MAIL / RCPT / DATA / end-of-data.
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
            (LF line endings, no trace headers added yet).
        @return: Deferred firing when every accepted recipient's copy is on
            disk (or safely queued); only then may the server answer 250.
            Fails with L{TemporaryFailure} / L{PermanentFailure}; on failure
            nothing of this transaction is left delivered.
        """

    def abort():
        """Forget the transaction (RSET, a dropped connection)."""


# --- plugins ---------------------------------------------------------------


class IBackendFactory(Interface):
    """
    What every plugin object provides: it makes a backend from its config
    section. Plugins are found by twisted.plugin in the top-level
    `plugins` package and chosen by `name` in the config.
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


class BackendContext:
    """What a plugin may need from the rest of the server when it is built."""

    def __init__(self, config, realm=None, store=None):
        self.config = config  # mailplat.config.Config
        self.realm = realm  # IRealmBackend, set once built
        self.store = store  # IMailStore, set once built

    @property
    def state_dir(self):
        return self.config.state_dir
