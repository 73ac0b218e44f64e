"""
DKIM verification (RFC 6376 6) of every DKIM-Signature of a message, with
dkimpy for the canonicalization and the cryptography, and the server's
asynchronous resolver for the keys:

1. the signatures' d= and s= are read from the header (no DNS);
2. each key record (`s._domainkey.d` TXT) is looked up through
   L{mailplat.auth.lookups.Lookups}, all at once;
3. dkimpy verifies each signature in the reactor's thread pool, with a
   `dnsfunc` that answers from what step 2 fetched (it never touches DNS).

At most L{MAX_SIGNATURES} signatures are checked (RFC 6376 6.1 lets a
verifier limit them): 50 signatures cost what 10 do. dkimpy checks the
body up to `l=` when a signature has it, so text appended after the signed
length does not change the verdict (RFC 6376 8.2 explains the risk; DMARC
still needs the From domain aligned).

    results = yield verify(lookups, message_bytes)
    [(r.result, r.domain, r.selector, r.reason) for r in results]
"""

import re

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailplat.auth import dkim_fast
from mailplat.auth.lookups import DNSTemporaryError

log = Logger()

MAX_SIGNATURES = 10
MINIMUM_KEY_BITS = 1024  # RFC 8301 3.2: smaller RSA keys fail
_DOMAIN = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,251}[A-Za-z0-9])?\Z")


class DKIMResult:
    def __init__(self, result, domain=None, selector=None, reason=""):
        self.result = result  # pass, fail, neutral, temperror, permerror (RFC 8601 2.7.1)
        self.domain = domain  # d=, lowercased str, or None when unreadable
        self.selector = selector
        self.reason = reason

    def __repr__(self):
        return f"<DKIMResult {self.result} d={self.domain} s={self.selector}: {self.reason}>"


def _crlf(data):
    """dkimpy canonicalizes CRLF text; the server keeps LF line ends."""
    if b"\r" not in data:  # the usual case: one pass, not two
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _signature_tags(value):
    """The d= and s= tags of one DKIM-Signature value (bytes), or raises ValueError."""
    from dkim.util import InvalidTagValueList, parse_tag_value

    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList as e:
        raise ValueError(f"unreadable signature: {e}")
    domain = re.sub(rb"\s+", b"", tags.get(b"d", b"")).rstrip(b".")
    selector = re.sub(rb"\s+", b"", tags.get(b"s", b""))
    if not domain or not selector:
        raise ValueError("signature without d= or s=")
    if not _DOMAIN.match(domain) or not _DOMAIN.match(selector) or b".." in domain + selector:
        raise ValueError("d= or s= is not a domain name")
    return domain.decode("ascii").lower(), selector.decode("ascii").lower()


def signatures(data):
    """[(index, d, s) or (index, None, problem)] for the DKIM-Signature fields of a message."""
    from dkim import MessageFormatError, rfc822_parse

    try:
        headers, _ = rfc822_parse(data)
    except MessageFormatError as e:
        return [], str(e)
    out = []
    values = [v for n, v in headers if n.lower() == b"dkim-signature"]
    for i, value in enumerate(values[:MAX_SIGNATURES]):
        try:
            out.append((i, *_signature_tags(value)))
        except ValueError as e:
            out.append((i, None, str(e)))
    return out, None


# Up to this size a message is verified in the reactor's thread: ~2.5 ms for
# 100 KB. In the thread pool the same work took 15-25 ms of wall time under
# load (the worker waits for the GIL each time it lets it go, and the busy
# reactor holds it for a switch interval), and the SMTP client waits for it.
INLINE_LIMIT = 256 * 1024


