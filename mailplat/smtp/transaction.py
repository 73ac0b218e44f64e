"""
The mail transaction: MAIL, RCPT, DATA and BDAT, driving an
IDeliveryTransaction so that each recipient gets its own answer and `250`
comes only after the delivery's commit.
"""

import re
import time
import uuid
from email.utils import formatdate

from twisted.internet import defer
from twisted.logger import Logger

from mailplat import oplog
from mailplat.calls import client_text
from mailplat.checks import run_stage
from mailplat.interfaces import Envelope, PermanentFailure, TemporaryFailure
from mailplat.smtp.address import PathError, parse_path, split_path
from mailplat.smtp.framing import DataReader
from mailplat.smtp.headers import received_header
from mailplat.store.source import PrefixedSource, SpooledSource

log = Logger()

COMMAND, DATA, BDAT = "COMMAND", "DATA", "BDAT"

_MISSING_HEADER = re.compile(rb"^(message-id|date)[ \t]*:", re.I | re.M)

# RFC 1870 6: size-value ::= 1*20DIGIT (ASCII digits only; int() would also
# take "+1", "1_0" and non-ASCII digits, and refuses over 4,300 digits).
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")
# RFC 3030 2: chunk-size ::= 1*DIGIT, unbounded; more than 20 significant
# digits is more octets than any message we could take.
_CHUNK_SIZE = re.compile(rb"0*([0-9]{1,20})")


class BdatChunk:
    """Where we are in one BDAT chunk (RFC 3030 2)."""

    def __init__(self, size, last, error):
        self.remaining = size
        self.last = last
        self.error = error  # (code, enhanced, text) when the chunk is refused


