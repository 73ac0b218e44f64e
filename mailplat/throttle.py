"""
Limits shared by SMTP, IMAP and POP3: connections per client address and
failed logins per client address.

A client that keeps guessing passwords is slowed down (each failure makes
the next answer wait longer) and then refused for a while, on every
protocol at once, since the same address probes them all.
"""

import ipaddress
import time
from collections import deque
from functools import lru_cache

from twisted.internet import defer

from mailplat import oplog

# Logins from one address waiting for a free slot; past this they are refused.
MAX_WAITING = 200


def _decrement(counts, key):
    """One less for `key`; a count that reaches zero is dropped (memory stays bounded)."""
    count = counts.get(key, 0) - 1
    if count <= 0:
        counts.pop(key, None)
    else:
        counts[key] = count


@lru_cache(maxsize=4096)
def canonical(address):
    """
    One spelling per client address: IPv6 compressed and lower case, an
    IPv4-mapped IPv6 address (::ffff:192.0.2.7, a dual-stack listener's view
    of an IPv4 client) as the IPv4 address. Anything else is kept as given.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def network(text):
    """
    An address or a CIDR as an ip_network (host bits must be zero); an
    IPv4-mapped IPv6 form is taken as the IPv4 one.
    @raise ValueError: naming what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f"not an address or network: {text!r}")
    address, slash, prefix = text.strip().partition("/")
    address = canonical(address)
    if slash and ":" not in address and ":" in text.partition("/")[0]:
        # ::ffff:192.0.2.0/120 -> 192.0.2.0/24
        prefix = str(int(prefix) - 96) if prefix.isdigit() and int(prefix) >= 96 else prefix
    try:
        return ipaddress.ip_network(address + (f"/{prefix}" if slash else ""))
    except ValueError as e:
        raise ValueError(f"not an address or network: {text!r} ({e})") from None


def _in(address, networks):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in networks)


class ConnectionLimiter:
    """At most `limit` open connections per client address."""

    def __init__(self, limit):
        self.limit = limit
        self._open = {}

    def acquire(self, address):
        count = self._open.get(address, 0)
        if count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address):
        _decrement(self._open, address)


