"""
Durable delivery into one maildir folder: write to tmp/, fsync, rename into
new/, fsync new/. When `write_message` returns the message survives a crash;
if it raises, nothing half-written is left in new/.

These functions block; the store runs them in the reactor's thread pool.
"""

import errno
import os

from mailplat.interfaces import TemporaryFailure
from mailplat.store.maildir import names

SUBDIRS = ("tmp", "new", "cur")
CHUNK = 256 * 1024


def ensure_maildir(path):
    """Create `path` with tmp/, new/ and cur/ (mode 0700) if missing."""
    for sub in SUBDIRS:
        full = os.path.join(path, sub)
        if not os.path.isdir(full):
            os.makedirs(full, mode=0o700, exist_ok=True)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_message(path, source, flags="", cur=False, mtime=None):
    """
    Store `source` (an IMessageSource) in the maildir at `path`.

    @param flags: info letters; a message with flags goes to cur/ (as IMAP
        APPEND does), without them to new/ (as a delivery does).
    @param cur: put it in cur/ even without flags (IMAP APPEND, COPY).
    @param mtime: the file's mtime, which is the message's INTERNALDATE
        (Dovecot keeps the received date there too).
    @return: the new message's key (file name without the info part).
    @raise TemporaryFailure: on any OS error, naming it.
    """
    base = names.unique_name()
    tmp = os.path.join(path, "tmp", base)
    try:
        ensure_maildir(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise _temporary(e, path)
    try:
        # W= counts CRLF line ends: a bare LF becomes two octets, an
        # existing CRLF (an IMAP APPEND may keep them) stays two.
        size = newlines = 0
        last = b""
        try:
            with source.open() as reader:
                while True:
                    chunk = reader.read(CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    size += len(chunk)
                    joined = last + chunk[:1]
                    newlines += chunk.count(b"\n") - chunk.count(b"\r\n") - (joined == b"\r\n")
                    last = chunk[-1:]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
        key = names.with_sizes(base, size, size + newlines)
        if flags or cur:
            final = os.path.join(path, "cur", f"{key}:2,{flags}")
        else:
            final = os.path.join(path, "new", key)
        os.rename(tmp, final)
        fsync_dir(os.path.dirname(final))
        return key
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _temporary(e, path)


def _temporary(error, path):
    reason = errno.errorcode.get(error.errno, "error")
    text = f"cannot write to mailbox ({reason}: {error.strerror})"
    # A user over quota is "mailbox full" (RFC 3463 4.2.2); anything else,
    # a full disk included, is the mail system's trouble: 4.3.0, retry later.
    failure = TemporaryFailure(text, "4.2.2" if error.errno == errno.EDQUOT else "4.3.0")
    failure.path = path
    return failure
