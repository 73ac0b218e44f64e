"""
The reactor-blocking detector of the kit: how long a backend call keeps the
reactor thread busy, counting the call itself and, for an C{async def}
method, every step of its coroutine (from one C{await} to the next).

One thread serves every connection of the process: a call that computes
a password hash, reads a big file or waits on a database without a thread
or asynchronous I/O stalls every session meanwhile. The limit is generous
(50 ms: a dict lookup or a stat takes microseconds) so the rule does not
flake on a busy machine.
"""

import collections.abc
import time

from mailplat.calls import as_deferred

BLOCKING_LIMIT = 0.05


class _TimedCoroutine(collections.abc.Coroutine):
    """A coroutine that notes the longest of its steps."""

    def __init__(self, coro, spent):
        self._coro = coro
        self._spent = spent

    def _timed(self, step, *args):
        started = time.perf_counter()
        try:
            return step(*args)
        finally:
            self._spent.append(time.perf_counter() - started)

    def send(self, value):
        return self._timed(self._coro.send, value)

    def throw(self, *args):
        return self._timed(self._coro.throw, *args)

    def close(self):
        return self._coro.close()

    def __await__(self):
        return self._coro.__await__()


def timed_call(fn, *args, **kwargs):
    """
    Call a backend method as the server does (L{mailplat.calls}) and time it.

    @return: (Deferred of its answer, spent): `spent` is a list of the
        seconds each synchronous part took (the call; each coroutine step,
        filled in as the coroutine runs). Its max() is what held the reactor.
    """
    spent = []
    started = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except Exception as e:
        spent.append(time.perf_counter() - started)
        from twisted.internet import defer

        return defer.fail(e), spent
    spent.append(time.perf_counter() - started)
    if isinstance(result, collections.abc.Coroutine):
        result = _TimedCoroutine(result, spent)
    return as_deferred(result), spent


def blocked_message(what, spent, limit=BLOCKING_LIMIT):
    """None when no part of `spent` passed `limit`, else the kit's message."""
    worst = max(spent) if spent else 0.0
    if worst <= limit:
        return None
    return (
        f"{what} held the reactor for {worst * 1000:.0f} ms (the limit is {limit * 1000:.0f} ms): "
        "never block the reactor; run slow work in a thread (deferToThread, "
        "mailplat.realm.passwords.verify_later) or use asynchronous I/O"
    )
