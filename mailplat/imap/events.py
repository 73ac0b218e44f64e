"""
What a user does to messages over IMAP, told to observers the service
registers (L{IMAPFactory} `mailbox_events`): a seam for features that act
on it (learning from the Junk folder, mailplat.spam.learn) without their
code in the protocol module.

Observers are told after the command's tagged answer is written and must
not block: a slow job starts its own asynchronous work. An observer that
raises or fails is logged; the session never sees it.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface

log = Logger()


class IMailboxEvents(Interface):
    """An observer of IMAP changes to messages (every method optional to act on, all called)."""

    def copied(account, source, target, pairs, moved):
        """
        COPY or MOVE (RFC 3501 6.4.7, RFC 6851) put messages into `target`.

        @param account: the session's IMailAccount (C{account.address}).
        @param source: the selected IMailFolder they came from.
        @param target: the IMailFolder they are now in.
        @param pairs: [(uid in source, uid in target)].
        @param moved: True for MOVE (gone from `source`), False for COPY.
        """

    def flags_stored(account, folder, uids, flags, mode):
        """
        STORE changed the flags of `uids` in `folder` (RFC 3501 6.4.6).

        @param flags: the flags of the command (frozenset of str).
        @param mode: "+" (added), "-" (removed) or "=" (replaced).
        """


def notify(observers, method, *args):
    """Call `method` on every observer; a failure is logged, never raised."""
    for observer in observers:
        try:
            result = getattr(observer, method)(*args)
        except Exception:
            log.failure("mailbox event {method} failed in {observer!r}", method=method, observer=observer)
            continue
        if isinstance(result, defer.Deferred):
            result.addErrback(lambda f, o=observer: log.failure(
                "mailbox event {method} failed in {observer!r}", f, method=method, observer=o))
