"""
A folder's UID list, in Dovecot's `dovecot-uidlist` format (version 3), so
that UIDs survive a move between Dovecot and mailplat:

    3 V<uidvalidity> N<nextuid> [G<guid>] [other fields]
    <uid> [<ext> ...] :<filename>

New UIDs are handed out only while holding `dovecot-uidlist.lock` (a
dotlock, as Dovecot takes it) and after re-reading the file under the lock,
so two processes serving one maildir never give out the same UID. Records
are appended and fsync'd; a rewrite (compaction) goes through a temporary
file, fsync and rename.

Everything here blocks; callers run it in a thread.
"""

import errno
import os
import time
import uuid
from sys import intern
from contextlib import contextmanager

from mailplat.interfaces import TemporaryFailure
from mailplat.store.maildir import names
from mailplat.store.maildir.deliver import fsync_dir

FILENAME = "dovecot-uidlist"
LOCK_SUFFIX = ".lock"
# Dovecot: MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT, 2 minutes.
STALE_LOCK_SECONDS = 120
LOCK_TIMEOUT = 30


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_stale(lock):
    """A lock left by a dead process on this host, or untouched for too long."""
    try:
        st = os.stat(lock)
        with open(lock, "r", errors="replace") as f:
            owner = f.read(200).strip()
    except FileNotFoundError:
        return None
    pid, _, host = owner.partition(":")
    if host == names.HOST and pid.isdigit() and not _alive(int(pid)):
        return st
    if time.time() - st.st_mtime > STALE_LOCK_SECONDS:
        return st
    return False


