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

import os

from twisted.internet import defer
from twisted.logger import Logger

from mailplat.imap.envelope_worker import ENVELOPE, REQUEST, SORT_KEYS, decode_answer, encode_request
from mailplat.worker_pool import WorkerPool, WorkerProcess, spawn_worker

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


class EnvelopeProcess(WorkerProcess):
    """One worker and its requests not yet answered (answered in order)."""

    name = "envelope process"
    unavailable = EnvelopeUnavailable

    def send(self, request_id, paths, kind=ENVELOPE):
        d = self.expect(request_id)
        self.transport.write(encode_request(request_id, paths, kind))
        return d

    def outReceived(self, data):
        buffer = self.buffer
        buffer += data
        while len(buffer) >= REQUEST.size:
            request_id, size = REQUEST.unpack_from(buffer)
            if len(buffer) < REQUEST.size + size:
                return
            payload = bytes(buffer[REQUEST.size : REQUEST.size + size])
            del buffer[: REQUEST.size + size]
            entry = self.answered(request_id)
            if entry is not None:  # else answered after its timeout: already read in-process
                entry[0].callback(decode_answer(payload))


class EnvelopePool(WorkerPool):
    """Up to `workers` envelope processes, started and stopped with the server."""

    name = "envelope process"
    fallback = "envelopes are computed in-process"

    def __init__(self, workers=None, timeout=30.0, restart_delay=5.0, reactor=None):
        super().__init__(default_workers() if workers is None else workers, timeout, restart_delay, reactor)
        self.answered = 0  # messages computed by a worker (for tests and benchmarks)

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

    def _spawn(self):
        worker = EnvelopeProcess(self)
        spawn_worker(self.reactor, worker, "mailplat.imap.envelope_worker")
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

    stopService = WorkerPool.stop
