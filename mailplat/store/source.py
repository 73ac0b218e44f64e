"""
Message sources: the bytes of one message, readable as many times as there
are recipients, without holding a large message in memory twice.
"""

import io
import os
import tempfile

from zope.interface import implementer

from mailplat.interfaces import IMessageSource


@implementer(IMessageSource)
class BytesSource:
    """A message held in memory."""

    def __init__(self, data):
        self.data = bytes(data)
        self.size = len(self.data)

    def open(self):
        return io.BytesIO(self.data)


@implementer(IMessageSource)
class PrefixedSource:
    """Another source with header lines (Return-Path, Received) put in front."""

    def __init__(self, prefix, source):
        self.prefix = prefix
        self.source = source
        self.size = len(prefix) + source.size

    def open(self):
        return Concatenated(self.prefix, self.source.open())


class Concatenated(io.RawIOBase):
    """A read-only file: the bytes `head`, then the rest of the open file `tail_file`."""

    def __init__(self, head, tail_file):
        self._head = head
        self._pos = 0
        self._tail = tail_file

    def readable(self):
        return True

    def read(self, n=-1):
        if self._pos < len(self._head):
            if n is None or n < 0:
                out = self._head[self._pos :] + self._tail.read()
                self._pos = len(self._head)
                return out
            out = self._head[self._pos : self._pos + n]
            self._pos += len(out)
            return out
        return self._tail.read(n)

    def readinto(self, b):
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self):
        self._tail.close()
        super().close()


@implementer(IMessageSource)
class SpooledSource:
    """
    A message being received: kept in memory while small, moved to a
    temporary file under the state directory once it passes `max_memory`.
    """

    def __init__(self, spool_dir, max_memory=1024 * 1024):
        self._spool_dir = spool_dir
        self._max_memory = max_memory
        self._chunks = []
        self._file = None
        self.size = 0

    def write(self, data):
        self.size += len(data)
        if self._file is None:
            self._chunks.append(data)
            if self.size > self._max_memory:
                os.makedirs(self._spool_dir, exist_ok=True)
                self._file = tempfile.TemporaryFile(dir=self._spool_dir)
                self._file.write(b"".join(self._chunks))
                self._chunks = None
        else:
            self._file.write(data)

    def open(self):
        if self._file is None:
            return io.BytesIO(b"".join(self._chunks))
        self._file.flush()
        return _FileView(self._file.fileno())

    def discard(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunks = []


class _FileView(io.RawIOBase):
    """An independent reader over an open file descriptor (pread)."""

    def __init__(self, fd):
        self._fd = fd
        self._pos = 0

    def readable(self):
        return True

    def read(self, n=-1):
        if n is None or n < 0:
            n = os.fstat(self._fd).st_size - self._pos
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)
