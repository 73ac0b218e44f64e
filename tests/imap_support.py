"""
IMAP test support: an in-memory IMailAccount / IMailFolder (the smallest
store that keeps the contract: UIDs, flags, events, cache) so protocol
behaviour can be tested apart from the maildir store; a listener over it;
and a raw line client for exact bytes on the wire.
"""

import io
import os
import socket
import ssl
import tempfile
import time

from twisted.cred import checkers, portal as cred_portal
from twisted.internet import defer, reactor
from twisted.mail import imap4
from zope.interface import implementer

from mailplat.config import LIMIT_KEYS

from mailplat.interfaces import FolderEvent, IBatchOpen, IMailAccount, IMailFolder, IMessageInfo


@implementer(IMessageInfo)
class Info:
    def __init__(self, uid, data, flags, internaldate):
        self.uid = uid
        self.key = f"m{uid}"
        self.data = data
        self.size = len(data) + data.count(b"\n") - data.count(b"\r\n")
        self.flags = frozenset(flags)
        self.internaldate = internaldate


@implementer(IMailFolder)
class MemoryFolder:
    def __init__(self, name):
        self.name = name
        self.uidvalidity = int(time.time())
        self.uidnext = 1
        self._messages = []
        self._cache = {}
        self._claimed = set()
        self._listeners = []

    def _publish(self, kind, uids, origin):
        event = FolderEvent(kind, uids, origin)
        for listener in list(self._listeners):
            listener(event)

    def sync(self):
        return defer.succeed(list(self._messages))

    def messages(self):
        return self._messages

    def open(self, uid):
        for m in self._messages:
            if m.uid == uid:
                return defer.succeed(io.BytesIO(m.data))
        return defer.fail(KeyError(uid))

    def cached(self, uid, field):
        return self._cache.get((uid, field))

    def cache(self, uid, field, value):
        self._cache[(uid, field)] = value

    def add(self, data, flags=(), internaldate=None, origin=None):
        uid = self.uidnext
        self.uidnext += 1
        self._messages = self._messages + [Info(uid, data, flags, internaldate or time.time())]
        self._publish("exists", [uid], origin)
        return uid

    def store_flags(self, uids, flags, mode, origin=None):
        out = {}
        new = []
        for m in self._messages:
            if m.uid in uids:
                if mode == "+":
                    f = m.flags | flags
                elif mode == "-":
                    f = m.flags - flags
                else:
                    f = frozenset(flags)
                m = Info(m.uid, m.data, f, m.internaldate)
                out[m.uid] = m.flags
            new.append(m)
        self._messages = new
        self._publish("flags", list(out), origin)
        return defer.succeed(out)

    def append(self, source, flags=(), internaldate=None, origin=None):
        with source.open() as f:
            data = f.read()
        return defer.succeed(self.add(data, flags, internaldate, origin))

    def copy_to(self, uids, target, origin=None):
        pairs = []
        for m in self._messages:
            if m.uid in uids:
                pairs.append((m.uid, target.add(m.data, m.flags, m.internaldate, origin)))
        return defer.succeed(pairs)

    def move_to(self, uids, target, origin=None):
        d = self.copy_to(uids, target, origin)

        def remove(pairs):
            gone = {s for s, _ in pairs}
            self._messages = [m for m in self._messages if m.uid not in gone]
            self._publish("expunge", sorted(gone), origin)
            return pairs

        return d.addCallback(remove)

    def expunge(self, uids=None, origin=None):
        gone = [m.uid for m in self._messages if "\\Deleted" in m.flags and (uids is None or m.uid in uids)]
        self._messages = [m for m in self._messages if m.uid not in gone]
        if gone:
            self._publish("expunge", gone, origin)
        return defer.succeed(gone)

    def claim_recent(self, uids):
        fresh = [u for u in uids if u not in self._claimed]
        self._claimed.update(fresh)
        return fresh

    def recent_count(self):
        return sum(1 for m in self._messages if m.uid not in self._claimed)

    def subscribe(self, callback):
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)


class CountingFolder(MemoryFolder):
    """A MemoryFolder that counts the messages opened one by one."""

    def __init__(self, name):
        super().__init__(name)
        self.single_opens = 0

    def open(self, uid):
        self.single_opens += 1
        return super().open(uid)