class SMTPTransactionMixin:
    """MAIL / RCPT / DATA / BDAT for L{mailplat.smtp.server.MailplatSMTP}."""

    def _reset_transaction(self):
        if self._transaction is not None:
            try:
                self._transaction.abort()
            except Exception:
                log.failure("abort failed")
        if self._data is not None:
            self._data.discard()
            self._data = None
        self._transaction = None
        self._sender = None
        self._recipients = []
        self._utf8 = False
        self._bdat_size = 0
        self._bdat_cr = False
        self._bdat_failed = False
        self._envelope = None
        self._queue_id = None  # given at MAIL, logged and sent with the 250 after data
        self._folder = None  # a check's Verdict.folder for this message
        session = getattr(self, "_check_session", None)
        if session is not None:
            session.sender, session.size_hint, session.recipients = None, None, []

    def _protocol_name(self):
        # RFC 3848, and RFC 6531 3.7.3 for SMTPUTF8 (UTF8SMTP...)
        name = "ESMTP" + ("S" if self.secure else "") + ("A" if self._user else "")
        return ("UTF8SMTP" + name[5:]) if self._utf8 else name

    def _text_argument(self, rest, keyword):
        """`FROM:<...> params` as str, or None after answering 501."""
        try:
            text = rest.decode("utf-8")
        except UnicodeDecodeError:
            self._error(501, "5.5.2", "arguments are not UTF-8")
            return None
        if not text[: len(keyword)].upper() == keyword:
            self._error(501, "5.5.4", f"syntax: {keyword}<address>")
            return None
        return text[len(keyword) :]

    def _params(self, text):
        """ESMTP parameters -> {KEYWORD: value or None}; None after a 501/555."""
        params = {}
        for item in text.split():
            key, sep, value = item.partition("=")
            if not key.isascii() or not key.replace("-", "").isalnum():
                self._error(501, "5.5.4", f"bad parameter {item!r}")
                return None
            params[key.upper()] = value if sep else None
        return params

    # --- MAIL ----------------------------------------------------------------

    def smtp_MAIL(self, rest):
        if self._helo[0] is None:
            self._error(503, "5.5.1", "send EHLO or HELO first")
            return None
        if self._transaction is not None:
            self._error(503, "5.5.1", "nested MAIL command")
            return None
        if self.policy != "mx" and self._user is None:
            self._error(530, "5.7.0", "authentication required")
            return None
        text = self._text_argument(rest, "FROM:")
        if text is None:
            return None
        try:
            path, param_text = split_path(text)
        except PathError as e:
            self._error(501, "5.1.7", f"bad sender address: {e}")
            return None
        params = self._params(param_text)
        if params is None:
            return None
        for key, value in params.items():
            problem = self._check_mail_param(key, value)
            if problem:
                self._error(*problem)
                return None
        utf8 = "SMTPUTF8" in params
        try:
            sender = parse_path(path, utf8=utf8, allow_null=True)
        except PathError as e:
            self._error(553, "5.1.7", f"bad sender address: {e}")
            return None
        self._utf8 = utf8
        self._require_tls = "REQUIRETLS" in params
        size = params.get("SIZE")
        self._check_session.size_hint = int(size) if size else None
        return self._start(sender)

    def _check_mail_param(self, key, value):
        """RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 4954 AUTH, RFC 8689 REQUIRETLS."""
        if key == "SIZE":
            if not value or not _SIZE_VALUE.fullmatch(value):
                return (501, "5.5.4", "SIZE needs a number of at most 20 digits")
            if int(value) > self.factory.limits["message_size"]:
                return (552, "5.3.4", "message size exceeds fixed maximum message size")
        elif key == "BODY":
            if (value or "").upper() not in ("7BIT", "8BITMIME", "BINARYMIME"):
                return (501, "5.5.4", "BODY must be 7BIT, 8BITMIME or BINARYMIME")
        elif key == "SMTPUTF8":
            if value is not None:
                return (501, "5.5.4", "SMTPUTF8 takes no value")
        elif key == "REQUIRETLS":
            # RFC 8689 4: only over TLS, and it takes no value.
            if value is not None:
                return (501, "5.5.4", "REQUIRETLS takes no value")
            if not self.secure:
                return (530, "5.7.10", "REQUIRETLS needs a TLS session")
        elif key != "AUTH":
            return (555, "5.5.4", f"parameter {key} not supported")
        return None

    def _start(self, sender):
        envelope = Envelope(
            sender=sender,
            helo=self._helo[0].decode("utf-8", "replace"),
            client_address=self._peer,
            protocol=self._protocol_name(),
            authenticated_as=self._user.address if self._user else None,
            received_by=self.factory.hostname,
            require_tls=getattr(self, "_require_tls", False),
        )
        # RFC 1870: MAIL FROM's SIZE=, for the recipients' quota checks at RCPT.
        envelope.size_hint = self._check_session.size_hint
        d = defer.succeed(True)
        if self._user is not None and self.factory.restrict_sender and sender:
            d = defer.maybeDeferred(self.factory.addresses.owns, self._user.address, sender)

        def allowed(ok):
            if not ok:
                raise PermanentFailure(
                    f"{self._user.address} may not send as {sender}", "5.7.1", 553
                )
            return run_stage(self.factory.checks, "mail", self._check_session, sender)

        def checked(verdict):
            if self._refused_by_check(verdict):
                self._log_refused("mail", verdict.code, verdict.enhanced, verdict.text, sender=sender, check=verdict.check)
                return None
            d = defer.maybeDeferred(self.factory.delivery.start, envelope)
            return d.addCallback(started)

        def started(transaction):
            self._transaction = transaction
            self._queue_id = oplog.new_queue_id()
            envelope.queue_id = self._queue_id
            self._envelope = envelope
            self._sender = sender
            self._check_session.sender = sender
            self._recipients = []
            self.reply(250, "2.1.0", "sender OK")

        return d.addCallback(allowed).addCallback(checked).addErrback(self._failed_reply, "mail", sender=sender)

    # --- RCPT ------------------------------------------------------------------

    def smtp_RCPT(self, rest):
        if self._transaction is None:
            self._error(503, "5.5.1", "need MAIL before RCPT")
            return None
        text = self._text_argument(rest, "TO:")
        if text is None:
            return None
        try:
            path, param_text = split_path(text)
            address = parse_path(path, utf8=self._utf8)
        except PathError as e:
            self._error(553 if "@" in text else 501, "5.1.3", f"bad recipient address: {e}")
            return None
        params = self._params(param_text)
        if params is None:
            return None
        if params:
            self._error(555, "5.5.4", f"parameter {next(iter(params))} not supported")
            return None
        if len(self._recipients) >= self.factory.limits["recipients"]:
            self._refuse("rcpt", 452, "4.5.3", "too many recipients", rcpt=address)
            return None
        domain = address.rpartition("@")[2]
        if not self.factory.is_local_domain(domain) and not self.factory.relay_enabled:
            if self.policy == "mx":
                self._refuse("rcpt", 554, "5.7.1", f"relay access denied: {domain} is not handled here", rcpt=address)
            else:
                self._refuse("rcpt", 550, "5.7.1", f"relay to {domain} is not configured on this server", rcpt=address)
            return None
        transaction = self._transaction
        d = run_stage(self.factory.checks, "rcpt", self._check_session, address)

        def checked(verdict):
            if self._refused_by_check(verdict):
                self._log_refused("rcpt", verdict.code, verdict.enhanced, verdict.text, rcpt=address, check=verdict.check)
                return None
            return defer.maybeDeferred(transaction.add_recipient, address).addCallback(accepted)

        def accepted(_):
            self._recipients.append(address)
            self._check_session.recipients.append(address)
            self.reply(250, "2.1.5", "recipient OK")

        return d.addCallback(checked).addErrback(self._failed_reply, "rcpt", rcpt=address)

    def _failed_reply(self, failure, stage=None, **about):
        if failure.check(PermanentFailure):
            e = failure.value
            answer = (e.code, e.enhanced, e.text)
        elif failure.check(TemporaryFailure):
            e = failure.value
            # 452 for a full mailbox (RFC 5321 4.2.2, mailplat.interfaces.OverQuota).
            answer = (getattr(e, "code", 451), e.enhanced, e.text)
        else:
            log.failure("SMTP backend error", failure)
            answer = (451, "4.3.0", "local error in processing")
        # A plugin's text (a path, a parser error) is logged in full; the
        # client gets it only when the plugin made it public.
        told = answer if failure.check(PermanentFailure, TemporaryFailure) is None else (
            answer[0], answer[1], client_text(failure.value))
        self.reply(*told)
        if stage is not None:
            self._log_refused(stage, *answer, **about)

    def _refuse(self, stage, code, enhanced, text, **about):
        self.reply(code, enhanced, text)
        self._log_refused(stage, code, enhanced, text, **about)

    def _log_refused(self, stage, code, enhanced, text, sender=None, rcpt=None, check=None):
        """One `refused` line per refused sender, recipient or message (docs/operating.md)."""
        if sender is None and self._sender is not None:
            sender = self._sender
        oplog.emit(
            "refused",
            id=self._queue_id,
            code=code,
            status=enhanced,
            stage=stage,
            port=self.policy,
            client=oplog.client(self._peer),
            user=self._user.address if self._user else None,
            **{"from": None if sender is None else f"<{sender}>"},
            rcpt=None if rcpt is None else f"<{rcpt}>",
            check=check,
            reason=text,
        )

    def _log_accepted(self, size):
        envelope = self._envelope
        oplog.emit(
            "accepted",
            id=self._queue_id,
            port=self.policy,
            client=oplog.client(self._peer),
            client_name=(envelope.client_name or None) if envelope else None,
            helo=self._helo[0].decode("utf-8", "replace") if self._helo[0] else None,
            tls=self.secure,
            user=self._user.address if self._user else None,
            **{"from": f"<{self._sender or ''}>"},
            size=size,
            nrcpt=len(self._recipients),
            rcpts=[f"<{r}>" for r in self._recipients],
            folder=(envelope.folder if envelope else None),
        )

    # --- DATA ------------------------------------------------------------------

    def smtp_DATA(self, rest):
        if self._transaction is None:
            self._error(503, "5.5.1", "need MAIL before DATA")
            return
        if not self._recipients:
            self._error(554, "5.5.1", "no valid recipients")
            return
        if self._data is not None:
            self._error(503, "5.5.1", "DATA after BDAT in one transaction")
            return
        self._data = SpooledSource(self.factory.spool_dir)
        self._data_reader = DataReader(
            self._data.write,
            max_size=self.factory.limits["message_size"],
            max_line=self.factory.limits["line_length"],
        )
        self._state = DATA
        self.setTimeout(self.factory.limits["data_timeout"])
        self.reply(354, None, "end data with <CR><LF>.<CR><LF>")

    def _end_of_data(self):
        self._state = COMMAND
        self.setTimeout(self.timeout)
        reader = self._data_reader
        self._data_reader = None
        problem = None
        if reader.too_big:
            problem = (552, "5.3.4", "message size exceeds fixed maximum message size")
        elif reader.long_line:
            limit = self.factory.limits["line_length"]
            problem = (554, "5.6.0", f"message has a line longer than {limit} octets")
        return self._finish_message(problem)

    # --- BDAT (RFC 3030) -------------------------------------------------------

    def smtp_BDAT(self, rest):
        parts = rest.split()
        if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or (len(parts) == 2 and parts[1].upper() != b"LAST"):
            # We cannot know how many octets follow: the session is lost.
            self.reply(501, "5.5.4", "syntax: BDAT size [LAST]; closing")
            self._state = "CLOSED"
            self.close_connection()
            return
        number = _CHUNK_SIZE.fullmatch(parts[0])
        if number is None:
            # Too many octets to read and discard: refuse and close (RFC 3030 2).
            self.reply(552, "5.3.4", "BDAT chunk exceeds fixed maximum message size; closing")
            self._state = "CLOSED"
            self.close_connection()
            return
        size, last = int(number.group(1)), len(parts) == 2
        error = None
        if self._transaction is None:
            error = (503, "5.5.1", "need MAIL before BDAT")
        elif not self._recipients:
            error = (554, "5.5.1", "no valid recipients")
        elif self._data_reader is not None:
            error = (503, "5.5.1", "BDAT during DATA")
        elif self._bdat_failed:
            error = (503, "5.5.1", "an earlier BDAT of this message failed; send RSET")
        if error is None and self._data is None:
            self._data = SpooledSource(self.factory.spool_dir)
        self._bdat = BdatChunk(size, last, error)
        self._state = BDAT
        self.setTimeout(self.factory.limits["data_timeout"])
        return None  # the loop in _process reads the chunk

    def _bdat_feed(self):
        """
        Take the current chunk's octets from the buffer. False while more
        are needed; then the chunk's outcome (None, or the delivery's
        Deferred for the LAST chunk).
        """
        chunk = self._bdat
        take = min(chunk.remaining, len(self._buffer))
        data, self._buffer = self._buffer[:take], self._buffer[take:]
        chunk.remaining -= take
        if chunk.error is None and data:
            self._bdat_size += len(data)
            if self._bdat_size <= self.factory.limits["message_size"]:
                # Stored files use LF line ends; a CR split from its LF by a
                # read or chunk boundary waits for the next octet.
                if self._bdat_cr:
                    data = b"\r" + data
                    self._bdat_cr = False
                if data.endswith(b"\r"):
                    data, self._bdat_cr = data[:-1], True
                self._data.write(data.replace(b"\r\n", b"\n"))
        if chunk.remaining:
            return False
        self._state = COMMAND
        self.setTimeout(self.timeout)
        if chunk.last and self._bdat_cr and chunk.error is None:
            self._data.write(b"\r")
            self._bdat_cr = False
        self._bdat = None
        if chunk.error is not None:
            self._bdat_failed = self._transaction is not None
            self._error(*chunk.error)
            return None
        if self._bdat_size > self.factory.limits["message_size"]:
            too_big = (552, "5.3.4", "message size exceeds fixed maximum message size")
            if chunk.last:
                return self._finish_message(too_big)
            self._bdat_failed = True
            self.reply(*too_big)
            return None
        if chunk.last:
            return self._finish_message(None)
        self.reply(250, "2.0.0", f"{self._bdat_size} octets received")
        return None

    # --- end of a message --------------------------------------------------------

    def _finish_message(self, problem):
        """Deliver the received message (or refuse it) and answer once."""
        source = self._data
        self._data = None
        if problem is not None:
            if source is not None:
                source.discard()
            self._log_refused("data", *problem)
            self._reset_transaction()
            self.reply(*problem)
            return None
        if self._envelope is not None:
            # The `delay` of the `delivered` lines counts from here.
            self._envelope.received_at = time.time()
        prefix = received_header(
            helo=self._helo[0].decode("utf-8", "replace"),
            client_address=self._peer,
            hostname=self.factory.hostname,
            protocol=self._protocol_name(),
            recipients=self._recipients,
        )
        if self.policy != "mx":
            prefix += self._submission_headers(source)
        transaction = self._transaction
        message = PrefixedSource(prefix, source)

        def done(_):
            # The queue id in the answer, as Postfix gives it, so a sender's
            # report can be matched with our `accepted` line.
            self._log_accepted(getattr(message, "size", None))
            self.reply(250, "2.0.0", f"message accepted for delivery as {self._queue_id}")

        def checked(verdict):
            if self._refused_by_check(verdict):
                self._log_refused("data", verdict.code, verdict.enhanced, verdict.text, check=verdict.check)
                return None
            if self._folder and self._envelope is not None:
                self._envelope.folder = self._folder
            # Header fields a data check asked for (rspamd's X-Spam-*), on top.
            added = getattr(self._envelope, "added_headers", None)
            delivered = PrefixedSource(b"".join(added) + prefix, source) if added else message
            return defer.maybeDeferred(transaction.deliver, delivered).addCallback(done)

        d = run_stage(self.factory.checks, "data", self._check_session, self._envelope, message)
        d.addCallback(checked)

        def finished(result):
            source.discard()
            self._transaction = None
            self._reset_transaction()
            return result

        d.addErrback(self._failed_reply, "data")
        d.addBoth(finished)
        return d

    def _submission_headers(self, source):
        """RFC 6409 8.2/8.3: a submission server adds Date and Message-ID when missing."""
        with source.open() as f:
            head = f.read(64 * 1024)
        end = head.find(b"\n\n")
        header = head if end < 0 else head[: end + 1]
        if head.startswith(b"\n"):
            header = b""
        present = {m.group(1).lower() for m in _MISSING_HEADER.finditer(header)}
        added = b""
        if b"date" not in present:
            added += f"Date: {formatdate(localtime=True)}\n".encode()
        if b"message-id" not in present:
            added += f"Message-ID: <{uuid.uuid4().hex}@{self.factory.hostname}>\n".encode()
        return added
