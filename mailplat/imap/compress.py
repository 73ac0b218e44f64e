"""
COMPRESS=DEFLATE (RFC 4978): after `COMPRESS DEFLATE` is answered, both
directions are raw deflate streams (RFC 1951, no zlib header) inside any
TLS layer. A mixin of L{mailplat.imap.server.MailplatIMAP}.

- Every write is flushed with Z_SYNC_FLUSH (RFC 4978 4: a client must be
  able to read a whole response without waiting for more): mox turned
  the extension off because its inflater waited for data that a deflater
  without per-response flushes kept back.
- Input is inflated a bounded chunk at a time, and only while the session
  takes commands, so a small "deflate bomb" expands no faster than its
  commands are read, and the connection's back-pressure (L{Flow}) still
  stops reading the socket while answers wait.
- Corrupt input ends the session with a BYE (nothing of it can be trusted).
"""

import zlib

from twisted.internet import reactor

CHUNK = 64 * 1024  # octets inflated at a time


class Deflater:
    """Our side: each written answer compressed and flushed at once."""

    __slots__ = ("_z",)

    def __init__(self):
        self._z = zlib.compressobj(6, zlib.DEFLATED, -15)

    def deflate(self, data):
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)


class CompressCommands:
    # Class defaults: an uncompressed session carries no extra state.
    _deflater = None
    _inflater = None
    _zpending = b""

    def cmd_COMPRESS(self, tag, reader):
        reader.space()
        mechanism = reader.atom("a compression mechanism").upper()
        reader.end()
        if self._deflater is not None:
            # RFC 4978 3: a second COMPRESS (and one under TLS compression).
            return self.no(tag, "[COMPRESSIONACTIVE] DEFLATE is active already")
        if mechanism != b"DEFLATE":
            return self.bad(tag, "unknown compression mechanism; DEFLATE is the one offered")
        # RFC 4978 3: the tagged OK goes out uncompressed; then both directions are.
        self.ok(tag, "DEFLATE active")
        self._deflater = Deflater()
        self._inflater = zlib.decompressobj(-15)
        # What the client pipelined after the command is compressed already.
        self._zpending, self._buf = self._buf, b""
        if self._zpending:
            reactor.callLater(0, self._resume_input)
        return None

    def _compressed(self, data):
        """What write() sends: `data` deflated once COMPRESS is active."""
        return data if self._deflater is None else self._deflater.deflate(data)

    def _take_compressed(self, data):
        """dataReceived's first step: compressed input waits in _zpending, plain goes to _buf."""
        if self._inflater is None:
            self._buf += data
        else:
            self._zpending += data
            self._inflate_input()

    def _inflate_input(self):
        """Inflate what waits, a chunk at a time, taking the commands as they appear."""
        while self._zpending and not self._flow.paused and not self._closed:
            try:
                out = self._inflater.decompress(self._zpending, CHUNK)
            except zlib.error:
                self._zpending = b""
                self.write(b"* BYE corrupt compressed data\r\n")
                self._closed = True
                self.close_connection()
                return
            consumed_all = not self._inflater.unconsumed_tail
            self._zpending = self._inflater.unconsumed_tail
            self._buf += out
            self._process()
            if consumed_all or not out:
                break

    def _resume_input(self):
        """The Flow's proceed: inflate what waited, then take the commands."""
        if self._closed:
            return
        self._inflate_input()
        self._process()
