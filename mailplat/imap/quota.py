"""
RFC 9208 QUOTA for L{mailplat.imap.server.MailplatIMAP}: GETQUOTAROOT,
GETQUOTA and SETQUOTA over the one quota root of each account, "" (all its
folders), with the resources STORAGE (units of 1024 octets) and MESSAGE.

The figures come from the account's C{quota()} (an L{IQuotaStore}'s
account, C{mailplat.quota.QuotaAccount}); an account without it, or a user
without limits, has no quota root (RFC 9208 4.1.2: an empty QUOTAROOT).
Quotas are the administrator's (the realm, C{[quota]}): SETQUOTA is
refused, and QUOTASET is not advertised (RFC 9208 3.2).

APPEND and COPY over quota answer C{NO [OVERQUOTA]} (RFC 9208 4.3), from
the L{QuotaExceeded} the store fails with (server._backend_failure).
"""

from twisted.internet import defer

from mailplat.imap.parser import canonical_name, encode_mailbox

ROOT = b'""'  # the account's one quota root (RFC 9208 allows an empty name)

# RFC 9208 3.1: the capability and one QUOTA=RES-<resource> per resource.
CAPABILITIES = (b"QUOTA", b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE")


def deleted_status(msgs):
    """
    RFC 9208 4.2: STATUS DELETED (messages flagged \\Deleted) and
    DELETED-STORAGE (what EXPUNGE would give back, in STORAGE's units of
    1024 octets, rounded down: never more than the truth).
    """
    sizes = [m.size for m in msgs if "\\Deleted" in m.flags]
    return {b"DELETED": len(sizes), b"DELETED-STORAGE": sum(sizes) // 1024}


def quota_line(report):
    """`QUOTA "" (STORAGE used limit MESSAGE used limit)` for the limits that are set."""
    resources = []
    if report.storage_limit:
        # Usage rounded up (a non-empty mailbox never shows 0), the limit down.
        resources.append(b"STORAGE %d %d" % (-(-report.storage // 1024), report.storage_limit // 1024))
    if report.messages_limit:
        resources.append(b"MESSAGE %d %d" % (report.messages, report.messages_limit))
    return b"QUOTA " + ROOT + b" (" + b" ".join(resources) + b")"


class QuotaCommands:
    """GETQUOTAROOT, GETQUOTA, SETQUOTA (RFC 9208 4.1); mixed into the IMAP session."""

    def _quota_report(self):
        """Deferred L{QuotaReport} of the account, or None when it keeps no quota."""
        quota = getattr(self.account, "quota", None)
        if quota is None:
            return defer.succeed(None)
        return defer.maybeDeferred(quota).addCallback(lambda r: r if r is not None and r.limited else None)

    def cmd_GETQUOTAROOT(self, tag, reader):
        # RFC 9208 4.1.2: the mailbox's roots, then each root's QUOTA.
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        d = defer.maybeDeferred(self.account.folder, name)

        def answer(report):
            if report is None:
                self.untagged(b"QUOTAROOT " + encode_mailbox(name))
            else:
                self.untagged(b"QUOTAROOT " + encode_mailbox(name) + b" " + ROOT)
                self.untagged(quota_line(report))
            self.ok(tag, "GETQUOTAROOT completed")

        def missing(failure):
            failure.trap(KeyError)
            self.no(tag, "[NONEXISTENT] no such mailbox")

        return d.addCallbacks(lambda _: self._quota_report().addCallback(answer), missing)

    def cmd_GETQUOTA(self, tag, reader):
        # RFC 9208 4.1.1
        reader.space()
        root = reader.astring("a quota root")
        reader.end()

        def answer(report):
            if report is None or root != b"":
                self.no(tag, "[NONEXISTENT] no such quota root")
                return
            self.untagged(quota_line(report))
            self.ok(tag, "GETQUOTA completed")

        return self._quota_report().addCallback(answer)

    def cmd_SETQUOTA(self, tag, reader):
        # RFC 9208 4.1.3: allowed to refuse; quotas here are the administrator's.
        reader.rest()
        self.no(tag, "[NOPERM] quotas are set by the administrator ([quota] and the user database), not over IMAP")
