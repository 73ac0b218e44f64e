"""
Envelope processes (mailplat.imap.envelope_worker) for a folder's first
FETCH ENVELOPE: the headers are read and parsed on the other cores while
the reactor writes the answers, instead of in threads that share the
reactor's core (the GIL).

L{EnvelopePool.envelopes} splits a batch of file paths over the workers;
it fails with L{EnvelopeUnavailable} when no worker runs, one dies or one
gives no answer within `timeout` (it is then killed): the caller reads
those messages in its threads as before, so a FETCH never waits on a
broken worker. The workers start when a folder of L{BIG_FOLDER} messages
or more is selected (L{wake}); one that ended is started again on a
later request, at most once every `restart_delay` seconds.
"""

import itertools
import os
import sys
import time

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

import mailplat
from mailplat.imap.envelope_worker import ENVELOPE, REQUEST, SORT_KEYS, decode_answer, encode_request

log = Logger()

# A folder this big, selected, starts the workers (smaller ones are read in threads at once).
BIG_FOLDER = 1000


def default_workers():
    """Two workers where there are two cores or more; none on one core (nothing to win there)."""
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else 2


class EnvelopeUnavailable(Exception):
    """No envelope process answered this request: compute it in-process."""


def elsewhere(request, paths_of, uids, in_threads, wrap):
    """
    The results of `uids` computed by the envelope processes: `request`
    (L{EnvelopePool.envelopes} or L{EnvelopePool.sort_keys}) is given their
    paths (`paths_of(uids)`, None for a UID the folder does not hold) and
    each answer goes through `wrap`; what they could not read (renamed,
    unparsable), or everything when no process answers, goes to
    `in_threads(uids)`, the reader the session would use without them.
    A Deferred firing with one result per UID, in order.
    """
    paths = paths_of(uids)
    known = [i for i, p in enumerate(paths) if p is not None]
    results = [None] * len(uids)

    def got(answers):
        for i, answer in zip(known, answers):
            if answer is not None:
                results[i] = wrap(answer)
        left = [i for i, r in enumerate(results) if r is None]
        if not left:
            return results

        def merge(rest):
            for i, r in zip(left, rest):
                results[i] = r
            return results

        return in_threads([uids[i] for i in left]).addCallback(merge)

    def unavailable(failure):
        failure.trap(EnvelopeUnavailable)
        return in_threads(uids)

    return request([paths[i] for i in known]).addCallbacks(got, unavailable)


class EnvelopeProcess(protocol.ProcessProtocol):
    """One worker and its requests not yet answered (answered in order)."""

    def __init__(self, pool):
        self.pool = pool
        self.pending = {}  # request id -> (Deferred, timeout DelayedCall)
        self.buffer = bytearray()
        self.ended = defer.Deferred()
        self.alive = True

    def send(self, request_id, paths, kind=ENVELOPE):
        d = defer.Deferred()
        timer = self.pool.reactor.callLater(self.pool.timeout, self.hung, request_id)
        self.pending[request_id] = (d, timer)
        self.transport.write(encode_request(request_id, paths, kind))
        return d

    def hung(self, request_id):
        log.error("envelope process {pid} gave no answer in {timeout} s; killed",
                  pid=self.transport.pid, timeout=self.pool.timeout)
        self.pending.pop(request_id)[0].errback(EnvelopeUnavailable("the envelope process gave no answer"))
        self.kill()

    def kill(self):
        self.alive = False
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def outReceived(self, data):
        buffer = self.buffer
        buffer += data
        while len(buffer) >= REQUEST.size:
            request_id, size = REQUEST.unpack_from(buffer)
            if len(buffer) < REQUEST.size + size:
                return
            payload = bytes(buffer[REQUEST.size : REQUEST.size + size])
            del buffer[: REQUEST.size + size]
            entry = self.pending.pop(request_id, None)
            if entry is None:
                continue  # answered after its timeout: already read in-process
            d, timer = entry
            timer.cancel()
            d.callback(decode_answer(payload))

    def errReceived(self, data):
        for line in data.decode("utf-8", "replace").splitlines():
            log.warn("envelope process {pid}: {line}", pid=self.transport.pid, line=line)

    def processEnded(self, reason):
        self.alive = False
        pending, self.pending = self.pending, {}
        for d, timer in pending.values():
            timer.cancel()
            d.errback(EnvelopeUnavailable(f"the envelope process ended: {reason.value}"))
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)


