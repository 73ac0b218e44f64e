"""
An envelope process: computes IMAP ENVELOPEs (and SORT/THREAD keys) of
maildir files on another core than the reactor (mailplat.imap.envelope_pool
starts it).

A folder's first FETCH ENVELOPE, or SORT, reads and parses every
message's header (about 50 us each); in the reactor's threads that shares
one core with everything else. Requests come on stdin, answers go to
stdout, in order:

    request: REQUEST (id, size) + a kind (ENVELOPE or SORT_KEYS) + the file paths joined by NUL
    answer:  REQUEST (id, size) + per path ITEM (length) + the envelope's
             wire bytes (or the sort keys as JSON), or length -1 where the
             file could not be read or parsed
"""

import os
import struct
import sys

REQUEST = struct.Struct(">II")
ITEM = struct.Struct(">i")
MISSING = ITEM.pack(-1)
ENVELOPE = b"E"
SORT_KEYS = b"K"


def read_header(f):
    """A message's first bytes, up to at least the blank line that ends its header (or all of it)."""
    data = f.read(8192)
    while b"\n\n" not in data and b"\n\r\n" not in data:
        more = f.read(65536)
        if not more:
            break
        data += more
    return data


def encode_request(request_id, paths, kind=ENVELOPE):
    payload = kind + b"\0".join(os.fsencode(p) for p in paths)
    return REQUEST.pack(request_id, len(payload)) + payload


def decode_answer(payload):
    """The envelopes of an answer's payload: bytes, or None for a message that failed."""
    out, at, size, unpack = [], 0, len(payload), ITEM.unpack_from
    while at < size:
        (length,) = unpack(payload, at)
        at += 4
        if length < 0:
            out.append(None)
        else:
            out.append(payload[at : at + length])
            at += length
    return out


def computed(paths, compute):
    parts = []
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as f:
                env = compute(read_header(f))
        except Exception:  # gone (expunged, renamed) or unparsable: the server reads it itself
            parts.append(MISSING)
            continue
        parts.append(ITEM.pack(len(env)))
        parts.append(env)
    return b"".join(parts)


def read_exactly(stream, size):
    data = stream.read(size)
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            return None
        data += more
    return data


def main():
    try:
        # Behind the reactor: a FETCH's answers go out while this parses the next batch.
        os.nice(5)
    except OSError:
        pass
    import json

    from mailplat.imap.mime import message_envelope
    from mailplat.imap.sortkeys import keys_of_header

    encode = json.JSONEncoder(separators=(",", ":")).encode
    kinds = {ENVELOPE: message_envelope, SORT_KEYS: lambda header: encode(keys_of_header(header)).encode()}
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = read_exactly(stdin, REQUEST.size)
        if head is None:
            return  # the server closed our input: it is stopping
        request_id, size = REQUEST.unpack(head)
        payload = read_exactly(stdin, size) if size else b""
        if payload is None:
            return
        compute, payload = kinds.get(payload[:1]), payload[1:]
        paths = payload.split(b"\0") if payload else []
        answer = computed(paths, compute) if compute is not None else MISSING * len(paths)
        stdout.write(REQUEST.pack(request_id, len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    main()
