"""
URLAUTH (RFC 4467): GENURLAUTH, RESETKEY and URLFETCH.

A URLAUTH URL names a message (or part) in its owner's account and says
who may fetch it (";URLAUTH=anonymous", "authuser", "user+name" or
"submit+name"); the owner's server signs it with the INTERNAL mechanism:
the token is HMAC-SHA256 over the URL rump (everything up to and including
";URLAUTH=access", RFC 4467 3) with the mailbox access key of that mailbox
(RFC 4467 7). RESETKEY replaces keys, so every URL signed with the old
key fetches NIL from then on.

Where the keys live: one file per account, in the account's own root
beside its subscriptions file ("urlauth-keys" in a maildir root, which no
Maildir++ folder can be since those start with "."; ".urlauth-keys" in an
mbox root, whose folder listing skips dot files), mode 0600 and written
atomically. It goes with the account (backups, moves, deletion of the
user), needs no second per-user tree under state_dir, and is read only by
the owner's server code; no key is ever sent to a client. A JSON object:
canonical mailbox name -> hex key (32 random octets).
"""

import datetime
import hashlib
import hmac
import json
import os
import secrets

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailplat.imap import urls
from mailplat.imap.urlbinary import FETCH_PARAMS, metadata_response, url_metadata
from mailplat.imap.parser import BadCommand, canonical_name

log = Logger()

KEYS_MAILDIR = "urlauth-keys"
KEYS_MBOX = ".urlauth-keys"
MECHANISMS = ("INTERNAL",)  # RFC 4467 7: the only mechanism required


def _keys_path(account):
    root = account.root
    return os.path.join(root, KEYS_MBOX if hasattr(account, "inbox_path") else KEYS_MAILDIR)


def _read_keys(path):
    try:
        with open(path, encoding="ascii") as f:
            keys = json.load(f)
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError):
        log.warn("unreadable URLAUTH keys {path}; every URL signed before is void", path=path)
        return {}
    return {k: v for k, v in keys.items() if isinstance(k, str) and isinstance(v, str)}


