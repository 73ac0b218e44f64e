"""
Quotas on the sql store (IQuotaStore): the usage is counted by the
database (the sum of RFC822.SIZE and the number of a user's messages, one
indexed query), so every node sees the same figures and there is no usage
file to keep in step. Limits are the [quota] defaults with the realm's
per-user rules over them (mailplat.quota.rules), as for the other stores.

Not done yet here: the warning mail at `warning_percent`.
"""

import time

from twisted.logger import Logger

from mailplat.interfaces import OverQuota, OverQuotaForGood, QuotaReport
from mailplat.quota.rules import Limits, RealmLimits

log = Logger()

def usage(cursor, address):
    """(octets, messages) of every folder of `address` (blocking)."""
    cursor.execute(
        "SELECT coalesce(sum(m.size), 0), count(*) FROM mailplat_messages m "
        "JOIN mailplat_mailboxes b ON b.id = m.mailbox JOIN mailplat_accounts a ON a.id = b.account "
        "WHERE a.address = %s",
        (address,),
    )
    octets, messages = cursor.fetchone()
    return int(octets), int(messages)


class SQLQuotas:
    """The quota checks of one store; see L{IQuotaStore}."""

    def __init__(self, database, realm=None, storage=0, messages=0, clock=time.time):
        self.db = database
        self.realm = realm
        self.defaults = Limits(storage, messages)
        self.clock = clock
        self._limits = RealmLimits(realm, self.defaults, clock)

    def limits(self, address):
        return self._limits.limits(address)

    def quota(self, address):
        def got(limits):
            d = self.db.run("counting usage", usage, address)
            return d.addCallback(lambda u: QuotaReport(u[0], limits.storage, u[1], limits.messages))

        return self.limits(address).addCallback(got)

    def check_quota(self, address, size=None, count=1):
        def got(limits):
            if not limits.limited:
                return None
            if size is not None:
                refuse_larger(limits, size)
            return self.db.run("counting usage", usage, address).addCallback(lambda used: refuse(limits, used, size, count))

        return self.limits(address).addCallback(got)


def refuse_larger(limits, size):
    """@raise OverQuotaForGood: a message larger than the whole quota."""
    if limits.storage and size > limits.storage:
        raise OverQuotaForGood(f"message larger than the mailbox quota ({size} octets, the quota is {limits.storage})")


def refuse(limits, used, size=None, count=1):
    """
    @param used: (octets, messages) now.
    @param size: octets about to be added, or None for "already over?".
    @raise OverQuota: when they do not fit.
    """
    octets, messages = used
    if size is None:
        if (limits.storage and octets >= limits.storage) or (limits.messages and messages >= limits.messages):
            raise OverQuota("mailbox full")
        return None
    if limits.storage and octets + size > limits.storage:
        raise OverQuota("mailbox full: the message does not fit in the space left")
    if limits.messages and messages + count > limits.messages:
        raise OverQuota("mailbox full: too many messages")
    return None
