"""
IMAP URLs (RFC 5092) as CATENATE (RFC 4469) uses them: a message or a
part of one in the user's own account, written either relative to the
server ("/INBOX;UIDVALIDITY=7/;UID=3/;SECTION=1.MIME") or absolute
("imap://user@host/INBOX/;UID=3"); and URLAUTH URLs (RFC 4467 3), which
name their owner and who may fetch them. Only parsing lives here; APPEND
and L{mailplat.imap.urlauth} resolve the result against an account.
"""

import re
from urllib.parse import unquote_to_bytes

from mailplat.imap.parser import canonical_name


class BadURL(Exception):
    """A URL we cannot or must not resolve; answered NO [BADURL url] (RFC 4469 6)."""


class MessageURL:
    """One parsed imessagepart (RFC 5092 3)."""

    __slots__ = ("mailbox", "uidvalidity", "uid", "section", "start", "length")

    def __init__(self, mailbox, uidvalidity, uid, section, start, length):
        self.mailbox = mailbox  # str, canonical (INBOX upper-cased)
        self.uidvalidity = uidvalidity  # int or None
        self.uid = uid  # int
        self.section = section  # str ('' for the whole message)
        self.start = start  # int or None (RFC 5092 partial-range)
        self.length = length  # int or None: to the end


# RFC 5092 3: authority, then "/" enc-mailbox [uidvalidity] iuid [isection] [ipartial].
_ABSOLUTE = re.compile(r"^imap://(?P<userinfo>[^@/]*)@(?P<host>[^/]*)(?P<path>/.*)$", re.IGNORECASE)
_PATH = re.compile(
    r"^/(?P<mailbox>[^;?#]+?)"
    r"(?:;UIDVALIDITY=(?P<uidvalidity>[1-9]\d*))?"
    r"/;UID=(?P<uid>[1-9]\d*)"
    r"(?:/;SECTION=(?P<section>[^/;?#]*))?"
    r"(?:/;PARTIAL=(?P<start>\d+)(?:\.(?P<length>[1-9]\d*))?)?$",
    re.IGNORECASE,
)
_MAX_NUMBER = 2**32 - 1


def _owner_matches(userinfo, host, address):
    # RFC 5092 3.2: iuserinfo = enc-user [iauth]; the user is ours alone.
    user = userinfo.split(";", 1)[0]
    try:
        user = unquote_to_bytes(user).decode("utf-8").lower()
    except UnicodeDecodeError:
        return False
    address = address.lower()
    return user == address or f"{user}@{host.lower()}" == address


def parse(url, address, separator="."):
    """
    The URL (str) of a CATENATE part -> L{MessageURL}; L{BadURL} when it is
    malformed, names another user, or is not a message (RFC 4469 5: a URL
    part must refer to a message or message part). URLAUTH URLs, which may
    name another user, go through L{parse_authurl}.
    """
    path = url
    absolute = _ABSOLUTE.match(url)
    if absolute:
        if not _owner_matches(absolute.group("userinfo"), absolute.group("host"), address):
            raise BadURL("not your account")
        path = absolute.group("path")
    elif url.lower().startswith("imap:") or url.startswith("//"):
        raise BadURL("only imap://user@host/ or a server-relative URL")
    m = _PATH.match(path)
    if m is None:
        raise BadURL("not an IMAP message URL")
    try:
        # RFC 5092 5: enc-mailbox is percent-encoded UTF-8.
        mailbox = unquote_to_bytes(m.group("mailbox")).decode("utf-8")
        section = unquote_to_bytes(m.group("section") or "").decode("ascii")
    except UnicodeDecodeError:
        raise BadURL("bad percent-encoding")
    # RFC 3986 5.2.4 would resolve "/../bob/INBOX" to another user's tree;
    # no dot segment ever names one of our folders.
    if any(p in ("", ".", "..") for p in mailbox.split("/")) or any(c < " " for c in mailbox):
        raise BadURL("not a mailbox of yours")
    uid = int(m.group("uid"))
    uidvalidity = int(m.group("uidvalidity")) if m.group("uidvalidity") else None
    start = int(m.group("start")) if m.group("start") is not None else None
    length = int(m.group("length")) if m.group("length") else None
    if any(n is not None and n > _MAX_NUMBER for n in (uid, uidvalidity, start, length)):
        raise BadURL("number out of range")
    return MessageURL(canonical_name(mailbox, separator), uidvalidity, uid, section, start, length)


