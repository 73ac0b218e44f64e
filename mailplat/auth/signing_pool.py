"""
A small pool of DKIM signer processes (mailplat.auth.signing_worker), so
that signing runs on another core than the reactor.

The reactor only copies the message into memory it shares with the
worker (mailplat.auth.signing_ring), writes a small request into the
worker's stdin and reads the signature back. A request whose worker dies, or does not answer within `timeout`
(the worker is then killed), fails with L{SignerUnavailable}, and so does
one made while no worker runs: the caller signs that message in-process
(mailplat.auth.dkim_sign), so no message is lost or left hanging. A worker
that ended is started again on the next request, at most once every
`restart_delay` seconds.
"""

import collections
import fcntl
import itertools
import os
import sys
import time

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

import mailplat
from mailplat.auth.signing_ring import RING_SIZE, SharedRing
from mailplat.auth.signing_worker import FAILED, REPLY, encode_meta, encode_request

log = Logger()

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python 3.10+ names it
PIPE_SIZE = 1024 * 1024
RING_FD = 3  # the worker's file descriptor for the shared ring


class SignerUnavailable(Exception):
    """No signer process could sign this message: sign it in-process."""


class SigningFailed(Exception):
    """The signer process could not sign this message (its error text)."""


@implementer(IWriteDescriptor)
class RequestPipe:
    """
    The write end of a worker's stdin. A frame is written at once, not at
    the reactor's next turn as a process transport would: the worker
    starts on it while the reactor goes on with other connections. What
    the pipe does not take waits for the reactor to find it writable.
    """

    def __init__(self, reactor, fd):
        self.reactor = reactor
        self.fd = fd
        self.waiting = collections.deque()  # frames (or their ends) not yet in the pipe, in order
        self.close_when_done = False
        os.set_blocking(fd, False)
        try:
            # 1 MB rather than 64 KB: room for the messages too large for the ring.
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # above /proc/sys/fs/pipe-max-size: the default size
            pass

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "dkim-signer-pipe"

    def write(self, data):
        if self.fd < 0:
            return  # the worker is gone; its end (processEnded) fails the requests
        if not self.waiting:
            data = data[self._write(data):]
            if not data or self.fd < 0:
                return
            self.reactor.addWriter(self)
        self.waiting.append(data)

    def _write(self, data):
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError:  # EPIPE: the worker ended
            self.close()
            return len(data)

    def doWrite(self):
        while self.waiting and self.fd >= 0:
            data = self.waiting[0]
            n = self._write(data)
            if n < len(data):
                self.waiting[0] = data[n:]
                return None
            self.waiting.popleft()
        if self.fd >= 0:
            self.reactor.removeWriter(self)
            if self.close_when_done:
                self.close()
        return None

    def finish(self):
        """Close once what is waiting is in the pipe: the worker answers it, then sees the end."""
        if self.waiting:
            self.close_when_done = True
        else:
            self.close()

    def connectionLost(self, reason):
        self.close()

    def close(self):
        if self.fd >= 0:
            self.reactor.removeWriter(self)
            os.close(self.fd)
            self.fd = -1
            self.waiting.clear()


class SignerProcess(protocol.ProcessProtocol):
    """One worker: the requests written to it and not yet answered."""

    def __init__(self, pool, ring, requests):
        self.pool = pool
        self.ring = ring  # the SharedRing the messages go in
        self.requests = requests  # the RequestPipe to its stdin
        self.pending = {}  # request id -> (Deferred, timeout DelayedCall, whether it holds ring space)
        self.buffer = b""
        self.ended = defer.Deferred()
        self.alive = True

    def send(self, request_id, meta, data):
        d = defer.Deferred()
        timer = self.pool.reactor.callLater(self.pool.timeout, self.hung, request_id)
        offset = self.ring.put(data)
        self.pending[request_id] = (d, timer, offset is not None)
        if offset is None:
            self.requests.write(encode_request(request_id, meta, data))
        else:
            self.requests.write(encode_request(request_id, meta, data, offset))
        return d

    def hung(self, request_id):
        log.error("DKIM signer process {pid} gave no answer in {timeout} s; killed",
                  pid=self.transport.pid, timeout=self.pool.timeout)
        self.pending.pop(request_id)[0].errback(SignerUnavailable("the signer process gave no answer"))
        self.kill()

    def kill(self):
        self.alive = False
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def outReceived(self, data):
        self.buffer += data
        while len(self.buffer) >= REPLY.size:
            request_id, status, size = REPLY.unpack_from(self.buffer)
            if len(self.buffer) < REPLY.size + size:
                return
            payload = self.buffer[REPLY.size : REPLY.size + size]
            self.buffer = self.buffer[REPLY.size + size :]
            entry = self.pending.pop(request_id, None)
            if entry is None:
                continue  # answered after its timeout: already signed in-process
            d, timer, in_ring = entry
            timer.cancel()
            if in_ring:
                self.ring.release()  # answers come in order: this was the oldest in the ring
            if status == FAILED:
                d.errback(SigningFailed(payload.decode("utf-8", "replace")))
            else:
                d.callback(payload)

    def errReceived(self, data):
        for line in data.decode("utf-8", "replace").splitlines():
            log.warn("DKIM signer process {pid}: {line}", pid=self.transport.pid, line=line)

    def processEnded(self, reason):
        self.alive = False
        pending, self.pending = self.pending, {}
        for d, timer, _ in pending.values():
            timer.cancel()
            d.errback(SignerUnavailable(f"the signer process ended: {reason.value}"))
        self.pool.worker_ended(self, reason)
        self.requests.close()
        self.ring.close()
        self.ended.callback(None)


