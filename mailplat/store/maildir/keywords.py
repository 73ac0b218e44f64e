"""
Flags in maildir file names, and IMAP keywords as Dovecot keeps them.

System flags are the upper-case info letters (maildir spec: D F P R S T).
Keywords are the lower-case letters a-z; `dovecot-keywords` in the folder
maps each letter's index to a name (`0 $Junk` is 'a', `1 NonJunk` is 'b').
Only 26 keywords fit in a file name; more are kept in mailplat's index and
are invisible to other programs (Dovecot keeps them in its index too).
"""

import os

from mailplat.store.maildir import names
from mailplat.store.maildir.deliver import fsync_dir

FILENAME = "dovecot-keywords"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# RFC 3501 2.3.2: the system flags a client may set (\Recent is the server's).
# RFC 3501 7.1 PERMANENTFLAGS: what STORE keeps, '\*' for new keywords.
PERMANENT_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*")


class Keywords:
    """The letter <-> keyword map of one folder (`dovecot-keywords`)."""

    def __init__(self, folder_path):
        self.relocate(folder_path)
        self.names = {}  # index -> name
        self.stamp = None
        self._memo = {}  # info letters -> flags: a folder has few distinct ones

    def relocate(self, folder_path):
        self.folder_path = folder_path
        self.path = os.path.join(folder_path, FILENAME)

    def refresh(self):
        """Re-read the file if it changed; blocking."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.stamp = None
            if self.names:
                self._memo = {}
            self.names = {}
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self.stamp:
            return
        found = {}
        try:
            with open(self.path, "rb") as f:
                for line in f.read().decode("utf-8", "surrogateescape").splitlines():
                    index, _, name = line.partition(" ")
                    if index.isdigit() and name and int(index) < len(LETTERS):
                        found[int(index)] = name
        except FileNotFoundError:
            pass
        if found != self.names:
            self._memo = {}
        self.names = found
        self.stamp = stamp

    def _index_of(self, name):
        low = name.lower()
        for index, known in self.names.items():
            if known.lower() == low:
                return index
        return None

    def flags_from_info(self, info):
        """Info letters -> frozenset of system flags and keywords."""
        flags = self._memo.get(info)
        if flags is None:
            flags = self._memo[info] = self._flags_from_info(info)
        return flags

    def _flags_from_info(self, info):
        flags = set(names.flags_from_info(info))
        for c in info:
            if "a" <= c <= "z":
                name = self.names.get(ord(c) - ord("a"))
                if name:
                    flags.add(name)
        return frozenset(flags)

    def missing(self, flags):
        """Keywords among `flags` that have no letter yet."""
        return [
            f
            for f in flags
            if not f.startswith("\\") and f.lower() not in names.LETTER_FOR_FLAG and self._index_of(f) is None
        ]

    def add(self, new_names):
        """
        Give letters to `new_names` (call under the uidlist lock, after
        `refresh`). Returns the names that did not fit in 26 letters.
        """
        overflow = []
        changed = False
        for name in new_names:
            if self._index_of(name) is not None:
                continue
            free = [i for i in range(len(LETTERS)) if i not in self.names]
            if not free or any(c in name for c in " \n\r"):
                overflow.append(name)
                continue
            self.names[free[0]] = name
            changed = True
        if changed:
            self._memo = {}
            self._write()
        return overflow

    def _write(self):
        text = "".join(f"{i} {n}\n" for i, n in sorted(self.names.items()))
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path)
        fsync_dir(self.folder_path)
        st = os.stat(self.path)
        self.stamp = (st.st_ino, st.st_size, st.st_mtime_ns)

    def info_for(self, flags, old_info=""):
        """
        The info letters for `flags`, in ASCII order as the maildir spec
        asks. Letters other programs set that we can't name (unknown
        upper-case flags, keyword letters missing from the file) are kept.
        @return: (letters, keywords that have no letter)
        """
        letters = set()
        extra = set()
        for flag in flags:
            letter = names.LETTER_FOR_FLAG.get(flag.lower())
            if letter:
                letters.add(letter)
                continue
            if flag.startswith("\\"):
                continue
            index = self._index_of(flag)
            if index is None:
                extra.add(flag)
            else:
                letters.add(LETTERS[index])
        for c in old_info:
            if "A" <= c <= "Z" and c not in names.FLAG_LETTERS:
                letters.add(c)
            elif "a" <= c <= "z" and (ord(c) - ord("a")) not in self.names:
                letters.add(c)
        return "".join(sorted(letters)), frozenset(extra)
