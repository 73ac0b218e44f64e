"""
DKIM signing in signer processes (mailplat.auth.signing_pool): submitted
mail is signed by a real worker process over its pipes, and a worker that
dies or hangs costs no message: the message is signed in-process instead,
and a new worker is started. Every message is read back from the
recipient's maildir and verified with dkimpy.
"""

import io
import os
import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from mailplat.auth.dkim_keys import DKIMKey, generate
from mailplat.auth.dkim_sign import sign_message
from mailplat.auth.signing_ring import SharedRing, reader
from mailplat.auth.signing_worker import FAILED, REPLY, SIGNED, encode_meta, encode_request, serve
from tests.helpers import in_thread
from tests.test_dkim_sign import MESSAGE, DKIMServer, signatures, submit, verify_with_dkimpy

INCLUDE = [b"from", b"to", b"subject", b"from"]


def running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@defer.inlineCallbacks
def until(condition, timeout=10.0):
    """Wait (without blocking the reactor) until condition() is true."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"not true after {timeout} s: {condition}")


class SignerProcesses(DKIMServer):
    @defer.inlineCallbacks
    def setUp(self):
        yield DKIMServer.setUp(self)
        self.make_key("example.test", "--selector", "s1")
        self.pool = self.server.service.backends.dkim.pool

    def worker_pids(self):
        return [w.transport.pid for w in self.pool.workers if w.alive]

    def assert_signed(self, message):
        self.assertEqual(len(signatures(message)), 1)
        self.assertEqual(verify_with_dkimpy(message, self.records), [True])

    @defer.inlineCallbacks
    def test_submitted_mail_is_signed_by_a_signer_process(self):
        message = yield self.delivered()
        self.assert_signed(message)
        self.assertEqual(self.pool.signed, 1)
        [pid] = self.worker_pids()
        self.assertNotEqual(pid, os.getpid())
        self.assertTrue(running(pid))

    @defer.inlineCallbacks
    def test_a_large_message_is_signed_by_a_signer_process(self):
        body = b"".join(b"line %d of a long message, with  two spaces\r\n" % i for i in range(40000))
        message = yield self.delivered(message=MESSAGE + body)
        self.assert_signed(message)
        self.assertEqual(self.pool.signed, 1)

    @defer.inlineCallbacks
    def test_a_message_too_large_for_the_shared_ring_goes_through_the_pipe(self):
        self.pool.ring_size = 64 * 1024  # before the first message starts the worker
        body = b"".join(b"line %d of a long message\r\n" % i for i in range(4000))  # ~100 KB
        message = yield self.delivered(message=MESSAGE + body)
        self.assert_signed(message)
        self.assertEqual(self.pool.signed, 1)
        [worker] = self.pool.workers
        self.assertNotIn(b"of a long message", worker.ring.memory[:])  # not through the ring

    @defer.inlineCallbacks
    def test_a_signer_killed_with_a_message_in_flight_loses_nothing(self):
        yield self.delivered()  # a worker runs now
        [pid] = self.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # the next message waits for it...
        sending = in_thread(submit, self.server.port("submission"))
        yield until(lambda: any(w.pending for w in self.pool.workers))
        os.kill(pid, signal.SIGKILL)  # ...and it dies
        yield sending
        first, second = self.stored_messages()
        self.assert_signed(second)  # signed in-process
        self.assertEqual(self.pool.signed, 1)
        yield until(lambda: not running(pid))

    @defer.inlineCallbacks
    def test_a_signer_that_gives_no_answer_is_killed_and_the_message_signed_in_process(self):
        yield self.delivered()
        [pid] = self.worker_pids()
        self.pool.timeout = 0.5
        os.kill(pid, signal.SIGSTOP)
        yield in_thread(submit, self.server.port("submission"))
        first, second = self.stored_messages()
        self.assert_signed(second)
        self.assertEqual(self.pool.signed, 1)
        yield until(lambda: not running(pid))

    @defer.inlineCallbacks
    def test_a_new_signer_is_started_after_one_ended(self):
        yield self.delivered()
        [pid] = self.worker_pids()
        self.pool.restart_delay = 0
        os.kill(pid, signal.SIGKILL)
        yield until(lambda: not self.pool.workers)
        yield in_thread(submit, self.server.port("submission"))
        [new] = self.worker_pids()
        self.assertNotEqual(new, pid)
        self.assert_signed(self.stored_messages()[1])
        self.assertEqual(self.pool.signed, 2)

    @defer.inlineCallbacks
    def test_stopping_the_server_ends_its_signers(self):
        yield self.delivered()
        [pid] = self.worker_pids()
        yield self.server.service.stopService()
        self.assertFalse(running(pid))
        self.assertEqual(self.pool.workers, [])

    def stored_messages(self):
        from tests.test_smtp import stored

        return stored(self.server, "bob@example.test")


class SignerAtStart(DKIMServer):
    def test_a_server_with_keys_starts_its_signers_with_itself(self):
        self.make_key("example.test", "--selector", "s1")
        signer = self.server.service.backends.dkim
        self.assertEqual(signer.pool.workers, [])  # no key when the server started
        signer.stopService()
        signer.startService()
        self.assertEqual(len(signer.pool.workers), signer.pool.size)
        return signer.pool.stop()


class WorkerFrames(unittest.TestCase):
    """The worker's loop (mailplat.auth.signing_worker.serve) over in-memory pipes."""

    def setUp(self):
        self.key = DKIMKey("example.test", "s1", "rsa", generate("rsa"))
        public = self.key.txt_value()
        self.records = {"s1._domainkey.example.test": public}

    def replies(self, frames, ring=None):
        out = io.BytesIO()
        serve(io.BytesIO(frames), out, ring)
        data, replies = out.getvalue(), []
        while data:
            request_id, status, size = REPLY.unpack_from(data)
            replies.append((request_id, status, data[REPLY.size : REPLY.size + size]))
            data = data[REPLY.size + size :]
        return replies

    def test_each_request_is_answered_with_its_id_and_a_valid_signature(self):
        message = MESSAGE.replace(b"\r\n", b"\n")
        [(request_id, status, signature)] = self.replies(encode_request(7, encode_meta([self.key], INCLUDE), message))
        self.assertEqual((request_id, status), (7, SIGNED))
        self.assertEqual(verify_with_dkimpy(signature + message, self.records), [True])
        # The same field as signing in-process gives (t= aside: the clock moves).
        ours = sign_message(message, [self.key], INCLUDE)
        self.assertEqual(signature.split(b"t=")[0], ours.split(b"t=")[0])

    def test_a_key_that_cannot_sign_is_answered_with_an_error(self):
        broken = DKIMKey("example.test", "s1", "rsa", b"-----BEGIN RSA PRIVATE KEY-----\nbroken\n")
        frames = (encode_request(1, encode_meta([broken], INCLUDE), MESSAGE)
                  + encode_request(2, encode_meta([self.key], INCLUDE), MESSAGE))
        [(one, failed, text), (two, signed, _)] = self.replies(frames)
        self.assertEqual((one, failed, two, signed), (1, FAILED, 2, SIGNED))
        self.assertTrue(text)

    def test_a_truncated_request_ends_the_worker_without_an_answer(self):
        frame = encode_request(1, encode_meta([self.key], INCLUDE), MESSAGE)
        self.assertEqual(self.replies(frame[:-5]), [])

    def test_a_message_in_the_shared_ring_is_signed(self):
        ring = SharedRing(64 * 1024)
        self.addCleanup(ring.close)
        ring.put(b"x" * 1000)  # not at the start of the ring
        offset = ring.put(MESSAGE)
        frame = encode_request(3, encode_meta([self.key], INCLUDE), MESSAGE, offset)
        self.assertNotIn(b"Hello, Bob.", frame)  # only where it is goes through the pipe
        view = reader(ring.fd, ring.size)
        self.addCleanup(view.close)
        [(request_id, status, signature)] = self.replies(frame, view)
        self.assertEqual((request_id, status), (3, SIGNED))
        self.assertEqual(verify_with_dkimpy(signature + MESSAGE, self.records), [True])

    def test_an_offset_outside_the_ring_ends_the_worker(self):
        ring = SharedRing(64 * 1024)
        self.addCleanup(ring.close)
        view = reader(ring.fd, ring.size)
        self.addCleanup(view.close)
        frame = encode_request(1, encode_meta([self.key], INCLUDE), MESSAGE, 64 * 1024 - 10)
        self.assertEqual(self.replies(frame, view), [])


