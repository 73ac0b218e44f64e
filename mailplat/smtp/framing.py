"""
DATA framing (RFC 5321 4.1.1.4 and 4.5.2), written so that it cannot be
fooled:

- only <CRLF>.<CRLF> ends a message; a bare LF or CR next to a dot is
  data (the SMTP smuggling class, CVE-2023-51764);
- a leading dot is removed from a line that starts with one;
- a line longer than the limit is never split or read as a command: the
  message is marked and refused at its end;
- a message past the size limit is read to its end and then refused.

Lines are handed to the sink with LF line ends, as maildir and mbox files
keep them.
"""


class DataReader:
    def __init__(self, sink, max_size, max_line):
        self._sink = sink
        self.max_size = max_size
        self.max_line = max_line
        self.size = 0
        self.done = False
        self.too_big = False
        self.long_line = False
        self._midline = False  # the current line began in input we dropped

    def feed(self, buf):
        """Consume what can be consumed; return the bytes to keep for later."""
        out = []
        pos = 0
        size = self.size
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                rest = buf[pos:]
                if len(rest) > self.max_line + 1:
                    # A line this long is refused anyway: don't hold it.
                    self.long_line = True
                    self._midline = True
                    rest = rest[-1:] if rest.endswith(b"\r") else b""
                break
            line = buf[pos:end]
            pos = end + 2
            if self._midline:
                self._midline = False
                continue
            if line[:1] == b".":
                if len(line) == 1:
                    self.done = True
                    rest = buf[pos:]
                    break
                line = line[1:]
            if len(line) > self.max_line:
                self.long_line = True
                continue
            size += len(line) + 1
            if size > self.max_size:
                self.too_big = True
            if not self.too_big and not self.long_line:
                out.append(line)
        self.size = size
        if out:
            out.append(b"")
            self._sink(b"\n".join(out))
        return rest
