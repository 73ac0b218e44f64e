"""
Quota limits: the C{[quota]} table and Dovecot's quota rules
(C{userdb_quota_rule}: C{*:storage=1G}, C{*:messages=10000}, ...) over it.
Pure functions; no I/O.
"""

import re

from twisted.logger import Logger

_log = Logger()

_UNITS = {"": None, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"([0-9]{1,18})\s*([bkmgt]?)", re.I)


class QuotaRuleError(ValueError):
    """A size or a quota rule that can't be read; the text says why."""


# --- limits -------------------------------------------------------------------------


class Limits:
    """Octets and messages allowed; 0 is no limit."""

    __slots__ = ("storage", "messages")

    def __init__(self, storage=0, messages=0):
        self.storage = storage
        self.messages = messages

    @property
    def limited(self):
        return bool(self.storage or self.messages)

    def line(self):
        """The first line of maildirsize (Courier's quota definition: `1073741824S,10000C`, a part without a limit left out)."""
        parts = ([f"{self.storage}S"] if self.storage else []) + ([f"{self.messages}C"] if self.messages else [])
        return ",".join(parts) or "0S"

    def written_as(self, line):
        """Whether a maildirsize limits line (ours, Dovecot's, Courier's) says these limits."""
        storage = messages = 0
        for part in line.split(","):
            part = part.strip()
            if part[:-1].isdigit() and part[-1:] in ("S", "C"):
                if part[-1] == "S":
                    storage = int(part[:-1])
                else:
                    messages = int(part[:-1])
            elif part:
                return False
        return (storage, messages) == (self.storage, self.messages)

    def __eq__(self, other):
        return isinstance(other, Limits) and (self.storage, self.messages) == (other.storage, other.messages)

    def __repr__(self):
        return f"<Limits storage={self.storage} messages={self.messages}>"


def parse_size(text, default_unit="b"):
    """
    "1G", "500M", "1024k", "100" -> octets (k, M, G, T are powers of 1024;
    case does not matter). A number without a suffix is in `default_unit`
    ("b": octets; Dovecot's storage= is in kilobytes, "k").

    @raise QuotaRuleError: naming the text.
    """
    if isinstance(text, bool):
        raise QuotaRuleError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise QuotaRuleError(f"a size can't be negative: {text}")
        return text * _UNITS[default_unit]
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise QuotaRuleError(f"not a size: {text!r} (a number with an optional k, M, G or T)")
    unit = _UNITS[m.group(2).lower()] or _UNITS[default_unit]
    return int(m.group(1)) * unit


def parse_rule(rule):
    """
    One Dovecot quota rule (userdb_quota_rule, quota_rule2, ...) ->
    [(resource, op, amount)]: resource "storage" (octets) or "messages",
    op "=" (absolute), "+" / "-" (relative to the default), "%" (percent
    of the default); or [("ignore", "=", 0)] for no quota.

        *:storage=1G      *:bytes=1073741824     *:messages=10000
        *:storage=+100M   *:storage=50%          *:ignore
        *:storage=1G:messages=1000

    `storage=` without a suffix is in kilobytes, `bytes=` in octets, as in
    Dovecot. Only the `*` (whole account) rules apply here: one quota root.

    @raise QuotaRuleError: saying what is wrong with the rule.
    """
    text = rule.strip()
    mailbox, sep, rest = text.partition(":")
    if not sep or not rest:
        raise QuotaRuleError(f"quota rule {text!r}: expected MAILBOX:LIMIT=VALUE, e.g. *:storage=1G")
    if mailbox != "*":
        raise QuotaRuleError(
            f"quota rule {text!r}: per-mailbox rules ({mailbox}:...) are not supported; "
            "only * (the whole account)"
        )
    out = []
    for item in rest.split(":"):
        item = item.strip()
        if item.lower() in ("ignore", "noenforcing"):
            out.append(("ignore", "=", 0))
            continue
        name, eq, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not eq or not value:
            raise QuotaRuleError(f"quota rule {text!r}: expected LIMIT=VALUE, not {item!r}")
        if name == "backend":
            continue  # Dovecot's backend-specific value: nothing to do here
        if name not in ("storage", "bytes", "messages"):
            raise QuotaRuleError(f"quota rule {text!r}: unknown limit {name!r}; known: storage, bytes, messages")
        op = "="
        if value[0] in "+-":
            op, value = value[0], value[1:].strip()
        elif value.endswith("%"):
            op, value = "%", value[:-1].strip()
            if not value.isdigit():
                raise QuotaRuleError(f"quota rule {text!r}: not a percentage: {item!r}")
            out.append(("messages" if name == "messages" else "storage", op, int(value)))
            continue
        try:
            if name == "messages":
                if not value.isdigit():
                    raise QuotaRuleError(f"not a number of messages: {value!r}")
                amount = int(value)
            else:
                amount = parse_size(value, "k" if name == "storage" else "b")
        except QuotaRuleError as e:
            raise QuotaRuleError(f"quota rule {text!r}: {e}")
        out.append(("messages" if name == "messages" else "storage", op, amount))
    return out


