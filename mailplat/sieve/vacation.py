"""
vacation (RFC 5230) and vacation-seconds (RFC 6131): an automatic reply,
at most once per sender (and handle) per period.

The script only asks for a reply (L{Vacation}); whether one goes out is
decided at delivery (L{should_reply}, L{Memory}), by the rules of RFC
5230 4: never to the null sender, a list, a bulk or automatic message or
ourselves, only when the user is a visible recipient, and once per
period. The reply itself (L{build}) is an RFC 3834 auto-reply sent with
the null envelope sender through the relay queue.
"""

import email.utils
import hashlib
import os
import time

from mailplat.sieve import memory
from mailplat.sieve.core import Action
from mailplat.sieve.engine import command, extension
from mailplat.sieve.message import decode_words

extension("vacation")
extension("vacation-seconds")

DAY = 86400
MEMORY_ENTRIES = 5000  # per user; the oldest are forgotten first


class Vacation(Action):
    kind = "vacation"

    def __init__(self, reason, seconds, subject=None, sender=None, addresses=(), mime=False, handle=None):
        self.reason, self.seconds, self.subject = reason, seconds, subject
        self.sender, self.addresses, self.mime = sender, tuple(addresses), mime
        self.handle = handle if handle is not None else "\0".join((reason, subject or "", sender or ""))

    def key(self):
        return ("vacation",)  # RFC 5230 4.7: one vacation per run


def _check(node, checker):
    if "seconds" in node.tags and "vacation-seconds" not in checker.required:
        return ':seconds needs require "vacation-seconds"'
    if "days" in node.tags and "seconds" in node.tags:
        return "only one of :days and :seconds"
    return None


@command(
    "vacation",
    extension="vacation",
    tags={"days": "number", "seconds": "number", "subject": "string", "from": "string", "addresses": "string-list",
          "mime": None, "handle": "string"},
    positional=("string",),
    check=_check,
)
def _vacation(run, node):
    if "seconds" in node.tags:
        seconds = node.tags["seconds"]  # RFC 6131 2: 0 means every time
    else:
        seconds = max(node.tags.get("days", 7), 1) * DAY  # RFC 5230 4.1: at least a day
    run.add(
        Vacation(
            run.x(node.args[0]),
            seconds,
            subject=run.x(node.tags["subject"]) if "subject" in node.tags else None,
            sender=run.x(node.tags["from"]) if "from" in node.tags else None,
            addresses=run.x(node.tags.get("addresses", [])),
            mime="mime" in node.tags,
            handle=run.x(node.tags["handle"]) if "handle" in node.tags else None,
        ),
        node,
        cancels_keep=False,  # RFC 5230 4: vacation does not cancel the implicit keep
    )


# --- at delivery ---------------------------------------------------------------------


def should_reply(message, user, vacation, user_addresses=()):
    """
    RFC 5230 4.5-4.6 and RFC 3834 2: None when a reply may go, else why not.
    `message` is the SieveMessage, `user` the recipient's address.
    """
    sender = message.envelope_from
    if not sender:
        return "the null sender"
    low = sender.lower()
    local = low.partition("@")[0]
    if local in ("mailer-daemon", "listserv", "majordomo") or local.startswith("owner-") or local.endswith("-request"):
        return "an automatic sender"
    mine = {a.lower() for a in (user, *user_addresses, *vacation.addresses)}
    if low in mine:
        return "ourselves"
    for value in message.raw_headers("auto-submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return "an automatic message (Auto-Submitted)"
    for value in message.raw_headers("precedence"):
        if value.strip().lower() in ("bulk", "list", "junk"):
            return "a bulk or list message (Precedence)"
    for name in ("list-id", "list-unsubscribe", "list-post", "x-auto-response-suppress"):
        if message.has(name):
            return f"a list or bulk message ({name})"
    # RFC 5230 4.5: only when the user is among the visible recipients.
    visible = set()
    for name in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"):
        visible.update(a.lower() for a in message.addresses(name))
    base = _without_detail(user.lower())
    if not (visible & mine or base in {_without_detail(v) for v in visible}):
        return "the user is not a visible recipient"
    return None


def _without_detail(address, delimiter="+"):
    local, at, domain = address.rpartition("@")
    return local.partition(delimiter)[0] + at + domain


class Memory:
    """Who was answered when, per user: `<home>/.vacation.json`, written atomically."""

    def __init__(self, home):
        self.path = os.path.join(home, ".vacation.json")

    def _load(self):
        return memory.load(self.path)

    def due(self, sender, vacation, now=None):
        """True (and remembered) when `sender` has not had this reply within its period."""
        now = time.time() if now is None else now
        key = hashlib.sha256(f"{sender.lower()}\0{vacation.handle}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        data = self._load()
        last = data.get(key)
        if isinstance(last, (int, float)) and vacation.seconds and now - last < vacation.seconds:
            return False
        data[key] = now
        memory.save(self.path, data, MEMORY_ENTRIES)
        return True


def build(message, user, vacation, hostname):
    """The reply's bytes (RFC 3834 3: Auto-Submitted, In-Reply-To, References)."""
    original = message.headers("subject")
    subject = vacation.subject if vacation.subject is not None else "Auto: " + (original[0] if original else "")
    sender = vacation.sender or user
    ids = message.raw_headers("message-id")
    lines = [
        f"From: {sender}",
        f"To: {message.envelope_from}",
        f"Subject: {_header_text(subject)}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: {email.utils.make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-replied (vacation)",
        "Precedence: bulk",
    ]
    if ids:
        references = " ".join(message.raw_headers("references") + [ids[0]])
        lines += [f"In-Reply-To: {ids[0]}", f"References: {references}"]
    lines.append("MIME-Version: 1.0")
    if vacation.mime:
        body = vacation.reason.replace("\r\n", "\n")  # RFC 5230 4.4: the reason is a MIME entity
        return ("\n".join(lines) + "\n" + body).encode("utf-8")
    lines += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    return ("\n".join(lines) + "\n\n" + vacation.reason.replace("\r\n", "\n")).encode("utf-8")


def _header_text(text):
    text = decode_words(text).replace("\r", " ").replace("\n", " ")
    if text.isascii():
        return text
    from email.header import Header

    return Header(text, "utf-8").encode()