class Ring(unittest.TestCase):
    """mailplat.auth.signing_ring.SharedRing: space taken at the head, given back from the tail."""

    def setUp(self):
        self.ring = SharedRing(1000)
        self.addCleanup(self.ring.close)

    def test_a_message_is_copied_in_at_its_offset(self):
        self.ring.put(b"a" * 10)
        offset = self.ring.put(b"hello")
        self.assertEqual((offset, self.ring.memory[offset : offset + 5]), (10, b"hello"))

    def test_a_message_larger_than_half_the_ring_goes_by_the_pipe(self):
        self.assertIsNone(self.ring.put(b"x" * 501))

    def test_a_full_ring_takes_nothing_until_space_is_given_back(self):
        self.assertEqual([self.ring.put(b"x" * 400) for _ in range(3)], [0, 400, None])
        self.ring.release()  # the first answered
        self.assertEqual(self.ring.put(b"y" * 300), 0)  # wraps round
        self.assertIsNone(self.ring.put(b"z" * 100))  # the head may not reach the tail (400)
        self.assertEqual(self.ring.put(b"z" * 99), 300)

    def test_an_empty_ring_starts_again_at_zero(self):
        self.ring.put(b"x" * 400)
        self.ring.release()
        self.assertEqual(self.ring.put(b"y" * 500), 0)
