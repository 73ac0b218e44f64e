"""
Locking an mbox the way mutt, procmail, Postfix and Dovecot do, so none of
them writes while another reads or writes:

1. a dotlock `<mbox>.lock`, made with the link trick (a unique file linked
   to the lock name: atomic on NFS too, as liblockfile and Dovecot do);
   a lock left by a dead process of this host, or older than
   STALE_SECONDS (mutt and Dovecot take over old locks too), is removed;
2. then an fcntl lock on the mbox itself (read lock to read, write lock to
   write), as mutt and Dovecot's default `mbox_write_locks = dotlock fcntl`.

Taking the dotlock before opening the file matters: a writer that replaces
the file by rename (as the rewrite does) can't leave a waiter holding the
old file. Both waits give up after `timeout` with a TemporaryFailure.
Blocking; run in a thread.
"""

import errno
import fcntl
import itertools
import os
import socket
import time
from contextlib import contextmanager

from twisted.logger import Logger

from mailplat.interfaces import TemporaryFailure

log = Logger()

LOCK_SUFFIX = ".lock"
STALE_SECONDS = 300
TIMEOUT = 30.0
HOST = socket.gethostname() or "localhost"
_unique = itertools.count()
_warned = set()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(lock, stale_seconds):
    """The stat of `lock` when it may be taken over, else None."""
    try:
        st = os.stat(lock)
        with open(lock, "rb") as f:
            owner = f.read(200).decode("ascii", "replace").strip()
    except (FileNotFoundError, IsADirectoryError):
        return None
    except OSError:
        return None
    pid, _, host = owner.partition(":")
    if host == HOST and pid.isdigit() and not _alive(int(pid)):
        return st
    if time.time() - st.st_mtime > stale_seconds:
        return st
    return None


def _try_dotlock(lock):
    """One attempt; True when we hold the lock now."""
    directory = os.path.dirname(lock) or "."
    tmp = os.path.join(directory, f".{os.path.basename(lock)}.{HOST}.{os.getpid()}.{next(_unique)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, f"{os.getpid()}:{HOST}\n".encode())
    finally:
        os.close(fd)
    try:
        try:
            os.link(tmp, lock)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                # The link may have worked with a lost reply (NFS): the
                # link count says.
                return os.stat(tmp).st_nlink == 2
            # No hard links here: O_EXCL, as procmail falls back to.
            try:
                os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return True
            except FileExistsError:
                return False
    finally:
        os.unlink(tmp)


def acquire_dotlock(path, timeout=TIMEOUT, stale_seconds=STALE_SECONDS):
    """
    @return: the lock's path, or None when the directory allows no
        dotlock (a system spool without write permission): fcntl alone.
    @raise TemporaryFailure: still locked after `timeout` seconds.
    """
    lock = path + LOCK_SUFFIX
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            if _try_dotlock(lock):
                return lock
        except PermissionError:
            if lock not in _warned:
                _warned.add(lock)
                log.warn("{path}: no permission to create a dotlock; locking with fcntl only", path=lock)
            return None
        old = _stale(lock, stale_seconds)
        if old is not None:
            try:
                st = os.stat(lock)
                # Only remove the very lock judged stale, not a fresh one.
                if (st.st_ino, st.st_mtime_ns) == (old.st_ino, old.st_mtime_ns):
                    os.unlink(lock)
                    log.warn("{lock}: removed a stale dotlock", lock=lock)
                    continue
            except FileNotFoundError:
                continue
        if time.monotonic() >= deadline:
            raise TemporaryFailure(f"mailbox is locked: {lock} (held longer than {timeout:g}s)", "4.2.0")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def release_dotlock(lock):
    if lock is None:
        return
    try:
        os.unlink(lock)
    except FileNotFoundError:
        log.warn("{lock}: our dotlock was removed by someone else", lock=lock)


def fcntl_lock(fd, exclusive, deadline, path):
    pause = 0.002
    kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    while True:
        try:
            fcntl.lockf(fd, kind | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise TemporaryFailure(f"mailbox is locked: {path} (fcntl lock held by another program)", "4.2.0")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


@contextmanager
def locked(path, write, timeout=TIMEOUT, create=False, dotlock=True):
    """
    Hold `path` locked; yields an fd of the file (read-write for `write`),
    or None when it does not exist (and `create` is false).

    Readers take the dotlock too: procmail and Postfix lock with a dotlock
    alone while they append, and a half-appended message must not be read.
    """
    deadline = time.monotonic() + timeout
    lock = acquire_dotlock(path, timeout) if dotlock else None
    try:
        while True:
            flags = os.O_RDWR if write else os.O_RDONLY
            try:
                fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o600)
            except FileNotFoundError:
                yield None
                return
            try:
                fcntl_lock(fd, write, deadline, path)
                # Replaced meanwhile by a program that took no dotlock: lock the new one.
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield fd
                    return
            finally:
                os.close(fd)  # also drops the fcntl lock
            if time.monotonic() >= deadline:
                raise TemporaryFailure(f"mailbox keeps changing: {path}", "4.2.0")
    finally:
        release_dotlock(lock)
