"""
MaildirStore: one maildir per user at a path made from a template
(`%d` domain, `%n` local part, `%u` whole address, as Dovecot's
mail_location), INBOX at its root and folders as Maildir++ `.Name`
subdirectories.
"""

import os

from twisted.internet import defer, threads
from zope.interface import implementer

from mailplat.interfaces import IMailStore, PermanentFailure
from mailplat.store.maildir.deliver import write_message
from mailplat.store.maildir.folder import MaildirFolder


def expand(template, address):
    """
    Fill in %d, %n, %u (and %% for a percent sign) for an address.

    @raise PermanentFailure: when a part could escape its directory.
    """
    local, _, domain = address.lower().rpartition("@")
    for part in (local, domain):
        if not part or "/" in part or "\0" in part or part.startswith("."):
            raise PermanentFailure(f"address not usable as a mailbox path: {address!r}", "5.1.3", 553)
    out, i = [], 0
    while i < len(template):
        c = template[i]
        if c == "%" and i + 1 < len(template):
            code = template[i + 1]
            out.append({"d": domain, "n": local, "u": f"{local}@{domain}", "%": "%"}.get(code, "%" + code))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def folder_dir(root, name):
    """Maildir++ layout: INBOX is the root, `Sent` is `.Sent`, `A/B` is `.A.B`."""
    if name.upper() == "INBOX":
        return root
    return os.path.join(root, "." + name.replace("/", "."))


@implementer(IMailStore)
class MaildirStore:
    """Users' mail in maildirs under a path template."""

    def __init__(self, path_template):
        self.path_template = path_template

    def user_root(self, address):
        return expand(self.path_template, address)

    def deliver(self, address, source, folder=None):
        try:
            root = self.user_root(address)
        except PermanentFailure:
            return defer.fail()

        def run():
            target = root
            if folder:
                candidate = folder_dir(root, folder)
                if os.path.isdir(os.path.join(candidate, "cur")):
                    target = candidate
            return write_message(target, source)

        return threads.deferToThread(run)

    def inbox(self, address):
        try:
            return defer.succeed(MaildirFolder(self.user_root(address), "INBOX"))
        except PermanentFailure:
            return defer.fail()
