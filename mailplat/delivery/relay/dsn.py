"""
Delivery status notifications (RFC 3464) in a multipart/report (RFC 6522):
a human-readable part, the machine-readable delivery-status, and the
original message's header (text/rfc822-headers).
"""

import uuid
from email.utils import formatdate

MAX_HEADER = 64 * 1024


def original_header(path):
    """The header section of a stored message (LF line ends), at most 64 KB."""
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER)
    if head.startswith(b"\n"):
        return b""
    end = head.find(b"\n\n")
    return head if end < 0 else head[: end + 1]


def _status_of(failure):
    """The enhanced status code of a reply text ('550 5.1.1 no such user'), or a default."""
    code, text = failure
    word = text.split(" ", 1)[0] if text else ""
    if word.count(".") == 2 and word[0] in "245" and all(p.isdigit() for p in word.split(".")):
        return word
    if code and 400 <= code < 500:
        return "4.0.0"
    if code and code >= 500:
        return "5.0.0"
    return "4.4.1"  # no answer from the host


def build(hostname, record, failed, header, delayed=False, until=None):
    """
    The DSN for `record` (a queue record), as LF-terminated bytes.

    @param failed: [(recipient, code, text, remote_mta)] - code 0 for no reply.
    @param header: the original message's header section (bytes).
    @param delayed: a warning (Action: delayed) instead of a failure.
    """
    boundary = uuid.uuid4().hex
    sender = record["sender"]
    action = "delayed" if delayed else "failed"
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    human = [
        f"This is the mail system at {hostname}.",
        "",
        (
            "Your message could not be delivered yet to the recipients below. "
            "It will be retried; you do not need to send it again."
            if delayed
            else "Your message could not be delivered to the recipients below."
        ),
        "",
    ]
    status = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailplat-Queue-ID: {record['id']}",
        f"Arrival-Date: {formatdate(record['created'], localtime=True)}",
    ]
    for recipient, code, text, remote in failed:
        reply = f"{code} {text}" if code else text
        status_code = _status_of((code, text))
        if delayed:
            status_code = "4" + status_code[1:]
        human.append(f"<{recipient}>: {reply}")
        block = [
            "",
            f"Final-Recipient: rfc822; {recipient}",
            f"Action: {action}",
            f"Status: {status_code}",
        ]
        if remote:
            block.append(f"Remote-MTA: dns; {remote}")
        if code:
            block.append(f"Diagnostic-Code: smtp; {reply}")
        else:
            block.append(f"X-Mailplat-Diagnostic: {reply}")
        block.append(f"Last-Attempt-Date: {formatdate(localtime=True)}")
        if delayed and until:
            block.append(f"Will-Retry-Until: {formatdate(until, localtime=True)}")
        status.extend(block)
    parts = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=True)}",
        f"Message-ID: <{uuid.uuid4().hex}@{hostname}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Description: Notification",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        *status,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered message headers",
        "",
    ]
    head = ("\n".join(parts) + "\n").encode("utf-8")
    return head + header + f"\n--{boundary}--\n".encode()
