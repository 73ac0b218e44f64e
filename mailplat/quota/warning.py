"""The one warning mail at C{warning_percent} of a quota (RFC 3834: auto-generated)."""

import uuid
from email.utils import formatdate


def _human(octets):
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if octets >= size:
            return f"{octets / size:.1f} {unit}"
    return f"{octets} octets"


def warning_message(address, octets, messages, limits, percent):
    """The one warning mail, LF line ends (RFC 3834: auto-generated)."""
    domain = address.rpartition("@")[2]
    lines = []
    if limits.storage:
        lines.append(f"  storage:  {_human(octets)} of {_human(limits.storage)} ({octets * 100 // limits.storage}%)")
    if limits.messages:
        lines.append(f"  messages: {messages} of {limits.messages} ({messages * 100 // limits.messages}%)")
    body = (
        f"Your mailbox {address} has reached {percent}% of its quota:\n\n"
        + "\n".join(lines)
        + "\n\nWhen it is full, new mail to you is refused and goes back to its senders,\n"
        "and you cannot save or copy messages.\n"
        "Delete mail you no longer need, and empty your Trash folder, to make room.\n\n"
        f"You will not be warned again until your mailbox has gone back below {percent}%.\n"
    )
    header = (
        "Return-Path: <>\n"
        f"From: Mail System <postmaster@{domain}>\n"
        f"To: <{address}>\n"
        f"Subject: Your mailbox is {percent}% full\n"
        f"Date: {formatdate(localtime=True)}\n"
        f"Message-ID: <{uuid.uuid4().hex}@{domain}>\n"
        "Auto-Submitted: auto-generated\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
    )
    return (header + "\n" + body).encode("utf-8")
