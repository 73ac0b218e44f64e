"""
twisted.cred wiring: one portal for every protocol. The checker asks the
realm backend for passwords; the cred realm hands each protocol the avatar
it asks for (an IMailUser for SMTP, a POP3 mailbox over the store's INBOX,
an IMAP account over the store's IMailAccount).
"""

from twisted.cred import checkers, credentials, error, portal
from twisted.internet import defer
from twisted.mail import imap4, pop3
from zope.interface import implementer

from mailplat.calls import call_backend, calling
from mailplat.interfaces import IFolderStore, IMailUser


@implementer(IMailUser)
class MailUser:
    def __init__(self, address):
        self.address = address


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


@implementer(checkers.ICredentialsChecker)
class RealmPasswordChecker:
    """Checks username/password credentials against an IRealmBackend."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, backend):
        self.backend = backend

    def requestAvatarId(self, creds):
        try:
            username, password = _text(creds.username), _text(creds.password)
        except UnicodeDecodeError:
            return defer.fail(error.UnauthorizedLogin("credentials are not UTF-8"))
        # A plain value, a Deferred or a coroutine (async def): all the same here.
        d = calling(error.UnauthorizedLogin)(self.backend.check_password, username, password)

        def decide(address):
            if address is None:
                raise error.UnauthorizedLogin("wrong user name or password")
            if not isinstance(address, str):
                raise TypeError(f"check_password answered {address!r}, not an address or None")
            return address

        return d.addCallback(decide)


@implementer(portal.IRealm)
class MailRealm:
    """Makes the avatar each protocol asks for."""

    def __init__(self, store):
        self.store = store

    def requestAvatar(self, avatarId, mind, *interfaces):
        for interface in interfaces:
            if interface is IMailUser:
                return defer.succeed((IMailUser, MailUser(avatarId), lambda: None))
            if interface is pop3.IMailbox:
                from mailplat.pop3.mailbox import POP3Mailbox

                return POP3Mailbox.open(self.store, avatarId).addCallback(
                    lambda box: (pop3.IMailbox, box, box.logout)
                )
            if interface is imap4.IAccount and IFolderStore.providedBy(self.store):
                from mailplat.imap.account import IMAPAccount

                d = call_backend(self.store.account, avatarId)
                return d.addCallback(lambda account: (imap4.IAccount, IMAPAccount(account), lambda: None))
        raise NotImplementedError(f"no avatar for {interfaces}")


def make_portal(backend, store):
    return portal.Portal(MailRealm(store), [RealmPasswordChecker(backend)])
