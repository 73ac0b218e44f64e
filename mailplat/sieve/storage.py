"""
A user's Sieve scripts on disk, as Pigeonhole keeps them:
`<home>/sieve/NAME.sieve`, and the active one the relative symlink
`<home>/.dovecot.sieve -> sieve/NAME.sieve`. Used by ManageSieve
(RFC 5804) and `mailplat sieve`; delivery reads the symlink
(L{mailplat.sieve.filter}).

Writes are atomic (a temporary file, fsync, rename) and the symlink is
swapped by a rename too, so delivery sees the old script or the new one,
never half of either. Blocking: callers run these in a thread.
"""

import os
import re

from mailplat.sieve import compile_script
from mailplat.sieve.filter import ACTIVE

SUFFIX = ".sieve"
MAX_SCRIPTS = 32  # per user
MAX_BYTES = 1024 * 1024  # all of a user's scripts together
MAX_NAME = 128

# RFC 5804 1.6: a script name is UTF-8 without control characters; we also
# refuse the path separator and a leading dot (it names files on disk).
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]|^\.")


class ScriptError(Exception):
    """A request ManageSieve answers NO to; `code` is its response code (RFC 5804 1.3), or None."""

    def __init__(self, text, code=None):
        super().__init__(text)
        self.text, self.code = text, code


class ScriptStore:
    """The scripts of one user, in `home`."""

    def __init__(self, home, max_scripts=MAX_SCRIPTS, max_bytes=MAX_BYTES):
        self.home = home
        self.dir = os.path.join(home, "sieve")
        self.max_scripts, self.max_bytes = max_scripts, max_bytes

    def check_name(self, name):
        if not name or len(name) > MAX_NAME or _BAD_NAME.search(name) or name in (".", ".."):
            raise ScriptError("not an acceptable script name")

    def _path(self, name):
        self.check_name(name)
        return os.path.join(self.dir, name + SUFFIX)

    def names(self):
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(e[: -len(SUFFIX)] for e in entries if e.endswith(SUFFIX) and not e.startswith("."))

    def active(self):
        """The active script's name, or None."""
        link = os.path.join(self.home, ACTIVE)
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        base = os.path.basename(target)
        if not base.endswith(SUFFIX) or not os.path.exists(os.path.join(self.home, target)):
            return None
        return base[: -len(SUFFIX)]

    def listing(self):
        """[(name, active)] (LISTSCRIPTS)."""
        active = self.active()
        return [(n, n == active) for n in self.names()]

    def get(self, name):
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ScriptError("there is no script by that name", "NONEXISTENT") from None

    def used(self, except_name=None):
        total = 0
        for n in self.names():
            if n == except_name:
                continue
            try:
                total += os.path.getsize(os.path.join(self.dir, n + SUFFIX))
            except FileNotFoundError:
                pass
        return total, len(self.names())

    def have_space(self, name, size):
        """RFC 5804 2.5: raise ScriptError with QUOTA/MAXSCRIPTS or QUOTA/MAXSIZE when it would not fit."""
        self.check_name(name)
        total, count = self.used(except_name=name)
        exists = name in self.names()
        if not exists and count + 1 > self.max_scripts:
            raise ScriptError(f"at most {self.max_scripts} scripts", "QUOTA/MAXSCRIPTS")
        if size > self.max_bytes or total + size > self.max_bytes:
            raise ScriptError(f"at most {self.max_bytes} octets of scripts", "QUOTA/MAXSIZE")

    def check(self, data):
        """Compile only (CHECKSCRIPT): raises SieveSyntaxError with line and column."""
        compile_script(data)

    def put(self, name, data):
        """PUTSCRIPT: the script is checked first; nothing is written when it does not compile."""
        self.have_space(name, len(data))
        self.check(data)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        _write_atomic(self._path(name), data)

    def activate(self, name):
        """SETACTIVE; an empty name deactivates (RFC 5804 2.8)."""
        link = os.path.join(self.home, ACTIVE)
        if not name:
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
            return
        if not os.path.exists(self._path(name)):
            raise ScriptError("there is no script by that name", "NONEXISTENT")
        tmp = link + ".tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(os.path.join("sieve", name + SUFFIX), tmp)
        os.rename(tmp, link)
        _fsync_dir(self.home)

    def delete(self, name):
        if name == self.active():
            raise ScriptError("the active script cannot be deleted", "ACTIVE")
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            raise ScriptError("there is no script by that name", "NONEXISTENT") from None
        _fsync_dir(self.dir)

    def rename(self, old, new):
        source, target = self._path(old), self._path(new)
        if not os.path.exists(source):
            raise ScriptError("there is no script by that name", "NONEXISTENT")
        if os.path.exists(target):
            raise ScriptError("a script by that name exists", "ALREADYEXISTS")
        was_active = self.active() == old
        os.link(source, target)
        if was_active:
            self.activate(new)
        os.unlink(source)
        _fsync_dir(self.dir)


def _write_atomic(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