def apply_rules(rules, defaults):
    """Limits from parsed rules (L{parse_rule}, in order) over the defaults."""
    storage, messages = defaults.storage, defaults.messages
    for items in rules:
        for resource, op, amount in items:
            if resource == "ignore":
                storage = messages = 0
                continue
            current = storage if resource == "storage" else messages
            base = defaults.storage if resource == "storage" else defaults.messages
            if op == "=":
                value = amount
            elif not base:
                value = current  # relative to "no limit" is no limit
            elif op == "+":
                value = base + amount
            elif op == "-":
                value = max(1, base - amount)
            else:
                value = max(1, base * amount // 100)
            if resource == "storage":
                storage = value
            else:
                messages = value
    return Limits(storage, messages)


def check_rules(rules):
    """The rules that can't be parsed, as (rule, reason); for the realms' checks."""
    problems = []
    for rule in rules:
        try:
            parse_rule(rule)
        except QuotaRuleError as e:
            problems.append((rule, str(e)))
    return problems


def settings(table):
    """
    The [quota] table -> {"storage": octets, "messages": int,
    "warning_percent": int}. @raise QuotaRuleError naming the key.
    """
    try:
        storage = parse_size(table.get("storage", 0))
    except QuotaRuleError as e:
        raise QuotaRuleError(f"storage: {e}")
    messages = table.get("messages", 0)
    if isinstance(messages, bool) or not isinstance(messages, int) or messages < 0:
        raise QuotaRuleError(f"messages: must be a whole number (0: no limit), not {messages!r}")
    percent = table.get("warning_percent", 90)
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise QuotaRuleError(f"warning_percent: must be a whole number from 0 (no warning) to 100, not {percent!r}")
    return {"storage": storage, "messages": messages, "warning_percent": percent}


# Seconds a realm's answer is reused (the sql realm: one query per message, not two).
LIMITS_TTL = 5.0


class RealmLimits:
    """
    A user's Limits: the [quota] defaults with the realm's per-user rules
    over them (L{IQuotaSource}), each answer kept LIMITS_TTL seconds; a
    rule that does not parse is logged and ignored. Shared by every store's
    quota checks.
    """

    def __init__(self, realm, defaults, clock):
        from mailplat.interfaces import IQuotaSource

        self.realm = realm if realm is not None and IQuotaSource.providedBy(realm) else None
        self.defaults = defaults
        self.clock = clock
        self._cache = {}  # address -> (time, Limits)

    def limits(self, address):
        """Deferred Limits for `address` (already normalised)."""
        from twisted.internet import defer

        if self.realm is None:
            return defer.succeed(self.defaults)
        cached = self._cache.get(address)
        if cached is not None and self.clock() - cached[0] < LIMITS_TTL:
            return defer.succeed(cached[1])

        def apply(rules):
            parsed = []
            for rule in rules or ():
                try:
                    parsed.append(parse_rule(rule))
                except QuotaRuleError as e:
                    _log.error("{address}: {problem}; the rule is ignored", address=address, problem=str(e))
            limits = apply_rules(parsed, self.defaults)
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[address] = (self.clock(), limits)
            return limits

        return defer.maybeDeferred(self.realm.quota_rules, address).addCallback(apply)
