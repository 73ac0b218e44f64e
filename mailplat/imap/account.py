"""
The avatar the portal hands the IMAP server: Twisted's `IAccount` over
our L{IMailAccount}.

The server talks to `.account` (the IMailAccount) directly, because
Twisted's IAccount/IMailbox family has no UIDs that last, no change
events and no metadata cache; the IAccount methods are kept working so
that the avatar is honest about the interface the portal was asked for.
"""

from twisted.internet import defer
from twisted.mail import imap4
from zope.interface import implementer


@implementer(imap4.IAccount)
class IMAPAccount:
    def __init__(self, account):
        self.account = account

    def addMailbox(self, name, mbox=None):
        return self.create(name)

    def create(self, pathspec):
        return defer.maybeDeferred(self.account.create, _text(pathspec)).addCallback(lambda _: True)

    def select(self, name, rw=True):
        return defer.maybeDeferred(self.account.folder, _text(name))

    def delete(self, name):
        return defer.maybeDeferred(self.account.delete, _text(name))

    def rename(self, oldname, newname):
        return defer.maybeDeferred(self.account.rename, _text(oldname), _text(newname))

    def isSubscribed(self, name):
        d = defer.maybeDeferred(self.account.subscriptions)
        return d.addCallback(lambda subs: _text(name) in subs)

    def subscribe(self, name):
        return defer.maybeDeferred(self.account.subscribe, _text(name))

    def unsubscribe(self, name):
        return defer.maybeDeferred(self.account.unsubscribe, _text(name))

    def listMailboxes(self, ref, wildcard):
        return defer.maybeDeferred(self.account.folders)

    def logout(self):
        pass


def _text(name):
    return name.decode("imap4-utf-7") if isinstance(name, bytes) else name
