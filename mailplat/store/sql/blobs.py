"""
Where message bodies are kept: L{IBlobStore}, a small seam so that a later
plugin can put bodies in S3-compatible storage while the messages (UIDs,
flags, modseqs) stay in PostgreSQL; and L{PostgresBlobStore}, the one
built here, bodies as bytea in `mailplat_bodies`.

A body is named by the SHA-256 of its bytes, so a message to 50 local
recipients, and every COPY of it, is one body. The methods are called in
a pool thread inside the store's transaction (`cursor` is its cursor), so
a body put for a message that then fails to commit goes with the
transaction. A blob store outside PostgreSQL would write its object first
(idempotent: same hash, same bytes), keep the row as the reference, and
collect objects with no row in L{collect}.
"""

import hashlib
import zlib

from zope.interface import Interface, implementer

# Compress when it pays: bodies of at least this many octets that shrink
# to at most this share of their size (most text mail halves).
COMPRESS_FROM = 512
COMPRESS_RATIO = 0.9
NONE, ZLIB = 0, 1

# Unreferenced bodies younger than this are kept: a delivery may be about
# to use one again (see PostgresBlobStore.collect).
GRACE_SECONDS = 3600


def digest(data):
    return hashlib.sha256(data).digest()


class IBlobStore(Interface):
    """Message bodies by content hash (bytes, SHA-256 of the body)."""

    def put(cursor, data):
        """Keep `data` (bytes) if not kept yet; @return: its hash."""

    def get_many(cursor, hashes):
        """@return: {hash: bytes} for the hashes kept (missing ones left out)."""

    def collect(cursor, grace_seconds=GRACE_SECONDS):
        """Drop bodies no message refers to any more; @return: how many."""


@implementer(IBlobStore)
class PostgresBlobStore:
    """Bodies in `mailplat_bodies`, zlib-compressed when that saves a tenth or more."""

    def put(self, cursor, data):
        key = digest(data)
        compression, stored = NONE, data
        if len(data) >= COMPRESS_FROM:
            packed = zlib.compress(data, 6)
            if len(packed) <= len(data) * COMPRESS_RATIO:
                compression, stored = ZLIB, packed
        # DO UPDATE (not NOTHING): the row is locked and its last_used
        # renewed, so a collect running now can't drop it under us.
        cursor.execute(
            "INSERT INTO mailplat_bodies (hash, size, compression, data) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (hash) DO UPDATE SET last_used = now()",
            (key, len(data), compression, stored),
        )
        return key

    def get_many(self, cursor, hashes):
        if not hashes:
            return {}
        cursor.execute(
            "SELECT hash, compression, data FROM mailplat_bodies WHERE hash = ANY(%s)", (list(set(hashes)),)
        )
        out = {}
        for key, compression, data in cursor.fetchall():
            data = bytes(data)
            out[bytes(key)] = zlib.decompress(data) if compression == ZLIB else data
        return out

    def collect(self, cursor, grace_seconds=GRACE_SECONDS):
        cursor.execute(
            "DELETE FROM mailplat_bodies b WHERE b.last_used < now() - make_interval(secs => %s) "
            "AND NOT EXISTS (SELECT 1 FROM mailplat_messages m WHERE m.body = b.hash)",
            (grace_seconds,),
        )
        return cursor.rowcount