class SigningPool:
    """
    Up to `workers` signer processes; L{sign} gives each request to the
    one with the fewest in flight.
    """

    def __init__(self, workers=1, timeout=30.0, restart_delay=5.0, reactor=None):
        self._reactor = reactor
        self.size = workers
        self.timeout = timeout
        self.restart_delay = restart_delay
        self.ring_size = RING_SIZE
        self.workers = []
        self.running = False
        self._ids = itertools.count(1)
        self._last_start = None
        self._restart = None  # the DelayedCall that starts a worker again, or None
        self.signed = 0  # answers from a worker (for tests and benchmarks)
        self._meta = {}  # (keys, include) -> their JSON: a user sends with the same key again and again

    @property
    def reactor(self):
        if self._reactor is None:  # not imported with the module: the CLI makes pools it never starts
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def start(self):
        """Start the workers (their start-up, importing dkimpy, is then paid before the first message)."""
        self.running = True
        for _ in range(self.size - len(self.workers)):
            try:
                self._spawn()
            except Exception:  # no process (EAGAIN, EMFILE, ...): in-process, and a new try later
                log.failure("DKIM signer process not started; messages are signed in-process")
                return

    def _spawn(self):
        self._last_start = time.monotonic()
        ring = SharedRing(self.ring_size)
        try:
            stdin, requests = os.pipe()
        except OSError:
            ring.close()
            raise
        worker = SignerProcess(self, ring, RequestPipe(self.reactor, requests))
        # The worker imports the mailplat this server runs, wherever it came from.
        root = os.path.dirname(os.path.dirname(os.path.abspath(mailplat.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self.reactor.spawnProcess(
                worker, sys.executable,
                [sys.executable, "-m", "mailplat.auth.signing_worker", str(RING_FD), str(ring.size)],
                env=env, childFDs={0: stdin, 1: "r", 2: "r", RING_FD: ring.fd},
            )
        except Exception:
            worker.requests.close()
            ring.close()
            raise
        finally:
            os.close(stdin)  # the worker's copy is the one that counts
        self.workers.append(worker)

    def sign(self, data, keys, include):
        """
        A Deferred firing with the DKIM-Signature fields for `data`; fails
        with L{SignerUnavailable} (sign it in-process) or L{SigningFailed}.
        """
        if not self.running:
            return defer.fail(SignerUnavailable("no signer process is running"))
        if sum(w.alive for w in self.workers) < self.size:
            self._start_again()
        live = [w for w in self.workers if w.alive]
        if not live:
            return defer.fail(SignerUnavailable("no signer process is running"))
        worker = min(live, key=lambda w: len(w.pending)) if len(live) > 1 else live[0]
        meta_key = (tuple((k.domain, k.selector, k.algorithm, k.private) for k in keys), tuple(include))
        meta = self._meta.get(meta_key)
        if meta is None:
            if len(self._meta) > 256:
                self._meta.clear()
            meta = self._meta[meta_key] = encode_meta(keys, include)
        d = worker.send(next(self._ids), meta, data)
        return d.addCallback(self._count)

    def _count(self, signature):
        self.signed += 1
        return signature

    def _start_again(self):
        if self._restart is not None:
            return
        wait = self.restart_delay - (time.monotonic() - self._last_start) if self._last_start else 0

        def restart():
            self._restart = None
            if self.running:
                self.start()

        if wait <= 0:
            restart()
        else:
            self._restart = self.reactor.callLater(wait, restart)

    def worker_ended(self, worker, reason):
        if worker in self.workers:
            self.workers.remove(worker)
        if self.running:
            log.error("DKIM signer process ended ({reason}); messages are signed in-process until one runs again",
                      reason=reason.value)

    def stop(self):
        """Close the workers' input: each ends once its requests are answered. A Deferred."""
        self.running = False
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        waits = []
        for worker in list(self.workers):
            worker.requests.finish()
            timer = self.reactor.callLater(self.timeout, worker.kill)
            waits.append(worker.ended.addBoth(lambda _, timer=timer: timer.active() and timer.cancel()))
        return defer.DeferredList(waits)
