"""
duplicate (RFC 7352): true when a message with the same unique id (its
Message-ID, another field, or `:uniqueid`) was seen within the period.

The memory is the run's `environment["duplicates"]` (L{Tracker}, one per
user at delivery, in `<home>/.duplicates.json`); without one (a dry run)
nothing counts as seen. An id is remembered as the test runs, which is
what RFC 7352 3 allows when the run then ends normally; a failed run
keeps the message anyway.
"""

import hashlib
import os
import time

from mailplat.sieve import memory
from mailplat.sieve.engine import extension, test

extension("duplicate")

DEFAULT_SECONDS = 12 * 3600  # Pigeonhole's default period
MAX_SECONDS = 7 * 86400  # RFC 7352 3.1 lets a server cap the period
ENTRIES = 10000


def _check(node, checker):
    if "header" in node.tags and "uniqueid" in node.tags:
        return "only one of :header and :uniqueid"
    return None


@test("duplicate", extension="duplicate",
      tags={"handle": "string", "header": "string", "uniqueid": "string", "seconds": "number", "last": None},
      check=_check)
def _duplicate(run, node):
    if "uniqueid" in node.tags:
        ident = run.x(node.tags["uniqueid"])
    else:
        values = run.message.raw_headers(run.x(node.tags.get("header", "message-id")))
        if not values:
            return False  # RFC 7352 3: no id, never a duplicate
        ident = values[0].strip()
    tracker = run.environment.get("duplicates")
    if tracker is None:
        return False
    seconds = min(node.tags.get("seconds", DEFAULT_SECONDS), MAX_SECONDS)
    return tracker.seen(run.x(node.tags.get("handle", "")), ident, seconds, "last" in node.tags)


class Tracker:
    """One user's ids and when they were seen (written atomically, bounded in size)."""

    def __init__(self, home, clock=time.time):
        self.path = os.path.join(home, ".duplicates.json")
        self.clock = clock

    def seen(self, handle, ident, seconds, last):
        now = self.clock()
        key = hashlib.sha256(f"{handle}\0{ident}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        data = memory.load(self.path)
        when = data.get(key)
        duplicate = isinstance(when, (int, float)) and now - when < seconds
        # RFC 7352 3.3: :last renews the period on every sighting; otherwise it runs from the first.
        if not duplicate or last:
            data[key] = now
            memory.save(self.path, data, ENTRIES)
        return duplicate
