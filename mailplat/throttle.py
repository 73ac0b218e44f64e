"""
Limits shared by SMTP, IMAP and POP3: connections per client address and
failed logins per client address.

A client that keeps guessing passwords is slowed down (each failure makes
the next answer wait longer) and then refused for a while, on every
protocol at once, since the same address probes them all.
"""

import time
from collections import deque

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
    """

    def __init__(self, max_failures=5, window=600, clock=time.monotonic, step=1.0):
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
        return cls(limits["auth_failures"], limits["auth_failure_window"], step=limits.get("auth_failure_delay", 1))

    def _recent(self, address):
        now = self._clock()
        times = [f for f in self._failures.get(address, ()) if now - f[0] < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def blocked(self, address):
        used = len(self._recent(address)) + self._pending.get(address, 0)
        return used >= self.max_failures

    def delay(self, address):
        """Seconds to wait before answering a failed attempt."""
        return min(len(self._recent(address)), self.max_failures) * self.step

    def begin(self, address, username=None, protocol=None):
        """
        Admit one password check: a L{LoginAttempt} to end with succeeded(),
        failed() or abandoned(); None when the address is refused (the
        password must then not be checked at all).
        """
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
        kept = [f for f in self._recent(address) if f[1] != username]
        if kept:
            self._failures[address] = kept
        else:
            self._failures.pop(address, None)


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
        self.address = address
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
        self._end(self._throttle.succeeded)

    def failed(self):
        """Record the failure (and log it); returns the delay to apply to the answer."""
        delay = self._throttle.delay(self.address)
        if self._open:
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
