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


@implementer(IMessageSource)
class ReplacedHeaderSource:
    """A source whose first `skip` octets (its header) are replaced by `head`."""

    def __init__(self, head, source, skip):
        self.head = head
        self.source = source
        self.skip = skip
        self.size = len(head) + source.size - skip

    def open(self):
        f = self.source.open()
        left = self.skip
        while left:
            chunk = f.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        return Concatenated(self.head, f)


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

    # IMessageSource.open() gives a seekable file (a check may read the
    # header, seek(0) and read the whole message).
    def seekable(self):
        return self._tail.seekable()

    def tell(self):
        if self._pos < len(self._head):
            return self._pos
        return len(self._head) + self._tail.tell()

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence == io.SEEK_END:
            offset += len(self._head) + self._tail.seek(0, io.SEEK_END)
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        if offset < len(self._head):
            self._pos = offset
            self._tail.seek(0)
        else:
            self._pos = len(self._head)
            self._tail.seek(offset - len(self._head))
        return offset

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

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: os.fstat(self._fd).st_size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b):
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)
