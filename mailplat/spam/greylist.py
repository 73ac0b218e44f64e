"""
Greylisting: the first try of a (client network, sender, recipient)
triplet gets 451 4.7.1 at RCPT; a retry after `delay` seconds (and within
`retry_window`) passes, and the triplet is then remembered for
`expiry_days`, each message making it live longer. Real MTAs retry; most
spam software does not. See docs/check-greylist.md.

The triplets live in memory, at most `max_entries` of them (the least
recently seen go first), and in an append-only file in the state
directory, written from a thread and compacted when it grows, so they
survive a restart.
"""

import ipaddress
import json
import os
import time
from collections import OrderedDict

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailplat.checks import Check, Verdict

log = Logger(namespace="mailplat.plugins.greylist")

DEFAULT_DELAY = 300
DEFAULT_RETRY_WINDOW = 2 * 86400
DEFAULT_EXPIRY_DAYS = 35
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_ALLOW = ["127.0.0.0/8", "::1/128"]
FILE_NAME = "greylist.jsonl"


def client_network(address, v4_prefix=24, v6_prefix=64):
    """The network a client is greylisted as ("192.0.2.0/24"): big senders retry from a neighbour."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address or "unknown"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class TripletStore:
    """
    {triplet: [first seen, passed until (0 while waiting)]}, bounded, in
    least-recently-seen order, mirrored in `path` (one JSON line a change).
    """

    def __init__(self, path, max_entries, clock=time.time):
        self.path = path
        self.max_entries = max_entries
        self.clock = clock
        self.entries = OrderedDict()
        self._pending = []
        self._writing = None
        self._lines = 0
        self._load()

    def _load(self):
        # Runs when the plugin is built, before the reactor: reading here is fine.
        if not os.path.exists(self.path):
            return
        now = self.clock()
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                self._lines += 1
                try:
                    key, first, passed = json.loads(line)
                    first, passed = float(first), float(passed)
                except (ValueError, TypeError):
                    continue  # a line cut short by a crash
                self.entries.pop(key, None)
                self.entries[key] = [first, passed]
        for key in [k for k, (first, passed) in self.entries.items() if passed and passed < now]:
            del self.entries[key]
        self._trim()

    def get(self, key):
        return self.entries.get(key)

    def put(self, key, first, passed):
        self.entries.pop(key, None)
        self.entries[key] = [first, passed]
        self._trim()
        self._pending.append(json.dumps([key, first, passed]) + "\n")
        self._write_soon()

    def _trim(self):
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def _write_soon(self):
        if self._writing is not None or not self._pending:
            return
        if self._lines > 2 * len(self.entries) + 1000:
            # The file holds mostly stale lines: write the live ones afresh.
            snapshot = [json.dumps([k, f, p]) + "\n" for k, (f, p) in self.entries.items()]
            self._pending = []
            self._lines = len(snapshot)
            self._writing = threads.deferToThread(_rewrite, self.path, snapshot)
        else:
            lines, self._pending = self._pending, []
            self._lines += len(lines)
            self._writing = threads.deferToThread(_append, self.path, lines)
        self._writing.addErrback(lambda f: log.error("greylist: cannot write {path}: {e}", path=self.path,
                                                     e=f.getErrorMessage()))
        self._writing.addBoth(self._written)

    def _written(self, _):
        self._writing = None
        self._write_soon()

    @defer.inlineCallbacks
    def flushed(self):
        """A Deferred firing once every change so far is in the file."""
        while self._writing is not None:
            yield self._writing


def _append(path, lines):
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(lines)


def _rewrite(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, path)


class GreylistCheck(Check):
    """At RCPT: 451 4.7.1 for a triplet not seen before or retried too early."""

    name = "greylist"

    def __init__(self, store, delay=DEFAULT_DELAY, retry_window=DEFAULT_RETRY_WINDOW,
                 expiry_days=DEFAULT_EXPIRY_DAYS, allow=DEFAULT_ALLOW, v4_prefix=24, v6_prefix=64,
                 clock=time.time):
        self.store = store
        self.delay = delay
        self.retry_window = retry_window
        self.expiry = expiry_days * 86400
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow]
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self.clock = clock

    def _skips(self, session):
        if session.authenticated_as:
            return True
        if session.state.get("dnsbl", {}).get("allowed"):
            return True  # an allow list of the dnsbl check vouched for the client
        try:
            ip = ipaddress.ip_address((session.client_address or "").split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.allow if n.version == ip.version)

    def triplet(self, session, recipient):
        network = client_network(session.client_address or "", self.v4_prefix, self.v6_prefix)
        return f"{network} {(session.sender or '').lower()} {recipient.lower()}"

    def rcpt(self, session, recipient):
        if self._skips(session):
            return None
        key = self.triplet(session, recipient)
        now = self.clock()
        entry = self.store.get(key)
        if entry is not None:
            first, passed = entry
            if passed and now <= passed:
                self.store.put(key, first, now + self.expiry)
                return None
            if not passed and self.delay <= now - first <= self.retry_window:
                log.info("greylist: {key} passed after {s:.0f}s", key=key, s=now - first)
                self.store.put(key, first, now + self.expiry)
                return None
            if not passed and now - first < self.delay:
                return self._wait(self.delay - (now - first))
        # New, expired, or retried too late: the wait starts again.
        self.store.put(key, now, 0)
        return self._wait(self.delay)

    def _wait(self, seconds):
        return Verdict.tempfail(f"greylisted, please try again in {max(1, int(seconds + 0.999))} seconds",
                                451, "4.7.1")


def from_section(section, context):
    """A GreylistCheck from its checked [checks.greylist] table (docs/check-greylist.md)."""
    state_dir = context.state_dir
    numbers = {}
    for key, default in (("delay", DEFAULT_DELAY), ("retry_window", DEFAULT_RETRY_WINDOW),
                         ("expiry_days", DEFAULT_EXPIRY_DAYS), ("max_entries", DEFAULT_MAX_ENTRIES)):
        value = section.get(key, default)
        if value <= 0:
            raise ValueError(f"{key}: must be a positive number, not {value!r}")
        numbers[key] = value
    if numbers["retry_window"] <= numbers["delay"]:
        raise ValueError(f"retry_window: must be longer than delay ({numbers['delay']}s)")
    allow = section.get("allow", DEFAULT_ALLOW)
    for n in allow:
        try:
            ipaddress.ip_network(n, strict=False)
        except (ValueError, TypeError):
            raise ValueError(f"allow: {n!r} is no address or network, e.g. '192.0.2.0/24'")
    prefixes = {}
    for key, top, default in (("ipv4_prefix", 32, 24), ("ipv6_prefix", 128, 64)):
        value = section.get(key, default)
        if not isinstance(value, int) or not 0 < value <= top:
            raise ValueError(f"{key}: a prefix length from 1 to {top}, not {value!r}")
        prefixes[key] = value
    os.makedirs(state_dir, exist_ok=True)
    store = TripletStore(os.path.join(state_dir, FILE_NAME), int(numbers["max_entries"]))
    return GreylistCheck(store, numbers["delay"], numbers["retry_window"], numbers["expiry_days"], allow,
                         prefixes["ipv4_prefix"], prefixes["ipv6_prefix"])