@implementer(IBatchOpen)
class BatchFolder(CountingFolder):
    """A folder that also opens many messages at once (IBatchOpen); keeps each batch asked for."""

    def __init__(self, name):
        super().__init__(name)
        self.batches = []
        self.missing = set()  # UIDs open_many reports as gone

    def open_many(self, uids):
        self.batches.append(list(uids))
        by_uid = {m.uid: m for m in self._messages}
        return defer.succeed(
            [None if u in self.missing or u not in by_uid else io.BytesIO(by_uid[u].data) for u in uids]
        )


@implementer(IMailAccount)
class MemoryAccount:
    separator = "."

    def __init__(self, address):
        self.address = address
        self._folders = {"INBOX": MemoryFolder("INBOX")}
        self._special = {}
        self._subs = set()
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            self.create(name, "\\" + name)
            self._subs.add(name)

    def folders(self):
        out = []
        for name in sorted(self._folders):
            attrs = {"\\HasChildren" if any(n.startswith(name + ".") for n in self._folders) else "\\HasNoChildren"}
            if name in self._special:
                attrs.add(self._special[name])
            out.append((name, frozenset(attrs)))
        return defer.succeed(out)

    def folder(self, name):
        if name not in self._folders:
            return defer.fail(KeyError(name))
        return defer.succeed(self._folders[name])

    def create(self, name, special_use=None):
        if name in self._folders:
            return defer.fail(ValueError(f"{name} exists"))
        self._folders[name] = MemoryFolder(name)
        if special_use:
            self._special[name] = special_use
        return defer.succeed(None)

    def delete(self, name):
        if name == "INBOX":
            return defer.fail(ValueError("INBOX"))
        if name not in self._folders:
            return defer.fail(KeyError(name))
        del self._folders[name]
        return defer.succeed(None)

    def rename(self, old, new):
        if old not in self._folders:
            return defer.fail(KeyError(old))
        if new in self._folders:
            return defer.fail(ValueError(f"{new} exists"))
        folder = self._folders.pop(old)
        folder.name = new
        self._folders[new] = folder
        if old == "INBOX":
            self._folders["INBOX"] = MemoryFolder("INBOX")
        return defer.succeed(None)

    def subscriptions(self):
        return defer.succeed(sorted(self._subs))

    def subscribe(self, name):
        self._subs.add(name)
        return defer.succeed(None)

    def unsubscribe(self, name):
        self._subs.discard(name)
        return defer.succeed(None)


# --- a server over the memory store, and a raw line client ------------------


@implementer(cred_portal.IRealm)
class _Realm:
    def __init__(self, accounts):
        self.accounts = accounts

    def requestAvatar(self, avatar_id, mind, *interfaces):
        from mailplat.imap.account import IMAPAccount

        name = avatar_id.decode() if isinstance(avatar_id, bytes) else avatar_id
        return (imap4.IAccount, IMAPAccount(self.accounts[name]), lambda: None)


class MemoryIMAP:
    """An IMAP listener over MemoryAccounts, for protocol tests."""

    def __init__(self, testcase, tls=False, plaintext=True, **limits):
        from mailplat import tls as tlsmod
        from mailplat.imap.server import IMAPFactory
        from mailplat.throttle import LoginThrottle

        self.account = MemoryAccount("alice")
        self.inbox = self.account._folders["INBOX"]
        checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")
        portal = cred_portal.Portal(_Realm({"alice": self.account}), [checker])
        values = {k: v[1] for k, v in LIMIT_KEYS.items()}
        values.update(limits)
        context = None
        if tls:
            d = tempfile.mkdtemp(prefix="mailplat-imap-")
            cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            tlsmod.make_self_signed(cert, key, "localhost")

            class C:
                tls_certificate, tls_key, tls_create, hostname, source = cert, key, False, "localhost", ""

            context = tlsmod.context_factory(C)
        self.throttle = LoginThrottle(values["auth_failures"], values["auth_failure_window"], step=0.01)
        self.factory = IMAPFactory(portal, context, values, throttle=self.throttle, allow_plaintext_auth=plaintext)
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        testcase.addCleanup(self.listening.stopListening)
        self.port = self.listening.getHost().port


class RawClient:
    """A blocking line client that sends exact bytes and reads exact answers."""

    def __init__(self, port, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        return self.file.readline()

    def until(self, tag):
        """Lines up to and including the one tagged `tag` (bytes)."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return lines
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, text):
        tag = text.split(b" ", 1)[0]
        self.send(text + b"\r\n")
        return self.until(tag)

    def login(self):
        return self.command(b"L1 LOGIN alice pw")

    def starttls(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class TLSRawClient(RawClient):
    """L{RawClient} over implicit TLS (LOGIN needs TLS, RFC 3501 6.2.3)."""

    def __init__(self, port, timeout=10):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()
