"""
The shared memory a message travels in to a DKIM signer process.

Writing 100 KB into a pipe is a system call long enough for the server's
other threads (the maildir deliveries) to take the GIL, and the reactor
then waits for it; a copy into shared memory is a memcpy, and only a
small frame goes through the pipe. The signer answers in order, so the
space is a ring: taken at the head, given back from the tail as the
answers come. A message that does not fit goes through the pipe.
"""

import collections
import mmap
import os

RING_SIZE = 4 * 1024 * 1024  # twenty 100 KB messages in flight use half


class SharedRing:
    """The parent's side: a memfd (passed to the worker as an fd) and who holds which bytes."""

    def __init__(self, size=RING_SIZE):
        self.size = size
        self.fd = os.memfd_create("mailplat-dkim-ring")
        os.ftruncate(self.fd, size)
        self.memory = mmap.mmap(self.fd, size)
        self.head = 0
        self.held = collections.deque()  # (start, end) of each message in flight, oldest first

    def put(self, data):
        """Copy `data` in and return its offset, or None when it does not fit now."""
        n = len(data)
        start = self._place(n)
        if start is None:
            return None
        self.memory[start : start + n] = data
        self.head = start + n
        self.held.append((start, start + n))
        return start

    def _place(self, n):
        if n == 0 or n > self.size // 2:
            return None
        if not self.held:
            return 0
        tail = self.held[0][0]
        if self.head > tail:  # in use: [tail, head)
            if self.size - self.head >= n:
                return self.head
            return 0 if tail > n else None  # wrap round, the head staying short of the tail
        # wrapped, in use: [tail, size) and [0, head)
        return self.head if tail - self.head > n else None

    def release(self):
        """The oldest message in flight was answered: its bytes are free."""
        self.held.popleft()

    def close(self):
        self.memory.close()
        os.close(self.fd)


def reader(fd, size):
    """The worker's side: the same memory, read-only."""
    return mmap.mmap(fd, size, prot=mmap.PROT_READ)
