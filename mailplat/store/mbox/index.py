"""
The sidecar index of one mbox folder, in `<root>/.imap/<folder>/` (where
Dovecot keeps its mbox indexes too), so that SELECT of a large mbox reads
one small file instead of the mbox when the mbox has not changed.

- `mailplat-index.json`: UIDVALIDITY, UIDNEXT, the first unclaimed \\Recent
  UID, the mbox's identity at the last scan (device, inode, size, mtime,
  ctime, its last bytes) and per message: UID, offset, end, RFC822.SIZE,
  INTERNALDATE, flags, the flags as the file holds them, fingerprint.
  Rewritten whole through a temporary file and a rename.
- `mailplat-cache.jsonl`: values the IMAP layer computed once (ENVELOPE,
  BODYSTRUCTURE), one `[uid, field, value]` line each, after a first line
  naming the UIDVALIDITY.

The UIDs live here, not in X-UID headers (see the package docstring).
Blocking; run in a thread.
"""

import json
import os
import threading
import time

from twisted.logger import Logger

from mailplat.store.jsonindex import load_versioned

INDEX = "mailplat-index.json"
CACHE = "mailplat-cache.jsonl"
UIDVALIDITY = "mailplat-uidvalidity"
VERSION = 1

log = Logger()


def _replace(path, payload, durable, create=True):
    if create:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(payload)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.rename(tmp, path)


def load(index_dir):
    """@return: the index dict, or None when missing, unreadable or of another version."""
    return load_versioned(os.path.join(index_dir, INDEX), VERSION)


def save(index_dir, data):
    """Write the index. fsync'd: it holds the UIDs."""
    payload = json.dumps(dict(data, version=VERSION), separators=(",", ":")).encode("utf-8")
    try:
        _replace(os.path.join(index_dir, INDEX), payload, durable=True)
    except OSError as e:
        log.warn("{path}: cannot write the index ({e})", path=index_dir, e=e)


def load_cache(index_dir, uidvalidity):
    """@return: ({uid: {field: value}}, number of lines)."""
    cache, lines = {}, 0
    try:
        with open(os.path.join(index_dir, CACHE), "rb") as f:
            try:
                if json.loads(f.readline()).get("uidvalidity") != uidvalidity:
                    return {}, 0
            except (ValueError, AttributeError):
                return {}, 0
            for line in f:
                try:
                    uid, field, value = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                cache.setdefault(uid, {})[field] = value
                lines += 1
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warn("{path}: unreadable cache ({e})", path=index_dir, e=e)
    return cache, lines


def append_cache(index_dir, uidvalidity, items):
    """
    Append [(uid, field, value)]; starts the file when it's missing. The
    index directory is made with the folder's first index, so when it is
    missing the folder was deleted while this flush ran: a quiet no-op,
    rather than an error or a stray directory for a folder that is gone.
    """
    if not os.path.isdir(index_dir):
        return
    path = os.path.join(index_dir, CACHE)
    payload = b"".join(json.dumps(i, separators=(",", ":")).encode("utf-8") + b"\n" for i in items)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        try:
            rewrite_cache(index_dir, uidvalidity, {}, create=False)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            return  # deleted between the check and the write
    with os.fdopen(fd, "ab") as f:
        f.write(payload)


def rewrite_cache(index_dir, uidvalidity, cache, create=True):
    head = json.dumps({"uidvalidity": uidvalidity}).encode("utf-8") + b"\n"
    body = b"".join(
        json.dumps([uid, field, value], separators=(",", ":")).encode("utf-8") + b"\n"
        for uid, fields in sorted(cache.items())
        for field, value in fields.items()
    )
    _replace(os.path.join(index_dir, CACHE), head + body, durable=False, create=create)


def next_uidvalidity(state_dir, at_least=0):
    """
    A UIDVALIDITY greater than any this account gave before, even within
    one second (RFC 3501 2.3.1.1): the last one is kept in `state_dir`.
    Call holding the account's lock.
    """
    path = os.path.join(state_dir, UIDVALIDITY)
    try:
        with open(path) as f:
            last = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        last = 0
    value = max(int(time.time()), last + 1, at_least + 1)
    _replace(path, b"%d\n" % value, durable=True)
    return value
