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
keep them; the size limit counts the message as sent, with CRLF (RFC 1870).
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
        """Consume what can be consumed; return the bytes to keep for later.

        Works on all complete lines at once with bytes methods (C speed):
        a per-line Python loop costs more than the disk write.
        """
        last = buf.rfind(b"\r\n")
        if last < 0:
            return self._hold(buf)
        complete, rest = buf[: last + 2], buf[last + 2 :]
        if self._midline:
            # The first line here is the tail of an over-long line we dropped.
            end = complete.find(b"\r\n")
            complete = complete[end + 2 :]
            self._midline = False
        text = b"\r\n" + complete  # every line now starts after a CRLF
        end = text.find(b"\r\n.\r\n")
        if end >= 0:
            self.done = True
            rest = text[end + 5 :] + rest
            text = text[: end + 2]
        if len(text) > self.max_line and max(map(len, text.split(b"\r\n"))) > self.max_line:
            self.long_line = True
        # Remove one leading dot from each line (RFC 5321 4.5.2). The size
        # limit counts these octets, CRLF line ends included (RFC 1870 3),
        # before they become the LF line ends we store.
        unstuffed = text.replace(b"\r\n.", b"\r\n")[2:]
        self.size += len(unstuffed)
        data = unstuffed.replace(b"\r\n", b"\n")
        if self.size > self.max_size:
            self.too_big = True
        if data and not self.too_big and not self.long_line:
            self._sink(data)
        return rest if self.done else self._hold(rest)

    def _hold(self, partial):
        """Keep a partial line, unless it is already too long to accept."""
        if len(partial) > self.max_line + 1:
            self.long_line = True
            self._midline = True
            return partial[-1:] if partial.endswith(b"\r") else b""
        return partial