# --- URLAUTH (RFC 4467) ---------------------------------------------------------

# RFC 4467 3 / RFC 5092 11: authimapurlfull = authimapurl iurlauth;
# iurlauth-rump = [expire] ";URLAUTH=" access; iua-verifier = ":" mechanism ":" enc-urlauth.
_URLAUTH = re.compile(
    r"^(?P<rump>(?P<base>.*?)(?:;EXPIRE=(?P<expire>[^;/]+))?;URLAUTH=(?P<access>[^:;/?#]+))"
    r"(?::(?P<mech>[A-Za-z0-9.\-]+):(?P<token>[0-9A-Fa-f]*))?$",
    re.IGNORECASE,
)


class AuthURL:
    """A parsed URLAUTH URL: whose account, which part, who may fetch it, until when."""

    __slots__ = ("owner", "ref", "rump", "expire", "access", "mechanism", "token")

    def __init__(self, owner, ref, rump, expire, access, mechanism, token):
        self.owner = owner  # candidate addresses of the owner, e.g. ["tester", "tester@example.test"]
        self.ref = ref  # L{MessageURL}
        self.rump = rump  # str: everything up to and including ";URLAUTH=access"
        self.expire = expire  # aware datetime or None
        self.access = access  # str, lower-cased: "anonymous", "authuser", "user+name", "submit+name"
        self.mechanism = mechanism  # str upper-cased or None (GENURLAUTH input)
        self.token = token  # str (lower hex) or None


def parse_authurl(url, separator="."):
    """
    RFC 4467 3: an absolute imap:// URL with ;URLAUTH= (and, for URLFETCH,
    the ":mechanism:token" verifier) -> L{AuthURL}; L{BadURL} otherwise.
    Unlike L{parse}, the owner need not be the session's user: who may use
    the URL is decided by its access identifier (RFC 4467 3, 7).
    """
    m = _URLAUTH.match(url)
    if m is None:
        raise BadURL("no ;URLAUTH=")
    absolute = _ABSOLUTE.match(m.group("base"))
    if absolute is None:
        raise BadURL("URLAUTH needs an absolute imap://user@host/ URL")
    userinfo, host = absolute.group("userinfo"), absolute.group("host").lower()
    try:
        user = unquote_to_bytes(userinfo.split(";", 1)[0]).decode("utf-8").lower()
        access = unquote_to_bytes(m.group("access")).decode("utf-8").lower()
    except UnicodeDecodeError:
        raise BadURL("bad percent-encoding")
    if not user:
        raise BadURL("no user in the URL")
    # RFC 4467 3: access = ("submit+" / "user+") enc-user / "authuser" / "anonymous".
    if not (access in ("anonymous", "authuser") or (access.startswith(("user+", "submit+")) and access.split("+", 1)[1])):
        raise BadURL("unknown access identifier")
    owner = [user] if "@" in user else [f"{user}@{host}", user]
    expire = None
    if m.group("expire"):
        import datetime

        text = unquote_to_bytes(m.group("expire")).decode("ascii", "replace").upper().replace("Z", "+00:00")
        try:
            # RFC 4467 3 / RFC 3339 date-time.
            expire = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise BadURL("bad ;EXPIRE=")
        if expire.tzinfo is None:
            raise BadURL(";EXPIRE= needs a time zone")
    ref = parse(m.group("base"), owner[0], separator)
    mech = m.group("mech").upper() if m.group("mech") else None
    token = m.group("token").lower() if m.group("mech") else None
    return AuthURL(owner, ref, m.group("rump"), expire, access, mech, token)
