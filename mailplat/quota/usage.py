"""
The usage file, in Courier's and Dovecot's C{maildirsize} format (a limits
line, then "octets messages" lines that add up), and how each store's mail
is counted when the file can't be trusted. Blocking: run in a thread.
"""

import os
import threading

USAGE_MAX = 5120  # octets: a bigger maildirsize is recounted (Courier's maildirquota rule)
CHUNK = 256 * 1024


def read_usage(path):
    """
    maildirsize -> (limits line, octets, messages, file size), or None when
    it is missing or broken (a line that is not two numbers).
    """
    try:
        with open(path, "rb") as f:
            data = f.read(USAGE_MAX + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    lines = data.decode("ascii", "replace").split("\n")
    octets = messages = 0
    counted = 0
    for line in lines[1:]:
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            return None
        try:
            octets += int(parts[0])
            messages += int(parts[1])
        except ValueError:
            return None
        counted += 1
    if not counted or octets < 0 or messages < 0:
        return None
    return lines[0].strip(), octets, messages, len(data)


def write_usage(path, limits, octets, messages):
    """A fresh maildirsize (temporary file, rename; no fsync: see the module doc)."""
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{limits.line()}\n{octets} {messages}\n")
    os.replace(tmp, path)


def append_usage(path, octets, messages):
    """One "octets messages" line; nothing when the file is missing (it is recounted then)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return False
    try:
        os.write(fd, f"{octets} {messages}\n".encode("ascii"))
    finally:
        os.close(fd)
    return True


def crlf_size(source):
    """RFC822.SIZE of an IMessageSource: its octets with CRLF line ends (blocking)."""
    size = extra = 0
    last = b""
    with source.open() as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            extra += chunk.count(b"\n") - chunk.count(b"\r\n") - (last + chunk[:1] == b"\r\n")
            last = chunk[-1:]
    return size + extra


def _file_crlf_size(path):
    with open(path, "rb") as f:
        data = f.read()
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


# --- where each store keeps things ---------------------------------------------------


class MaildirLayout:
    """Maildir++: INBOX at the root, folders `.Name`; W= in the file names."""

    usage_name = "maildirsize"
    warned_name = "mailplat-quota-warned"

    def __init__(self, store):
        self.store = store

    def root(self, address):
        return self.store.user_root(address)

    def walk(self, root, address):
        """(octets, messages) of every folder, from the file names (blocking)."""
        from mailplat.store.maildir import names

        try:
            entries = os.listdir(root)
        except FileNotFoundError:
            return 0, 0
        folders = [root] + [os.path.join(root, e) for e in entries if e.startswith(".") and e not in (".", "..")]
        octets = count = 0
        for folder in folders:
            for sub in ("new", "cur"):
                directory = os.path.join(folder, sub)
                try:
                    files = os.listdir(directory)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for name in files:
                    if name.startswith("."):
                        continue
                    size = names.sizes_from_key(name.partition(":")[0])[1]
                    if size is None:
                        try:
                            size = _file_crlf_size(os.path.join(directory, name))
                        except OSError:
                            continue  # gone meanwhile
                    octets += size
                    count += 1
        return octets, count

    def key_size(self, key):
        from mailplat.store.maildir import names

        return names.sizes_from_key(key)[1]


class MboxLayout:
    """mbox files under the user's mail directory (INBOX maybe elsewhere)."""

    usage_name = ".mailplat-quota"
    warned_name = ".mailplat-quota-warned"

    def __init__(self, store):
        self.store = store

    def root(self, address):
        return self.store.user_root(address)

    def walk(self, root, address):
        import mmap

        from mailplat.store import boundary
        from mailplat.store.mbox import account as accounts
        from mailplat.store.mbox import mboxrd

        inbox = self.store.inbox_path(address)
        octets = count = 0
        for name, attributes in accounts.list_folders(root, inbox):
            if "\\Noselect" in attributes:
                continue
            try:
                path = inbox if name == accounts.INBOX else accounts.resolve(root, inbox, name)
                with open(path, "rb") as f:
                    if os.fstat(f.fileno()).st_size == 0:
                        continue
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                        for start, end in mboxrd.split(data):
                            octets += mboxrd.parse(data[start:end], start).size
                            count += 1
            except (OSError, ValueError, boundary.RefusedName):
                continue
        return octets, count

    def key_size(self, key):
        return None


def layout_for(store):
    """The layout of a built-in store, or None for a store we can't count."""
    from mailplat.store.maildir.store import MaildirStore
    from mailplat.store.mbox.store import MboxStore

    if isinstance(store, MaildirStore):
        return MaildirLayout(store)
    if isinstance(store, MboxStore):
        return MboxLayout(store)
    return None