def _write_keys(path, keys):
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            json.dump(keys, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def key_for(account, mailbox, create):
    """In a thread: the mailbox access key (bytes) of mailbox, made when create; else None."""
    path = _keys_path(account)
    keys = _read_keys(path)
    key = keys.get(mailbox)
    if key is None and create:
        key = keys[mailbox] = secrets.token_hex(32)
        _write_keys(path, keys)
    return bytes.fromhex(key) if key else None


def reset_keys(account, mailbox=None):
    """In a thread: RFC 4467 4.2 RESETKEY: a new key for mailbox, or drop all keys."""
    path = _keys_path(account)
    if mailbox is None:
        if os.path.exists(path):
            _write_keys(path, {})
        return
    keys = _read_keys(path)
    keys[mailbox] = secrets.token_hex(32)
    _write_keys(path, keys)


def drop_keys(account, names, separator):
    """In a thread: forget the keys of the mailboxes `names` and of their children."""
    path = _keys_path(account)
    keys = _read_keys(path)
    left = {
        k: v for k, v in keys.items() if not any(k == n or k.startswith(n + separator) for n in names)
    }
    if left != keys:
        _write_keys(path, left)


def token(key, rump):
    # RFC 4467 7: INTERNAL; the token is 32 or more hex digits (enc-urlauth).
    return hmac.new(key, rump.encode("utf-8"), hashlib.sha256).hexdigest()


def _locked(account, f, *args):
    """Run f(*args) in a thread under the account's root lock when it has one."""
    lock = getattr(account, "_serial", None)
    if lock is not None:
        return lock(threads.deferToThread, f, *args)
    return threads.deferToThread(f, *args)


def _access_allows(access, address):
    """RFC 4467 3: may the user logged in as address fetch with this access identifier?"""
    if access in ("anonymous", "authuser"):
        return True  # URLFETCH is only after login: any authenticated user
    kind, who = access.split("+", 1)
    if kind == "submit":
        return False  # RFC 4467 3: only for a submission server, which we are not here
    who = who.lower()
    address = address.lower()
    return who == address or who == address.split("@", 1)[0]


class URLAuthCommands:
    """GENURLAUTH, RESETKEY, URLFETCH; a mixin of L{mailplat.imap.server.MailplatIMAP}.
    URLFETCH's RFC 5524 parameters are answered by L{mailplat.imap.urlbinary}."""

    def _forget_urlauth(self, names):
        """
        A mailbox deleted or renamed (and its children) loses its access
        key, so URLs signed for what was there fetch NIL even if a new
        mailbox gets the name. Failing here fails nothing else: it is logged.
        """
        if not hasattr(self.account, "root"):
            return defer.succeed(None)  # an account that keeps no keys
        d = _locked(self.account, drop_keys, self.account, names, self._sep())
        return d.addErrback(lambda f: log.failure("URLAUTH keys of {names}", f, names=names))

    # --- GENURLAUTH (RFC 4467 4.1) ---------------------------------------------

    def cmd_GENURLAUTH(self, tag, reader):
        pairs = []
        reader.space()
        while True:
            url = reader.astring("a URL").decode("utf-8", "replace")
            reader.space()
            mech = reader.atom("a mechanism").decode("ascii", "replace").upper()
            pairs.append((url, mech))
            if not reader.maybe_space():
                break
        reader.end()
        return self._genurlauth(tag, pairs)

    @defer.inlineCallbacks
    def _genurlauth(self, tag, pairs):
        out = []
        for url, mech in pairs:
            if mech not in MECHANISMS:
                self.no(tag, f"unknown mechanism {mech}")
                return
            try:
                auth = urls.parse_authurl(url, self._sep())
            except urls.BadURL as e:
                self.bad(tag, f"invalid URL: {e}")
                return
            # RFC 4467 4.1: the URL must be an URLAUTH rump of the user's own mailbox.
            if auth.mechanism is not None:
                self.bad(tag, "the URL already has a token")
                return
            if self.account.address.lower() not in auth.owner:
                self.no(tag, "the URL names another user's mailbox")
                return
            try:
                folder = yield defer.maybeDeferred(self.account.folder, auth.ref.mailbox)
            except KeyError:
                self.no(tag, "[NONEXISTENT] no such mailbox")
                return
            if auth.ref.uidvalidity is not None and auth.ref.uidvalidity != folder.uidvalidity:
                self.no(tag, "UIDVALIDITY does not match")
                return
            key = yield _locked(self.account, key_for, self.account, auth.ref.mailbox, True)
            out.append(f"{auth.rump}:internal:{token(key, auth.rump)}")
        self.untagged(b"GENURLAUTH " + b" ".join(_quoted(u) for u in out))
        self.ok(tag, "GENURLAUTH completed")

    # --- RESETKEY (RFC 4467 4.2) -----------------------------------------------

    def cmd_RESETKEY(self, tag, reader):
        mailbox = None
        if reader.maybe_space():
            mailbox = canonical_name(reader.mailbox(), self._sep())
            while reader.maybe_space():
                mech = reader.atom("a mechanism").decode("ascii", "replace").upper()
                if mech not in MECHANISMS:
                    raise BadCommand(f"unknown mechanism {mech}")
        reader.end()
        return self._resetkey(tag, mailbox)

    @defer.inlineCallbacks
    def _resetkey(self, tag, mailbox):
        if mailbox is not None:
            try:
                yield defer.maybeDeferred(self.account.folder, mailbox)
            except KeyError:
                self.no(tag, "[NONEXISTENT] no such mailbox")
                return
        yield _locked(self.account, reset_keys, self.account, mailbox)
        self.ok(tag, "RESETKEY completed")

    # --- URLFETCH (RFC 4467 4.3; RFC 5524 URLAUTH=BINARY) ----------------------

    def cmd_URLFETCH(self, tag, reader):
        # RFC 5524 3: url-fetch-arg = url / "(" url *(SP fetch-param) ")"
        wanted = []
        reader.space()
        while True:
            if reader.peek() == b"(":
                reader.open_paren()
                url = reader.astring("a URL").decode("utf-8", "replace")
                params = []
                while reader.maybe_space():
                    name = reader.atom("BODYPARTSTRUCTURE, BINARY or BODY").upper()
                    if name not in FETCH_PARAMS:
                        raise BadCommand(f"unknown URLFETCH parameter {name.decode('ascii', 'replace')}")
                    params.append(name)
                reader.close_paren()
                wanted.append((url, params))
            else:
                wanted.append((reader.astring("a URL").decode("utf-8", "replace"), None))
            if not reader.maybe_space():
                break
        reader.end()
        return self._urlfetch(tag, wanted)

    @defer.inlineCallbacks
    def _urlfetch(self, tag, wanted):
        answer = [b"URLFETCH"]
        for url, params in wanted:
            try:
                data = yield self._urlauth_bytes(url, params)
            except Exception:
                log.failure("URLFETCH {url}", url=url)
                data = None
            answer.append(_quoted(url))
            # RFC 4467 4.3: NIL when the URL cannot be fetched, for whatever reason.
            if data is None:
                answer.append(b"NIL")
            elif params is None:
                answer.append(b"{%d}\r\n" % len(data) + data)
            else:
                answer.append(metadata_response(data, params))
        self.write(b"* " + b" ".join(answer) + b"\r\n")
        self.ok(tag, "URLFETCH completed")

    @defer.inlineCallbacks
    def _urlauth_bytes(self, url, params=None):
        """
        RFC 4467 3, 7: the bytes the URL names if its token, expiry and
        access allow, else None; with RFC 5524 parameters, a dict of what
        they ask for (L{url_metadata}).
        """
        from mailplat.imap.mailboxes import _url_part  # imported late: as CATENATE resolves URLs

        try:
            auth = urls.parse_authurl(url, self._sep())
        except urls.BadURL:
            return None
        if auth.mechanism not in MECHANISMS or not auth.token:
            return None
        if auth.expire is not None and auth.expire <= datetime.datetime.now(datetime.timezone.utc):
            return None  # RFC 4467 3: expired
        if not _access_allows(auth.access, self.account.address):
            return None
        account = yield self._owner_account(auth.owner)
        if account is None:
            return None
        key = yield _locked(account, key_for, account, auth.ref.mailbox, False)
        if key is None or not hmac.compare_digest(token(key, auth.rump), auth.token):
            return None
        try:
            folder = yield defer.maybeDeferred(account.folder, auth.ref.mailbox)
        except KeyError:
            return None
        if auth.ref.uidvalidity is not None and auth.ref.uidvalidity != folder.uidvalidity:
            return None
        yield defer.maybeDeferred(folder.sync)
        if not any(m.uid == auth.ref.uid for m in folder.messages()):
            return None
        try:
            f = yield defer.maybeDeferred(folder.open, auth.ref.uid)
            if params is None:
                data = yield threads.deferToThread(_url_part, f, auth.ref)
            else:
                data = yield threads.deferToThread(url_metadata, f, auth.ref, params)
        except (KeyError, OSError):
            return None
        return data

    @defer.inlineCallbacks
    def _owner_account(self, candidates):
        """The IMailAccount of the URL's owner (this user's own, or one the realm knows), or None."""
        if self.account.address.lower() in candidates:
            return self.account
        realm = getattr(self.portal, "realm", None)
        store = getattr(realm, "store", None)
        backend = None
        for checker in getattr(self.portal, "checkers", {}).values():
            backend = getattr(checker, "backend", None) or backend
        if store is None or backend is None:
            return None
        for address in candidates:
            # Never open (and so create) an account the realm does not know.
            known = yield defer.maybeDeferred(backend.lookup, address)
            if known:
                account = yield defer.maybeDeferred(store.account, known)
                return account
        return None


def _quoted(text):
    data = text.encode("utf-8") if isinstance(text, str) else text
    if b"\r" in data or b"\n" in data or b"\0" in data:
        return b"{%d}\r\n" % len(data) + data
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