@defer.inlineCallbacks
def verify(lookups, header, read_message, size=None):
    """
    A Deferred firing with one L{DKIMResult} per checked signature ([] for
    an unsigned message). Never fails.

    @param header: the message's header section (bytes, LF or CRLF).
    @param read_message: a blocking function returning the whole message,
        called only when there is a signature to check: in the reactor's
        thread when `size` is at most L{INLINE_LIMIT}, else in the thread pool.
    @param size: the message's size in bytes, when known.
    """
    header = _crlf(header)
    if b"\ndkim-signature" not in b"\n" + header.lower():
        return []  # unsigned: nothing to parse, no message to read
    found, problem = signatures(header.rstrip(b"\r\n") + b"\r\n\r\n")
    if problem:
        return [DKIMResult("permerror", reason=f"message header unreadable: {problem}")]
    names = sorted({f"{s}._domainkey.{d}" for _, d, s in found if d is not None})
    answers = yield defer.DeferredList([lookups.txt(n) for n in names], consumeErrors=True)
    keys = {}
    for name, (ok, value) in zip(names, answers):
        if ok:
            keys[name] = value
        elif value.check(DNSTemporaryError):
            keys[name] = value.value
        else:
            keys[name] = DNSTemporaryError(f"{name}: {value.getErrorMessage()}")
    # dkimpy reads LF or CRLF line ends alike (rfc822_parse): the message
    # goes as stored, its body made CRLF in one pass (dkim_fast).
    work = lambda: _verify_all(read_message(), found, keys)  # noqa: E731
    try:
        if size is not None and size <= INLINE_LIMIT:
            results = work()
        else:
            results = yield threads.deferToThread(work)
    except Exception:
        log.failure("DKIM verification failed")
        results = [DKIMResult("temperror", d, s, "internal error") for _, d, s in found]
    return results


def _verify_all(data, found, keys):
    """Blocking (in a thread): dkimpy over each signature, keys from `keys`."""
    import dkim

    dkim_fast.install()  # canonicalization and parsing without per-line regular expressions

    results = []
    verifier = None
    for index, domain, selector in found:
        if domain is None:
            results.append(DKIMResult("permerror", reason=selector))
            continue
        name = f"{selector}._domainkey.{domain}"
        record = keys.get(name)
        if isinstance(record, DNSTemporaryError):
            results.append(DKIMResult("temperror", domain, selector, "key lookup failed"))
            continue
        if not record:
            # RFC 6376 6.1.2: no key record is a permanent failure.
            results.append(DKIMResult("permerror", domain, selector, "no key"))
            continue
        key = record[0]
        try:
            tags = dkim.util.parse_tag_value(key)
        except dkim.util.InvalidTagValueList:
            results.append(DKIMResult("permerror", domain, selector, "bad key record"))
            continue
        if tags.get(b"p", b"").strip() == b"":
            results.append(DKIMResult("fail", domain, selector, "key revoked"))  # RFC 6376 3.6.1
            continue
        try:
            # dkimpy's verify() calls an unreadable key a bad signature; it is a bad record.
            dkim.evaluate_pk(name.encode(), key)
        except (dkim.DKIMException, ValueError, TypeError):
            results.append(DKIMResult("permerror", domain, selector, "bad key record"))
            continue
        try:
            if verifier is None:
                verifier = dkim.DKIM(data, minkey=MINIMUM_KEY_BITS, logger=_QUIET)
            ok = verifier.verify(idx=index, dnsfunc=lambda _name, timeout=5, key=key: key)
        except dkim.ValidationError as e:
            text = str(e)
            if text.startswith("body hash mismatch"):
                results.append(DKIMResult("fail", domain, selector, "body hash did not verify"))
            else:
                results.append(DKIMResult("permerror", domain, selector, text.split(" (")[0]))
            continue
        except dkim.DKIMException as e:
            results.append(DKIMResult("permerror", domain, selector, str(e).split(" (")[0].split(":")[0]))
            continue
        except Exception as e:  # a malformed signature dkimpy does not expect
            results.append(DKIMResult("permerror", domain, selector, type(e).__name__))
            continue
        if ok:
            results.append(DKIMResult("pass", domain, selector))
        else:
            results.append(DKIMResult("fail", domain, selector, "signature did not verify"))
    return results


class _QuietLogger:
    """dkimpy logs every failure at error level; the verdict goes in the header instead."""

    def __getattr__(self, name):
        if name == "isEnabledFor":
            return lambda level: False
        return lambda *args, **kwargs: None


_QUIET = _QuietLogger()
