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
import os

from twisted.internet import defer
from twisted.internet.interfaces import IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.auth.signing_ring import RING_SIZE, SharedRing
from mailplat.auth.signing_worker import FAILED, REPLY, encode_meta, encode_request
from mailplat.worker_pool import WorkerPool, WorkerProcess, spawn_worker

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


class SignerProcess(WorkerProcess):
    """One worker: the requests written to it and not yet answered (each kept with whether it holds ring space)."""

    name = "DKIM signer process"
    unavailable = SignerUnavailable

    def __init__(self, pool, ring, requests):
        super().__init__(pool)
        self.ring = ring  # the SharedRing the messages go in
        self.requests = requests  # the RequestPipe to its stdin

    def send(self, request_id, meta, data):
        offset = self.ring.put(data)
        d = self.expect(request_id, offset is not None)
        if offset is None:
            self.requests.write(encode_request(request_id, meta, data))
        else:
            self.requests.write(encode_request(request_id, meta, data, offset))
        return d

    def outReceived(self, data):
        buffer = self.buffer
        buffer += data
        while len(buffer) >= REPLY.size:
            request_id, status, size = REPLY.unpack_from(buffer)
            if len(buffer) < REPLY.size + size:
                return
            payload = bytes(buffer[REPLY.size : REPLY.size + size])
            del buffer[: REPLY.size + size]
            entry = self.answered(request_id)
            if entry is None:
                continue  # answered after its timeout: already signed in-process
            d, _, in_ring = entry
            if in_ring:
                self.ring.release()  # answers come in order: this was the oldest in the ring
            if status == FAILED:
                d.errback(SigningFailed(payload.decode("utf-8", "replace")))
            else:
                d.callback(payload)

    def close_input(self):
        self.requests.finish()

    def released(self):
        self.requests.close()
        self.ring.close()


class SigningPool(WorkerPool):
    """
    Up to `workers` signer processes; L{sign} gives each request to the
    one with the fewest in flight.
    """

    name = "DKIM signer process"
    fallback = "messages are signed in-process"

    def __init__(self, workers=1, timeout=30.0, restart_delay=5.0, reactor=None):
        super().__init__(workers, timeout, restart_delay, reactor)
        self.ring_size = RING_SIZE
        self.signed = 0  # answers from a worker (for tests and benchmarks)
        self._meta = {}  # (keys, include) -> their JSON: a user sends with the same key again and again

    def start(self):
        """Start the workers (their start-up, importing dkimpy, is then paid before the first message)."""
        self.running = True
        self._start_workers()

    def _spawn(self):
        ring = SharedRing(self.ring_size)
        try:
            stdin, requests = os.pipe()
        except OSError:
            ring.close()
            raise
        worker = SignerProcess(self, ring, RequestPipe(self.reactor, requests))
        try:
            spawn_worker(self.reactor, worker, "mailplat.auth.signing_worker", (str(RING_FD), str(ring.size)),
                         childFDs={0: stdin, 1: "r", 2: "r", RING_FD: ring.fd})
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