@contextmanager
def dotlock(path, timeout=LOCK_TIMEOUT):
    """
    Hold `path`.lock, created with O_EXCL as Dovecot's dotlocks are; the
    content `pid:host` lets a later process on this host see that the owner
    died and take the lock over.
    """
    lock = path + LOCK_SUFFIX
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            stale = _lock_is_stale(lock)
            if stale:
                try:
                    st = os.stat(lock)
                    # Only remove the very lock judged stale, not a fresh one.
                    if (st.st_ino, st.st_mtime_ns) == (stale.st_ino, stale.st_mtime_ns):
                        os.unlink(lock)
                except FileNotFoundError:
                    pass
                continue
            if time.monotonic() > deadline:
                raise TemporaryFailure(f"{lock}: still locked after {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            continue
        except OSError as e:
            raise TemporaryFailure(f"{lock}: cannot lock ({e.strerror})")
        try:
            os.write(fd, f"{os.getpid()}:{names.HOST}".encode("ascii", "replace"))
        finally:
            os.close(fd)
        break
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass


# Dovecot keeps one in the account root so that a folder deleted and created
# again never gets an UIDVALIDITY it had before (RFC 3501 2.3.1.1).
UIDVALIDITY_FILE = "dovecot-uidvalidity"


def next_uidvalidity(root, floor=0):
    """
    A new UIDVALIDITY for a folder of the account at `root`: the time, but
    always above any this account handed out before and above `floor`.
    The file holds the last value handed out, in hex (as Dovecot's does).
    """
    path = os.path.join(root, UIDVALIDITY_FILE)
    with dotlock(path):
        try:
            with open(path, "rb") as f:
                known = int(f.read().strip() or b"0", 16)
        except (FileNotFoundError, ValueError):
            known = 0
        value = max(int(time.time()), known + 1, floor + 1) & 0xFFFFFFFF or 1
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(b"%08x" % value)
            os.rename(tmp, path)
        except OSError as e:
            raise _failure(path, e)
    return value


def _stamp(st):
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class UidList:
    """
    The UID <-> key map of one folder as last read from disk.

    `uids` maps keys (file names without the `:2,` info) to UIDs; it may
    hold keys whose files are gone (compacted away now and then).
    """

    def __init__(self, folder_path):
        self.folder_path = folder_path
        self.path = os.path.join(folder_path, FILENAME)
        self.uidvalidity = None
        self.nextuid = 1
        self.uids = {}
        self.header = {}  # other header fields (G<guid>, ...) kept on rewrite
        self.stamp = None  # (inode, size, mtime_ns) of what we read
        self.records = 0  # lines in the file, for deciding to compact

    def relocate(self, folder_path):
        self.folder_path = folder_path
        self.path = os.path.join(folder_path, FILENAME)

    def adopt(self, stamp, uidvalidity, nextuid, uids, records):
        """Take the map from an index that saw the file with this stamp."""
        self.stamp = tuple(stamp)
        self.uidvalidity = uidvalidity
        self.nextuid = nextuid
        self.uids = dict(uids)
        self.records = records

    def current_stamp(self):
        try:
            return _stamp(os.stat(self.path))
        except FileNotFoundError:
            return None

    def refresh(self):
        """
        Re-read the file if it changed since the last read.

        @return: 'missing' if there is no file, 'changed' if re-read,
            None if unchanged.
        """
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            self.stamp = None
            return "missing"
        with f:
            st = os.fstat(f.fileno())
            stamp = _stamp(st)
            if stamp == self.stamp:
                return None
            old = self.stamp
            if old is not None and old[0] == stamp[0] and stamp[1] > old[1] and self.uidvalidity is not None:
                # Same file, grown: only records were appended.
                f.seek(old[1])
                data = f.read()
                self._parse_records(data, old[1], stamp)
            else:
                self._parse(f.read(), stamp)
        return "changed"

    def _parse(self, data, stamp):
        first, _, rest = data.partition(b"\n")
        fields = first.decode("ascii", "replace").split()
        if not fields or not fields[0].isdigit():
            raise TemporaryFailure(f"{self.path}: not a dovecot-uidlist (bad header)")
        version = int(fields[0])
        header = {}
        if version == 1:
            # Courier-compatible: "1 <uidvalidity> <nextuid>"
            if len(fields) >= 3:
                header["V"], header["N"] = fields[1], fields[2]
        else:
            for field in fields[1:]:
                header[field[:1]] = field[1:]
        try:
            self.uidvalidity = int(header.pop("V"))
            nextuid = int(header.pop("N", "1"))
        except (KeyError, ValueError):
            raise TemporaryFailure(f"{self.path}: header has no usable V/N fields")
        self.header = header
        self.uids = {}
        self.records = 0
        self.nextuid = max(nextuid, 1)
        self._parse_records(rest, len(first) + 1, stamp)

    def _parse_records(self, data, offset, stamp):
        end = data.rfind(b"\n")
        # A record half-written by another process (no lock held by us) is
        # read next time; the stamp then is that of the complete part.
        complete = data[: end + 1] if end >= 0 else b""
        uids = self.uids
        top = self.nextuid - 1
        count = 0
        for line in complete.decode("utf-8", "surrogateescape").split("\n"):
            if not line:
                continue
            uid_text, _, rest = line.partition(" ")
            if not uid_text.isdigit():
                continue
            colon = rest.find(":")
            if colon >= 0 and (colon == 0 or rest[colon - 1] == " "):
                filename = rest[colon + 1 :]  # version 3: extensions, then :filename
            else:
                filename = rest.rsplit(" ", 1)[-1]  # version 1/2
            key = intern(filename.partition(":")[0])
            if not key:
                continue
            uid = int(uid_text)
            uids[key] = uid
            count += 1
            if uid > top:
                top = uid
        self.records += count
        self.nextuid = top + 1
        if len(complete) == len(data):
            self.stamp = stamp
        else:
            ino, _, mtime = stamp
            self.stamp = (ino, offset + len(complete), -1)

    # --- writing (call with the lock held) -----------------------------------

    def create(self, uidvalidity, entries=(), nextuid=1):
        """Write a fresh file: header and `entries` [(uid, key)]."""
        entries = sorted(entries)
        self.uidvalidity = uidvalidity
        # Dovecot's header carries the folder's 128-bit GUID.
        self.header = {"G": uuid.uuid4().hex}
        self.uids = {key: uid for uid, key in entries}
        self.nextuid = max([nextuid] + [uid + 1 for uid, _ in entries[-1:]])
        self._rewrite(entries)

    def _rewrite(self, entries):
        extra = " ".join(f"{k}{v}" for k, v in sorted(self.header.items()))
        head = f"3 V{self.uidvalidity} N{self.nextuid}" + (f" {extra}" if extra else "") + "\n"
        body = "".join(f"{uid} :{key}\n" for uid, key in entries)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        data = (head + body).encode("utf-8", "surrogateescape")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            fsync_dir(self.folder_path)
            self.stamp = _stamp(os.stat(self.path))
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise _failure(self.path, e)
        self.records = len(entries)

    def assign(self, keys):
        """
        Give each of `keys` (in order) the next UID, appended durably.
        Keys already in the file keep their UID. @return: {key: uid}.
        """
        out, lines = {}, []
        for key in keys:
            uid = self.uids.get(key)
            if uid is None:
                uid = self.nextuid
                self.nextuid += 1
                self.uids[key] = uid
                lines.append(f"{uid} :{key}\n")
            out[key] = uid
        if lines:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
                try:
                    _write_all(fd, "".join(lines).encode("utf-8", "surrogateescape"))
                    os.fsync(fd)
                    self.stamp = _stamp(os.fstat(fd))
                finally:
                    os.close(fd)
            except OSError as e:
                raise _failure(self.path, e)
            self.records += len(lines)
        return out

    def compact(self, live_keys):
        """Rewrite the file with only the records of `live_keys`."""
        entries = sorted((uid, key) for key, uid in self.uids.items() if key in live_keys)
        self.uids = {key: uid for uid, key in entries}
        self._rewrite(entries)

    def locked(self, timeout=LOCK_TIMEOUT):
        return dotlock(self.path, timeout)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _failure(path, error):
    reason = errno.errorcode.get(error.errno, "error")
    return TemporaryFailure(f"{path}: cannot write ({reason}: {error.strerror})")
