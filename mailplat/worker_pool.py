"""
What the server's helper processes (DKIM signers, envelope parsers) share:
a worker with its requests in flight, each with a timeout that kills a
worker that hangs, and a pool that starts workers, starts one that ended
again at most once every `restart_delay` seconds, and stops them by
closing their input. What a request and an answer look like is each
worker's own (mailplat.auth.signing_pool, mailplat.imap.envelope_pool).
"""

import itertools
import os
import sys
import time

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

import mailplat

log = Logger()


def spawn_worker(reactor, worker, module, args=(), childFDs=None):
    """Run `python -m module` with `worker` as its protocol, importing the mailplat this server runs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(mailplat.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    reactor.spawnProcess(worker, sys.executable, [sys.executable, "-m", module, *args],
                         env=env, childFDs=childFDs or {0: "w", 1: "r", 2: "r"})


class WorkerProcess(protocol.ProcessProtocol):
    """One worker and its requests not yet answered: `pending` maps a request id to (Deferred, timer, *kept)."""

    name = "worker process"  # in the log
    unavailable = Exception  # what a request fails with when the worker can't answer

    def __init__(self, pool):
        self.pool = pool
        self.pending = {}
        self.buffer = bytearray()
        self.ended = defer.Deferred()
        self.alive = True

    def expect(self, request_id, *kept):
        """A Deferred for the answer to `request_id`, failed if none comes within the pool's timeout."""
        d = defer.Deferred()
        timer = self.pool.reactor.callLater(self.pool.timeout, self.hung, request_id)
        self.pending[request_id] = (d, timer, *kept)
        return d

    def answered(self, request_id):
        """The pending entry an answer is for, its timer cancelled; None if it was given up already."""
        entry = self.pending.pop(request_id, None)
        if entry is not None:
            entry[1].cancel()
        return entry

    def hung(self, request_id):
        log.error("{name} {pid} gave no answer in {timeout} s; killed",
                  name=self.name, pid=self.transport.pid, timeout=self.pool.timeout)
        self.pending.pop(request_id)[0].errback(self.unavailable(f"the {self.name} gave no answer"))
        self.kill()

    def kill(self):
        self.alive = False
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def close_input(self):
        """No more requests: the worker ends once it answered those it has."""
        try:
            self.transport.closeStdin()
        except Exception:
            pass

    def errReceived(self, data):
        for line in data.decode("utf-8", "replace").splitlines():
            log.warn("{name} {pid}: {line}", name=self.name, pid=self.transport.pid, line=line)

    def processEnded(self, reason):
        self.alive = False
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            entry[1].cancel()
            entry[0].errback(self.unavailable(f"the {self.name} ended: {reason.value}"))
        self.pool.worker_ended(self, reason)
        self.released()
        self.ended.callback(None)

    def released(self):
        """The process ended: give back what it held besides its pipes."""


class WorkerPool:
    """Up to `size` workers; `name` and `fallback` say in the log what runs instead while none does."""

    name = "worker process"
    fallback = "the work is done in-process"

    def __init__(self, size, timeout, restart_delay, reactor=None):
        self._reactor = reactor
        self.size = size
        self.timeout = timeout
        self.restart_delay = restart_delay
        self.workers = []
        self.running = False
        self._ids = itertools.count(1)
        self._last_start = None
        self._restart = None  # the DelayedCall that starts workers again, or None

    @property
    def reactor(self):
        if self._reactor is None:  # not imported with the module: the CLI makes pools it never starts
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def _spawn(self):
        """Start one worker and add it to L{workers}; raises when no process can be made."""
        raise NotImplementedError

    def _start_workers(self):
        for _ in range(self.size - len(self.workers)):
            self._last_start = time.monotonic()
            try:
                self._spawn()
            except Exception:  # no process (EAGAIN, EMFILE, ...): in-process, and a new try later
                log.failure("{name} not started; {fallback}", name=self.name, fallback=self.fallback)
                return

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
            log.error("{name} ended ({reason}); {fallback} until one runs again",
                      name=self.name, reason=reason.value, fallback=self.fallback)

    def stop(self):
        """Close the workers' input: each ends once its requests are answered. A Deferred."""
        self.running = False
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        waits = []
        for worker in list(self.workers):
            worker.close_input()
            timer = self.reactor.callLater(self.timeout, worker.kill)
            waits.append(worker.ended.addBoth(lambda _, timer=timer: timer.active() and timer.cancel()))
        return defer.DeferredList(waits)
