"""
mailplat's per-folder index, beside the mail (as Dovecot keeps
`dovecot.index` and `dovecot.index.cache`). Both files are caches: lose
them and they are rebuilt from the maildir and `dovecot-uidlist`.

- `mailplat-index.json`: what a SELECT needs without opening a message:
  each message's UID, file name, size and internaldate, plus the stamps of
  new/, cur/ and the uidlist at the scan that wrote it, so a later process
  knows whether the folder changed since. Rewritten whole, atomically.
- `mailplat-cache.jsonl`: values the IMAP layer computed once (ENVELOPE,
  BODYSTRUCTURE), one JSON line `[uid, field, value]` appended per value;
  the first line names the UIDVALIDITY it belongs to. Rewritten when most
  of its lines are dead.

Blocking; run in a thread.
"""

import json
import os
import threading

from twisted.logger import Logger

from mailplat.store.jsonindex import load_versioned

INDEX = "mailplat-index.json"
CACHE = "mailplat-cache.jsonl"
VERSION = 1

log = Logger()

# One encoder for every line: json.dumps with separators makes a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def load_index(folder_path):
    """@return: the index dict, or None when missing, unreadable or old."""
    return load_versioned(os.path.join(folder_path, INDEX), VERSION)


def save_index(folder_path, data):
    data = dict(data, version=VERSION)
    _replace(os.path.join(folder_path, INDEX), _encode(data).encode("utf-8"))


def _replace(path, payload):
    # No fsync: the file is a cache; a torn one fails to parse and is rebuilt.
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
        os.rename(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, FileNotFoundError) and not os.path.isdir(os.path.dirname(path)):
            return  # the folder was deleted meanwhile: nothing to keep
        log.warn("{path}: cannot write index ({e})", path=path, e=e)


def load_cache(folder_path, uidvalidity):
    """@return: ({uid: {field: value}}, number of lines)."""
    path = os.path.join(folder_path, CACHE)
    cache, lines = {}, 0
    try:
        with open(path, "rb") as f:
            head = f.readline()
            try:
                if json.loads(head).get("uidvalidity") != uidvalidity:
                    return {}, 0
            except (ValueError, AttributeError):
                return {}, 0
            body = f.read()
        try:
            # The lines as one JSON array: one parse, not one a line.
            rows = json.loads(b"[" + body.rstrip(b"\n").replace(b"\n", b",") + b"]")
            for uid, field, value in rows:
                cache.setdefault(uid, {})[field] = value
            lines = len(rows)
        except (ValueError, TypeError):
            cache, lines = {}, 0  # a torn last line, or worse: line by line
            for line in body.splitlines():
                try:
                    uid, field, value = json.loads(line)
                except (ValueError, TypeError):
                    continue
                cache.setdefault(uid, {})[field] = value
                lines += 1
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warn("{path}: unreadable cache ({e})", path=path, e=e)
    return cache, lines


def _header(uidvalidity):
    return json.dumps({"uidvalidity": uidvalidity}).encode("utf-8") + b"\n"


def append_cache(folder_path, uidvalidity, items):
    """
    Append [(uid, field, value)]; starts the file when it's missing. A
    folder deleted meanwhile (by another process or program, while this
    flush ran) has nothing left to cache for: a quiet no-op.
    """
    path = os.path.join(folder_path, CACHE)
    payload = "".join(_encode(item) + "\n" for item in items).encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        if not os.path.isdir(folder_path):
            return
        rewrite_cache(folder_path, uidvalidity, {})
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            return  # the folder went between the two opens
    with os.fdopen(fd, "ab") as f:
        f.write(payload)


def rewrite_cache(folder_path, uidvalidity, cache):
    body = "".join(
        _encode([uid, field, value]) + "\n" for uid, fields in sorted(cache.items()) for field, value in fields.items()
    ).encode("utf-8")
    _replace(os.path.join(folder_path, CACHE), _header(uidvalidity) + body)
