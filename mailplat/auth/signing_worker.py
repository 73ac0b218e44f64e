"""
The DKIM signer process (`python -m mailplat.auth.signing_worker`), and
the frames it and mailplat.auth.signing_pool exchange over its stdin and
stdout.

Why a process: in a thread of the server, dkimpy's Python (~0.3 ms a
message) holds the GIL the reactor needs, and the signing waits in the
thread pool behind the maildir deliveries; a process takes all of it off
the reactor's core (OpenSSL's ~1 ms RSA operation too), and a crash in it
cannot take the server down.

A request is (id, the signing parameters as JSON, the message, or where
the message is in the shared memory of mailplat.auth.signing_ring); a
reply is (id, status, the DKIM-Signature fields or an error text). The
worker answers in order, one request at a time, and exits when its stdin
closes. `python -m mailplat.auth.signing_worker RING_FD RING_SIZE`.
"""

import functools
import json
import os
import signal
import struct
import sys

from mailplat.auth.signing_ring import reader

REQUEST = struct.Struct(">IIIq")  # id, length of the JSON, length of the message, its offset in the ring
INLINE = -1  # the offset of a message that follows the JSON in the frame
REPLY = struct.Struct(">III")  # id, status, length of the payload
SIGNED, FAILED = 0, 1


def encode_meta(keys, include):
    """The JSON of a request: `keys` (L{DKIMKey}s) and the header fields `include`."""
    return json.dumps({
        "include": [name.decode("latin-1") for name in include],
        "keys": [[k.domain, k.selector, k.algorithm, k.private.decode("latin-1")] for k in keys],
    }).encode()


def encode_request(request_id, meta, data, offset=INLINE):
    """The frame asking to sign `data` (in the frame, or `len(data)` octets at `offset` of the ring)."""
    if offset == INLINE:
        return REQUEST.pack(request_id, len(meta), len(data), INLINE) + meta + data
    return REQUEST.pack(request_id, len(meta), len(data), offset) + meta


@functools.lru_cache(maxsize=64)
def decode_request(meta):
    """(keys, include) from a request's JSON (the same JSON again and again: once)."""
    from mailplat.auth.dkim_keys import DKIMKey

    fields = json.loads(meta)
    keys = [DKIMKey(domain, selector, algorithm, private.encode("latin-1"))
            for domain, selector, algorithm, private in fields["keys"]]
    return keys, [name.encode("latin-1") for name in fields["include"]]


def read_exact(f, n):
    """`n` octets of `f`, or None at the end of the input (a part frame is the end too)."""
    data = f.read(n) if n else b""
    return data if len(data) == n else None


def sign_message(data, keys, include):
    """
    The DKIM-Signature fields for `data`, one per key, over the header
    fields `include` (blocking; the signer processes run it too).
    """
    import dkim

    from mailplat.auth import dkim_fast

    dkim_fast.install()  # RSA through OpenSSL: ~1 ms a signature rather than ~20
    out = b""
    for key in keys:
        out += dkim.sign(
            data,
            key.selector.encode(),
            key.domain.encode(),
            key.private,
            signature_algorithm=key.signature_algorithm,
            include_headers=include,
            # relaxed/relaxed: survives the header re-folding and
            # trailing-space changes of relays on the way.
            canonicalize=(b"relaxed", b"relaxed"),
            linesep=b"\n",
        )
    return out


def serve(requests, replies, ring=None):
    """Sign each request read from `requests` and write its reply, until the input ends."""
    while True:
        head = read_exact(requests, REQUEST.size)
        if head is None:
            return
        request_id, meta_size, data_size, offset = REQUEST.unpack(head)
        meta = read_exact(requests, meta_size)
        if offset == INLINE:
            data = read_exact(requests, data_size)
        elif ring is not None and 0 <= offset and offset + data_size <= len(ring):
            data = ring[offset : offset + data_size]
        else:
            return  # not our parent
        if meta is None or data is None:
            return
        try:
            keys, include = decode_request(meta)
            payload, status = sign_message(data, keys, include), SIGNED
        except Exception as e:  # the parent logs it and delivers the message unsigned
            payload, status = f"{type(e).__name__}: {e}".encode("utf-8", "replace"), FAILED
        replies.write(REPLY.pack(request_id, status, len(payload)) + payload)
        replies.flush()


def main():
    # The server stops its signers by closing their stdin once the messages
    # in flight are signed; a ^C to twistd's process group is not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr (the server's log), not into a reply
    from mailplat.auth import dkim_fast  # dkimpy imported now, not with the first message

    dkim_fast.install()
    ring = reader(int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else None
    serve(sys.stdin.buffer, replies, ring)


if __name__ == "__main__":
    main()
