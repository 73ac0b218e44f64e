"""
Blocking file work for the mbox folder: whole reads and writes at offsets,
the kernel-side copy a rewrite uses for the unchanged part of a file, and
cleaning up after a rewrite a crash interrupted. Run in a thread.
"""

import errno
import os

from mailplat.interfaces import TemporaryFailure
from mailplat.store.mbox import locking

CHUNK = 1024 * 1024


def pread_all(fd, size, offset):
    out = []
    while size > 0:
        data = os.pread(fd, min(size, 64 * CHUNK), offset)
        if not data:
            break
        out.append(data)
        offset += len(data)
        size -= len(data)
    return b"".join(out)


def copy_range(src, dst, count, offset, out_offset):
    """The kernel copies (copy_file_range: a reflink on btrfs and XFS), else read/write."""
    while count > 0:
        try:
            n = os.copy_file_range(src, dst, min(count, 1 << 30), offset, out_offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            n = 0
        if n == 0:
            data = os.pread(src, min(count, 8 * CHUNK), offset)
            if not data:
                raise OSError(errno.EIO, "mbox shorter than its index says")
            n = os.pwrite(dst, data, out_offset)
        count -= n
        offset += n
        out_offset += n


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def remove_stale_temporaries(directory, base):
    """Temporary files of rewrites whose process died (a crash mid-rewrite)."""
    prefix = f".{base}.mailplat-"
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) : -4]
        if pid.isdigit() and int(pid) != os.getpid() and not locking._alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def temporary(error, path):
    if isinstance(error, TemporaryFailure):
        return error
    reason = errno.errorcode.get(error.errno, "error")
    failure = TemporaryFailure(
        f"cannot write to mailbox {os.path.basename(path)} ({reason}: {error.strerror})",
        "4.2.2" if error.errno == errno.EDQUOT else "4.3.0",
    )
    failure.path = path
    return failure
