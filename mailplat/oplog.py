"""
The lines an operator greps: one per message per outcome, one per failed
login and per lockout, and the start-up summary. Each is one log event
whose text is `WHAT key=value key=value ...` (values with spaces quoted),
and whose fields carry the same values for `[log] format = "json"`.

    accepted id=... client=[ip] helo=... tls=yes user=... from=<...> size=... rcpts=...
    refused code=550 status=5.1.1 stage=rcpt client=[ip] from=<...> rcpt=<...> reason="..."
    delivered id=... rcpt=<...> mailbox=INBOX backend=maildir delay=0.012
    delivery-failed id=... rcpt=<...> mailbox=host:24 backend=lmtp outcome=deferred code=451 status=4.2.2 reason="..."
    login-failed protocol=imap client=[ip] user=...
    lockout client=[ip] failures=5 seconds=600
    service name=smtp endpoint=tcp:port=25

docs/operating.md lists every line and field.
"""

import json
import os
import re
import time

from twisted.logger import ILogObserver, Logger, formatEvent, jsonFileLogObserver
from zope.interface import provider

log = Logger(namespace="mailplat")


# A value with white space, a quote or a backslash is written as a JSON string.
_NEEDS_QUOTES = re.compile(r'[\s"\\]')


def _value(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def line(what, **fields):
    """`what key=value ...` in the order given (the text of one event)."""
    return " ".join([what] + [f"{k}={_value(v)}" for k, v in fields.items()])


def emit(what, level="info", **fields):
    """Log one operator line; its fields travel with the event (oplog_*)."""
    text = line(what, **fields)
    getattr(log, level)("{oplog_line}", oplog_line=text, oplog_event=what, oplog_fields=_jsonable(fields))
    return text


def _jsonable(fields):
    return {k: (list(v) if isinstance(v, tuple) else v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v))
            for k, v in fields.items()}


def new_queue_id():
    """
    A message's id in the log and in the 250 answer: the time in
    microseconds and four random bytes, in upper-case hex (sortable by
    time, unique across processes).
    """
    return f"{int(time.time() * 1e6):X}{os.urandom(4).hex().upper()}"


def client(address):
    """`[192.0.2.1]`: the address as Postfix writes it, for a peer or a string."""
    host = getattr(address, "host", address)
    return f"[{host}]" if host else None


def json_observer(out):
    """
    twisted.logger's JSON observer, one object a line, with the formatted
    message added as `text` so a log shipper needs no Twisted to read it.
    """
    observer = jsonFileLogObserver(out, recordSeparator="")

    @provider(ILogObserver)
    def observe(event):
        event = dict(event)
        try:
            event["text"] = formatEvent(event)
        except Exception:
            event["text"] = repr(event.get("log_format"))
        observer(event)

    return observe
