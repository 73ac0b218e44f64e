"""
Quotas: a limit on the octets and on the number of messages of each user's
mail (all folders together: one quota root, "" in RFC 9208), kept by
L{QuotaStore}, a wrapper around the maildir or mbox store that every
caller (local delivery, IMAP, POP3) goes through.

- Limits: the C{[quota]} defaults (C{storage}, C{messages}; 0 is no limit),
  overridden per user by the realm (L{IQuotaSource}: the passwd-file's
  C{userdb_quota_rule} extra fields, the sql realm's columns) in Dovecot's
  rule syntax (L{parse_rule}).
- Usage: kept incrementally in a file in the user's mail directory, in the
  format of Courier's and Dovecot's C{maildirsize} (a limits line, then
  "octets messages" lines that add up): C{maildirsize} for maildir, which
  is what Dovecot and Courier read, C{.mailplat-quota} for mbox. Each
  delivery, APPEND, COPY and EXPUNGE appends one line (O_APPEND, no fsync:
  a lost line is caught by the next recalculation); the file is recounted
  from the folders when it is missing, unreadable, for other limits,
  bigger than 5120 octets (Courier's rule), and at least every
  L{RECALC_INTERVAL} for a user in use, so outside writers are caught.
- Octets are RFC822.SIZE (CRLF line ends), the sizes IMAP shows.
- A user with no limit costs nothing: no file is read or written.
- One warning mail (from postmaster@ the user's domain) when usage reaches
  C{warning_percent} of a limit; a marker file beside the usage file
  (C{mailplat-quota-warned}) keeps it from being sent again until usage has
  gone back below the threshold. (C{maildirsize} has no room for it: Dovecot
  recounts a file with any other line in it.)

Users without limits are not tracked; a user who gets a limit is counted
once, at the first check.

The parts: L{rules} (limits, Dovecot's rules, the C{[quota]} table),
L{usage} (the file and the recounts), L{store} (the wrapper the server
uses), L{warning} (the warning mail).
"""

from mailplat.quota.rules import (
    LIMITS_TTL,
    Limits,
    QuotaRuleError,
    apply_rules,
    check_rules,
    parse_rule,
    parse_size,
    settings,
)
from mailplat.quota.store import (
    RECALC_INTERVAL,
    QuotaAccount,
    QuotaFolder,
    QuotaInbox,
    QuotaStore,
    wrap,
)
from mailplat.quota.usage import (
    USAGE_MAX,
    MaildirLayout,
    MboxLayout,
    append_usage,
    crlf_size,
    layout_for,
    read_usage,
    write_usage,
)
from mailplat.quota.warning import warning_message

__all__ = [
    "LIMITS_TTL", "RECALC_INTERVAL", "USAGE_MAX",
    "Limits", "QuotaRuleError", "apply_rules", "check_rules", "parse_rule", "parse_size", "settings",
    "QuotaAccount", "QuotaFolder", "QuotaInbox", "QuotaStore", "wrap",
    "MaildirLayout", "MboxLayout", "append_usage", "crlf_size", "layout_for", "read_usage", "write_usage",
    "warning_message",
]
