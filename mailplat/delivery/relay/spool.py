"""
The queue on disk: one message file and one state file per queued message.

    <state_dir>/queue/messages/<id>.eml   the message as it leaves (LF line ends)
    <state_dir>/queue/messages/<id>.json  envelope and per-recipient state

The .json file is the commit mark: it is renamed into place (after the .eml
and itself are fsync'd) and the directory is fsync'd before enqueue answers,
so an accepted message survives a crash (RFC 5321 4.5.4 / 6.1: once 250 is
sent the message is ours). An .eml without its .json is a half-written
enqueue that was never acknowledged and is removed on start.

Every function here blocks: callers run them in a thread.
"""

import json
import os
import re
import secrets
import time

QUEUED, DEFERRED, SENT, BOUNCED = "queued", "deferred", "sent", "bounced"
PENDING = (QUEUED, DEFERRED)

COPY_CHUNK = 256 * 1024
_RECEIVED = re.compile(rb"^received[ \t]*:", re.I | re.M)
_TLS_REQUIRED_NO = re.compile(rb"^tls-required[ \t]*:[ \t]*no[ \t]*\r?$", re.I | re.M)


def count_hops(head):
    """Received: fields in the header section of `head` (RFC 5321 6.3 loop detection)."""
    end = head.find(b"\n\n")
    return len(_RECEIVED.findall(head if end < 0 else head[: end + 1]))


def tls_required_no(head):
    """RFC 8689 3: the header section says `TLS-Required: No` (TLS policies may be ignored)."""
    end = head.find(b"\n\n")
    return bool(_TLS_REQUIRED_NO.search(head if end < 0 else head[: end + 1]))


def new_id():
    """Sortable by arrival: milliseconds in hex, then randomness."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Paths and durable file operations under one queue directory."""

    def __init__(self, root):
        self.root = root
        self.messages = os.path.join(root, "messages")
        self.control = os.path.join(root, "control")
        self.lock_path = os.path.join(root, "lock")

    def ensure(self):
        for path in (self.root, self.messages, self.control):
            os.makedirs(path, mode=0o700, exist_ok=True)

    def eml(self, queue_id):
        return os.path.join(self.messages, queue_id + ".eml")

    def state(self, queue_id):
        return os.path.join(self.messages, queue_id + ".json")

    def create(self, record, source):
        """
        Store a new message and its record durably. Fills in the record's
        size, crlf_size (as SIZE counts it, RFC 1870), eight_bit and hops.
        """
        self.copy_message(record, source, sync=True)
        self._write_state(record, sync_dir=True)
        return record

    def copy_message(self, record, source, sync=True):
        """
        The message of `source` into its .eml file (fsync'd when `sync`),
        and what the queue needs to know of it into `record`.
        """
        queue_id = record["id"]
        size = lines = 0
        eight_bit = False
        head = b""
        with source.open() as src, open(self.eml(queue_id), "wb") as out:
            while True:
                chunk = src.read(COPY_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                if size < 64 * 1024:
                    head += chunk[: 64 * 1024]
                size += len(chunk)
                lines += chunk.count(b"\n")
                if not eight_bit and not chunk.isascii():
                    eight_bit = True
            out.flush()
            if sync:
                os.fsync(out.fileno())
        record.update(size=size, crlf_size=size + lines, eight_bit=eight_bit, hops=count_hops(head))
        # RFC 8689 3: with REQUIRETLS the TLS-Required field is ignored.
        record["tls_optional"] = not record.get("require_tls") and tls_required_no(head)
        return record

    def save(self, record):
        """Replace a message's record (tmp, fsync, rename)."""
        self._write_state(record, sync_dir=False)

    def _write_state(self, record, sync_dir):
        final = self.state(record["id"])
        tmp = os.path.join(self.messages, f".{record['id']}.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
        if sync_dir:
            fsync_dir(self.messages)

    def remove(self, queue_id):
        """Forget a message: the record first, so a crash leaves only garbage."""
        for path in (self.state(queue_id), self.eml(queue_id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def load(self):
        """
        Every complete record, oldest first; leftovers of unfinished
        enqueues are removed. Only call while holding the queue lock.
        """
        try:
            names = os.listdir(self.messages)
        except FileNotFoundError:
            return [], []
        records, problems = [], []
        ids = {n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")}
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(self.messages, name))
            elif name.endswith(".eml") and name[:-4] not in ids:
                os.unlink(os.path.join(self.messages, name))
        for queue_id in sorted(ids):
            record = self.read(queue_id)
            if record is None or not os.path.exists(self.eml(queue_id)):
                problems.append(queue_id)
                continue
            records.append(record)
        return records, problems

    def read(self, queue_id):
        try:
            with open(self.state(queue_id), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def list(self):
        """Records as they are on disk now (for `mailplat queue list`)."""
        try:
            names = sorted(os.listdir(self.messages))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                record = self.read(name[:-5])
                if record is not None:
                    out.append(record)
        return out


def new_record(envelope, recipients, now=None, dsn=False):
    now = time.time() if now is None else now
    return {
        "id": new_id(),
        "created": now,
        "sender": envelope.sender,
        "envelope": {
            "helo": envelope.helo,
            "client_address": envelope.client_address,
            "protocol": envelope.protocol,
            "authenticated_as": envelope.authenticated_as,
            "received_by": envelope.received_by,
        },
        "dsn": dsn,
        # RFC 8689: REQUIRETLS on MAIL FROM, kept until the message is gone.
        "require_tls": bool(getattr(envelope, "require_tls", False)),
        "warned": False,
        "recipients": [
            {"address": r, "state": QUEUED, "attempts": 0, "next": now, "error": "", "destination": ""}
            for r in dict.fromkeys(recipients)
        ],
    }
