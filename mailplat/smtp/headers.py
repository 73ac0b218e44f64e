"""Trace headers the SMTP server adds at the top of a message (RFC 5321 4.4)."""

from email.utils import formatdate


def received_header(helo, client_address, hostname, protocol, recipients, queue_id=None):
    """
    A `Received:` field, folded as MTAs write it. `protocol` is the RFC 3848
    keyword (ESMTP, ESMTPS, ESMTPA, ESMTPSA). A single recipient is named in
    a `for` clause; several are not, so that Bcc recipients stay hidden.
    """
    helo = "".join(c for c in helo if c.isprintable() and c not in "()\\")[:255] or "unknown"
    lines = [f"Received: from {helo} ([{client_address}])", f"\tby {hostname} (mailplat) with {protocol}"]
    if queue_id:
        lines[-1] += f" id {queue_id}"
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {formatdate(localtime=True)}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{formatdate(localtime=True)}")
    return ("\n".join(lines) + "\n").encode("utf-8")