class LoginThrottle:
    """
    Counts failed logins per client address within a sliding window.

    After `max_failures` failures the address is refused until the window
    has passed; before that each failure delays the answer by one second
    more (a tarpit that costs a guessing client time, not us threads).

    Two ways around a naive count are closed (issue 17 #6):

    - a success forgets only the failures for the same user name, so an
      account the guesser owns cannot wipe the guesses at other accounts;
    - a login is counted as pending from the moment it is admitted until
      its password check ends, and pending + recent failures must stay
      under the limit: parallel guesses cannot all reach the checker.
      L{admit} makes a login over that limit wait for a slot rather than
      be refused, so many good logins at once from one address (a
      webmail, a load test) all get in, a few at a time.

    Addresses in `trusted` (ip_networks; [limits] trusted_networks) are
    never refused, made to wait or tarpitted; their failures are logged
    but not counted. Addresses are compared in their L{canonical} form.
    """

    def __init__(self, max_failures=5, window=600, clock=time.monotonic, step=1.0, trusted=()):
        self.trusted = tuple(trusted)
        self.max_failures = max_failures
        self.window = window
        self.step = step
        self._clock = clock
        self._failures = {}  # address -> [(time, user name), ...]
        self._pending = {}  # address -> password checks under way
        self._waiting = {}  # address -> deque of (Deferred, user name) waiting for a slot

    @classmethod
    def from_limits(cls, limits):
        """From the [limits] table: auth_failures, auth_failure_window, auth_failure_delay."""
        return cls(
            limits["auth_failures"], limits["auth_failure_window"], step=limits.get("auth_failure_delay", 1),
            trusted=limits.get("trusted_networks", ()),
        )

    def is_trusted(self, address):
        return bool(self.trusted) and _in(canonical(address), self.trusted)

    def _recent(self, address):
        address = canonical(address)
        now = self._clock()
        times = [f for f in self._failures.get(address, ()) if now - f[0] < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def blocked(self, address):
        address = canonical(address)
        if self.is_trusted(address):
            return False
        used = len(self._recent(address)) + self._pending.get(address, 0)
        return used >= self.max_failures

    def delay(self, address):
        """Seconds to wait before answering a failed attempt."""
        if self.is_trusted(address):
            return 0
        return min(len(self._recent(address)), self.max_failures) * self.step

    def begin(self, address, username=None, protocol=None):
        """
        Admit one password check: a L{LoginAttempt} to end with succeeded(),
        failed() or abandoned(); None when the address is refused (the
        password must then not be checked at all).
        """
        address = canonical(address)
        if self.blocked(address):
            return None
        self._pending[address] = self._pending.get(address, 0) + 1
        return LoginAttempt(self, address, username, protocol)

    def admit(self, address, username=None, protocol=None):
        """
        Like L{begin}, as a Deferred: a login refused only because others
        from the address are being checked waits for one of them to end.
        Fires with None when the address is refused for its failures.
        `protocol` (smtp, imap, pop3) is for the log lines.
        """
        address = canonical(address)
        if len(self._recent(address)) >= self.max_failures:
            self._log_refused(address, username, protocol)
            return defer.succeed(None)
        if not self.blocked(address):
            return defer.succeed(self.begin(address, username, protocol))
        queue = self._waiting.setdefault(address, deque())
        if len(queue) >= MAX_WAITING:
            self._log_refused(address, username, protocol, "too many logins waiting")
            return defer.succeed(None)
        d = defer.Deferred()
        queue.append((d, username, protocol))
        return d

    def _log_refused(self, address, username, protocol, reason="locked out"):
        oplog.emit("login-failed", protocol=protocol, client=oplog.client(address), user=_name(username), reason=reason)

    def _release(self, address):
        _decrement(self._pending, address)
        self._wake(address)

    def _wake(self, address):
        """Admit waiting logins while there is room; refuse them all once the failures reach the limit."""
        queue = self._waiting.get(address)
        while queue:
            if len(self._recent(address)) >= self.max_failures:
                d, username, protocol = queue.popleft()
                self._log_refused(address, username, protocol)
                d.callback(None)
            elif not self.blocked(address):
                d, username, protocol = queue.popleft()
                d.callback(self.begin(address, username, protocol))
            else:
                break
        if not queue:
            self._waiting.pop(address, None)

    def failed(self, address, username=None):
        address = canonical(address)
        if self.is_trusted(address):
            return  # logged by the attempt, never counted
        self._recent(address)
        self._failures.setdefault(address, []).append((self._clock(), username))
        if len(self._failures[address]) == self.max_failures:
            # One line when the address becomes locked out, not per refusal.
            oplog.emit(
                "lockout", level="warn", client=oplog.client(address), failures=self.max_failures,
                seconds=self.window, last_user=_name(username),
            )
        if len(self._failures) > 100_000:  # bound memory under a spray of addresses
            oldest = min(self._failures, key=lambda a: self._failures[a][-1][0])
            del self._failures[oldest]

    def succeeded(self, address, username=None):
        """Forget this user name's failures from the address, and only those."""
        address = canonical(address)
        kept = [f for f in self._recent(address) if f[1] != username]
        if kept:
            self._failures[address] = kept
        else:
            self._failures.pop(address, None)


    # --- administration (`mailplat lockout`, over mailplat.control) ---------

    def report(self):
        """
        Every address with failures in the window, most failures first:
        [{address, failures, locked, seconds, users}], `seconds` being the
        time until a locked address is admitted again, or until an
        unlocked one's failures are forgotten.
        """
        now = self._clock()
        rows = []
        for address in list(self._failures):
            recent = self._recent(address)
            if not recent:
                continue
            times = sorted(t for t, _ in recent)
            locked = len(times) >= self.max_failures
            # Locked until enough failures age out to leave one free slot.
            until = times[len(times) - self.max_failures] if locked else times[-1]
            users = []
            for _, user in recent:
                name = _name(user) or "-"
                if name not in users:
                    users.append(name)
            rows.append(dict(
                address=address, failures=len(times), limit=self.max_failures, locked=locked,
                seconds=max(0, round(until + self.window - now)), users=users,
            ))
        rows.sort(key=lambda r: (not r["locked"], -r["failures"], r["address"]))
        return rows

    def clear(self, where):
        """
        Forget the failures of an address, or of every address in a
        network (an ip_network or its text); waiting logins go ahead.
        @return: the addresses cleared, [] when none had failures.
        """
        net = where if isinstance(where, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else network(where)
        cleared = [a for a in list(self._failures) if _in(a, (net,))]
        for address in cleared:
            del self._failures[address]
            oplog.emit("lockout-cleared", client=oplog.client(address))
            self._wake(address)
        return sorted(cleared)


def _reason(failure):
    value = getattr(failure, "value", failure)
    return str(value) or type(value).__name__


def _name(username):
    if isinstance(username, bytes):
        return username.decode("utf-8", "replace")
    return username


class LoginAttempt:
    """One admitted password check; ending it frees its pending slot once."""

    def __init__(self, throttle, address, username, protocol=None):
        self._throttle = throttle
        self.address = canonical(address)
        self.username = username
        self.protocol = protocol
        self._open = True

    def _end(self, record=None):
        # The outcome is recorded before the slot is freed: a login waiting
        # for the slot must see this failure.
        if self._open:
            self._open = False
            if record is not None:
                record(self.address, self.username)
            self._throttle._release(self.address)

    def succeeded(self):
        if self._open:
            # One `login` line per login (docs/operating.md), as Dovecot writes; mailplat.metrics counts it.
            oplog.emit("login", protocol=self.protocol, client=oplog.client(self.address), user=_name(self.username))
        self._end(self._throttle.succeeded)

    def failed(self):
        """Record the failure (and log it); returns the delay to apply to the answer."""
        delay = self._throttle.delay(self.address)
        if self._open and self._throttle.is_trusted(self.address):
            oplog.emit(
                "login-failed", protocol=self.protocol, client=oplog.client(self.address), user=_name(self.username),
                reason="bad credentials", failures="trusted",
            )
        elif self._open:
            failures = len(self._throttle._recent(self.address)) + 1
            oplog.emit(
                "login-failed", protocol=self.protocol, client=oplog.client(self.address), user=_name(self.username),
                reason="bad credentials", failures=f"{failures}/{self._throttle.max_failures}",
            )
        self._end(self._throttle.failed)
        return delay

    def abandoned(self, failure=None):
        """
        The check could not be made (a temporary failure): neither outcome.
        With the failure, one `login-tempfail` line says why (an unreadable
        passwd-file, a database down), each time a client is answered so.
        """
        if failure is not None and self._open:
            oplog.emit(
                "login-tempfail", level="error", protocol=self.protocol, client=oplog.client(self.address),
                user=_name(self.username), reason=_reason(failure),
            )
        self._end()

    def settle(self, result):
        """addBoth at the end of a login chain: a slot is never left pending."""
        self._end()
        return result