class EnvelopePool:
    """Up to `workers` envelope processes, started and stopped with the server."""

    def __init__(self, workers=None, timeout=30.0, restart_delay=5.0, reactor=None):
        self._reactor = reactor
        self.size = default_workers() if workers is None else workers
        self.timeout = timeout
        self.restart_delay = restart_delay
        self.workers = []
        self.running = False
        self._ids = itertools.count(1)
        self._last_start = None
        self._restart = None
        self.answered = 0  # messages computed by a worker (for tests and benchmarks)

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def available(self):
        return self.running and any(w.alive for w in self.workers)

    def startService(self):
        """
        Ready to start workers: they start at the first L{wake} (a big
        folder selected), so a server whose folders stay small runs none.
        """
        self.running = True

    def wake(self):
        """A big folder was selected: have the workers running (imports paid) before its FETCH."""
        if self.running and sum(w.alive for w in self.workers) < self.size:
            self._start_again()

    def _start_workers(self):
        for _ in range(self.size - len(self.workers)):
            try:
                self._spawn()
            except Exception:  # no process (EAGAIN, EMFILE, ...): threads, and a new try later
                log.failure("envelope process not started; envelopes are computed in-process")
                return

    def _spawn(self):
        self._last_start = time.monotonic()
        worker = EnvelopeProcess(self)
        root = os.path.dirname(os.path.dirname(os.path.abspath(mailplat.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.reactor.spawnProcess(worker, sys.executable, [sys.executable, "-m", "mailplat.imap.envelope_worker"],
                                  env=env, childFDs={0: "w", 1: "r", 2: "r"})
        self.workers.append(worker)

    def envelopes(self, paths):
        """
        A Deferred firing with one envelope (wire bytes) or None per path,
        in order; fails with L{EnvelopeUnavailable}.
        """
        return self._compute(paths, ENVELOPE)

    def sort_keys(self, paths):
        """As L{envelopes}, with each message's SORT/THREAD keys (L{mailplat.imap.sortkeys}) as JSON bytes."""
        return self._compute(paths, SORT_KEYS)

    def _compute(self, paths, kind):
        if not self.running:
            return defer.fail(EnvelopeUnavailable("no envelope process is running"))
        if sum(w.alive for w in self.workers) < self.size:
            self._start_again()
        live = [w for w in self.workers if w.alive]
        if not live:
            return defer.fail(EnvelopeUnavailable("no envelope process is running"))
        if len(live) > 1:
            live.sort(key=lambda w: len(w.pending))
        share = -(-len(paths) // len(live))
        parts = [w.send(next(self._ids), paths[i * share : (i + 1) * share], kind)
                 for i, w in enumerate(live) if paths[i * share : (i + 1) * share]]
        d = defer.gatherResults(parts, consumeErrors=True)
        d.addCallbacks(self._joined, self._failed)
        return d

    def _joined(self, results):
        out = [env for part in results for env in part]
        self.answered += len(out)
        return out

    def _failed(self, failure):
        failure.trap(defer.FirstError)
        return failure.value.subFailure

    def _start_again(self):
        if self._restart is not None:
            return
        wait = self.restart_delay - (time.monotonic() - self._last_start) if self._last_start else 0

        def restart():
            self._restart = None
            if self.running:
                self._start_workers()

        if wait <= 0:
            restart()
        else:
            self._restart = self.reactor.callLater(wait, restart)

    def worker_ended(self, worker, reason):
        if worker in self.workers:
            self.workers.remove(worker)
        if self.running:
            log.error("envelope process ended ({reason}); envelopes are computed in-process until one runs again",
                      reason=reason.value)

    def stopService(self):
        """Close the workers' input: each ends once its requests are answered. A Deferred."""
        self.running = False
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        waits = []
        for worker in list(self.workers):
            try:
                worker.transport.closeStdin()
            except Exception:
                pass
            timer = self.reactor.callLater(self.timeout, worker.kill)
            waits.append(worker.ended.addBoth(lambda _, timer=timer: timer.active() and timer.cancel()))
        return defer.DeferredList(waits)
