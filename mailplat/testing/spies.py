"""
Spies the kit puts around a backend call: which files it fsyncs, and which
files it opens for writing in place. They patch os and builtins for the
length of a `with` block (threads included: a backend's thread pool too).
"""

import builtins
import io
import os
import stat
import threading

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


def _fd_path(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class FsyncSpy:
    """
    Notes every os.fsync / os.fdatasync: `synced` is a list of (path or
    None, is a directory, (st_dev, st_ino)) in call order.
    """

    def __enter__(self):
        self.synced = []
        self._lock = threading.Lock()
        self._saved = (os.fsync, getattr(os, "fdatasync", None))
        real_fsync, real_fdatasync = self._saved

        def note(fd):
            try:
                st = os.fstat(fd if isinstance(fd, int) else fd.fileno())
                entry = (_fd_path(fd if isinstance(fd, int) else fd.fileno()), stat.S_ISDIR(st.st_mode),
                         (st.st_dev, st.st_ino))
            except (OSError, ValueError):
                entry = (None, False, None)
            with self._lock:
                self.synced.append(entry)

        def fsync(fd):
            real_fsync(fd)
            note(fd)

        def fdatasync(fd):
            real_fdatasync(fd)
            note(fd)

        os.fsync = fsync
        if real_fdatasync is not None:
            os.fdatasync = fdatasync
        return self

    def __exit__(self, *exc):
        os.fsync, fdatasync = self._saved
        if fdatasync is not None:
            os.fdatasync = fdatasync
        return False

    def synced_file(self, identity):
        """True when the file with (st_dev, st_ino) `identity` was fsynced."""
        return any(ident == identity and not is_dir for _, is_dir, ident in self.synced)

    def synced_directory(self, path):
        st = os.stat(path)
        return any(ident == (st.st_dev, st.st_ino) and is_dir for _, is_dir, ident in self.synced)


class InPlaceWrites:
    """
    Notes every open() / os.open() of one of `paths` for writing (w, a, r+,
    O_WRONLY, O_RDWR, O_TRUNC): `writes` lists (path, mode). Replacing a
    file whole (write another, rename it over) opens none of them.
    """

    def __init__(self, paths):
        self.paths = {os.path.abspath(p) for p in paths}

    def __enter__(self):
        self.writes = []
        self._saved = (builtins.open, io.open, os.open)
        real_open, real_io_open, real_os_open = self._saved
        spy = self

        def watched(file):
            return isinstance(file, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(file)) in spy.paths

        def py_open(file, mode="r", *args, **kwargs):
            if watched(file) and any(c in mode for c in "wa+x"):
                spy.writes.append((os.fsdecode(file), mode))
            return real_open(file, mode, *args, **kwargs)

        def low_open(path, flags, *args, **kwargs):
            if watched(path) and flags & _WRITE_FLAGS:
                spy.writes.append((os.fsdecode(path), flags))
            return real_os_open(path, flags, *args, **kwargs)

        builtins.open = io.open = py_open
        os.open = low_open
        return self

    def __exit__(self, *exc):
        builtins.open, io.open, os.open = self._saved
        return False
