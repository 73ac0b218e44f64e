"""
Limits shared by SMTP, IMAP and POP3: connections per client address and
failed logins per client address.

A client that keeps guessing passwords is slowed down (each failure makes
the next answer wait longer) and then refused for a while, on every
protocol at once, since the same address probes them all.
"""

import time


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
        count = self._open.get(address, 0) - 1
        if count <= 0:
            self._open.pop(address, None)
        else:
            self._open[address] = count


class LoginThrottle:
    """
    Counts failed logins per client address within a sliding window.

    After `max_failures` failures the address is refused until the window
    has passed; before that each failure delays the answer by one second
    more (a tarpit that costs a guessing client time, not us threads).
    """

    def __init__(self, max_failures=5, window=600, clock=time.monotonic, step=1.0):
        self.max_failures = max_failures
        self.window = window
        self.step = step
        self._clock = clock
        self._failures = {}

    @classmethod
    def from_limits(cls, limits):
        """From the [limits] table: auth_failures, auth_failure_window, auth_failure_delay."""
        return cls(limits["auth_failures"], limits["auth_failure_window"], step=limits.get("auth_failure_delay", 1))

    def _recent(self, address):
        now = self._clock()
        times = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def blocked(self, address):
        return len(self._recent(address)) >= self.max_failures

    def delay(self, address):
        """Seconds to wait before answering a failed attempt."""
        return min(len(self._recent(address)), self.max_failures) * self.step

    def failed(self, address):
        self._recent(address)
        self._failures.setdefault(address, []).append(self._clock())
        if len(self._failures) > 100_000:  # bound memory under a spray of addresses
            oldest = min(self._failures, key=lambda a: self._failures[a][-1])
            del self._failures[oldest]

    def succeeded(self, address):
        self._failures.pop(address, None)
