"""
ARC verification (RFC 8617): did the chain of forwarders that sealed the
message (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results)
hand it on intact? The same shape as L{mailplat.auth.dkim_verify}: the
keys of every ARC-Seal and ARC-Message-Signature are looked up through the
server's asynchronous resolver first, then dkimpy's ARC verifier runs in
the thread pool with a `dnsfunc` answering from them.

The result (pass, fail, none, temperror) goes in the Authentication-Results
field; it does not change the DMARC verdict or the policy (trusting a
forwarder's ARC results is a decision per forwarder, not made here yet).
"""

import re

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailplat.auth.dkim_verify import _DOMAIN, _QUIET, MINIMUM_KEY_BITS, _crlf
from mailplat.auth.lookups import DNSTemporaryError

log = Logger()

MAX_INSTANCES = 50  # RFC 8617 4.2.1: i= is 1 to 50
_ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")


class ARCResult:
    def __init__(self, result, instances=0, reason=""):
        self.result = result  # pass, fail, none, temperror (RFC 8617 10.1 / RFC 8601)
        self.instances = instances
        self.reason = reason

    def __repr__(self):
        return f"<ARCResult {self.result} i={self.instances}: {self.reason}>"


def _key_names(headers):
    """The `s._domainkey.d` names of the ARC-Seal and ARC-Message-Signature fields."""
    from dkim.util import InvalidTagValueList, parse_tag_value

    names = set()
    for name, value in headers:
        if name.lower() not in (b"arc-seal", b"arc-message-signature"):
            continue
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            continue
        d = re.sub(rb"\s+", b"", tags.get(b"d", b"")).rstrip(b".")
        s = re.sub(rb"\s+", b"", tags.get(b"s", b""))
        if d and s and _DOMAIN.match(d) and _DOMAIN.match(s):
            names.add(f"{s.decode().lower()}._domainkey.{d.decode().lower()}")
    return sorted(names)


@defer.inlineCallbacks
def verify(lookups, header, read_message):
    """A Deferred firing with the L{ARCResult} (never fails); `read_message` as in dkim_verify."""
    from dkim import MessageFormatError, rfc822_parse

    header = _crlf(header)
    lowered = b"\n" + header.lower()
    if not any(b"\n" + name in lowered for name in _ARC_FIELDS):
        return ARCResult("none")
    try:
        headers, _ = rfc822_parse(header.rstrip(b"\r\n") + b"\r\n\r\n")
    except MessageFormatError as e:
        return ARCResult("fail", reason=f"header unreadable: {e}")
    seals = sum(1 for n, _ in headers if n.lower() == b"arc-seal")
    if seals > MAX_INSTANCES:
        return ARCResult("fail", seals, f"more than {MAX_INSTANCES} ARC sets")
    names = _key_names(headers)
    answers = yield defer.DeferredList([lookups.txt(n) for n in names], consumeErrors=True)
    keys = {}
    for name, (ok, value) in zip(names, answers):
        if not ok or isinstance(value, DNSTemporaryError):
            return ARCResult("temperror", seals, f"key lookup failed: {name}")
        if value:
            keys[name] = value[0]
    try:
        result = yield threads.deferToThread(lambda: _verify(_crlf(read_message()), keys, seals))
    except Exception:
        log.failure("ARC verification failed")
        result = ARCResult("temperror", seals, "internal error")
    return result


def _verify(data, keys, seals):
    """Blocking (in a thread): dkimpy's ARC verifier with the fetched keys."""
    import dkim

    def dnsfunc(name, timeout=5):
        return keys.get(name.decode("ascii", "replace").rstrip(".").lower())

    try:
        cv, _, reason = dkim.ARC(data, minkey=MINIMUM_KEY_BITS, logger=_QUIET).verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        return ARCResult("fail", seals, str(e).split(" (")[0])
    except Exception as e:  # a malformed set dkimpy does not expect
        return ARCResult("fail", seals, type(e).__name__)
    if cv == dkim.CV_Pass:
        return ARCResult("pass", seals)
    if cv == dkim.CV_None:
        return ARCResult("none", seals, reason)
    return ARCResult("fail", seals, reason)
