"""
SMTP TLS Reporting (RFC 8460): a domain's `_smtp._tls.<domain>` TXT record
names where senders report the TLS failures they met on the way to its MX
hosts (MTA-STS, DANE).

    record = parse_record("v=TLSRPTv1; rua=mailto:tlsrpt@example.org")
    record.rua            # ["mailto:tlsrpt@example.org"]
    record, problem = select([b"v=TLSRPTv1; rua=...", b"something else"])
    record = yield lookup(resolver, "example.org")   # TLSRPTRecord or None; never fails

`mailplat dns-check` checks the record's syntax with L{select}; the relay
names the record's `rua` in its log line when a delivery fails a TLS
policy (docs/relay.md). Sending the aggregate reports themselves is not
done yet.
"""

import re
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns, error

log = Logger()

VERSION = "v=TLSRPTv1"
MAX_RECORD = 4096  # a record longer than this is not a reporting address anyone needs

# RFC 8460 3: tlsrpt-ext-name and tlsrpt-ext-value
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")
_ADDR = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+\Z")


class TLSRPTError(ValueError):
    """A TXT record that starts with v=TLSRPTv1 but does not follow RFC 8460 3."""


class TLSRPTRecord:
    """A parsed TLS-RPT record: the report URIs (`mailto:` and `https:`) and any extension fields."""

    def __init__(self, rua, extensions=None, text=""):
        self.rua = list(rua)
        self.extensions = dict(extensions or {})
        self.text = text

    def __str__(self):
        return ",".join(self.rua)

    def __repr__(self):
        return f"TLSRPTRecord(rua={self.rua!r})"


def _check_uri(uri):
    """RFC 8460 3: a `mailto:` address or an `https:` URL (other schemes are not defined)."""
    if not uri or any(c.isspace() for c in uri):
        raise TLSRPTError(f"rua {uri!r} is not a URI")
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme == "mailto":
        address = unquote(rest.split("?", 1)[0])
        if not _ADDR.match(address):
            raise TLSRPTError(f"rua {uri!r}: not a mail address after mailto:")
    elif scheme == "https":
        try:
            parts = urlsplit(uri)
            host = parts.hostname
        except ValueError:
            host = None
        if not host:
            raise TLSRPTError(f"rua {uri!r}: no host in the https: URL")
    else:
        raise TLSRPTError(f"rua {uri!r}: the scheme must be mailto: or https:")


def parse_record(text):
    """
    The text of one TXT record -> L{TLSRPTRecord}; raises L{TLSRPTError}
    naming what is wrong. RFC 8460 3: `v=TLSRPTv1` first, then `;`
    separated fields, `rua=` exactly once with one or more URIs separated
    by commas; unknown fields following the extension grammar are kept.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) > MAX_RECORD:
        raise TLSRPTError(f"a record of {len(text)} characters (at most {MAX_RECORD} are read)")
    fields = [f.strip() for f in text.split(";")]
    if fields[0] != VERSION:
        raise TLSRPTError(f"does not start with {VERSION}")
    if fields and fields[-1] == "":
        fields.pop()  # a final ";" is allowed
    rua, extensions = None, {}
    for field in fields[1:]:
        name, sep, value = field.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise TLSRPTError(f"{field!r} is not a name=value field")
        if name == "rua":
            if rua is not None:
                raise TLSRPTError("more than one rua= field")
            rua = [u.strip() for u in value.split(",")]
            for uri in rua:
                _check_uri(uri)
        elif name == "v":
            raise TLSRPTError("v= is not the first field only")
        else:
            if not _EXT_NAME.match(name) or not _EXT_VALUE.match(value):
                raise TLSRPTError(f"{field!r} is not a valid extension field")
            extensions[name] = value
    if rua is None:
        raise TLSRPTError("no rua= field")
    return TLSRPTRecord(rua, extensions, text)


def _is_tlsrpt(text):
    # RFC 8460 3.1: records that do not begin with "v=TLSRPTv1;" are discarded.
    return text.startswith(VERSION) and text[len(VERSION):].lstrip()[:1] in (";", "")


def select(texts):
    """
    The TXT records of `_smtp._tls.<domain>` (bytes or str each; a record
    in several strings already joined) -> (L{TLSRPTRecord}, None), or
    (None, why there is no usable record). RFC 8460 3.1: other records are
    ignored; not exactly one TLS-RPT record means the domain has none.
    """
    candidates = []
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if _is_tlsrpt(text):
            candidates.append(text)
    if not candidates:
        return None, "no TLS-RPT record"
    if len(candidates) > 1:
        return None, f"{len(candidates)} TLS-RPT records (RFC 8460 3.1: the domain then has none)"
    try:
        return parse_record(candidates[0]), None
    except TLSRPTError as e:
        return None, str(e)


@defer.inlineCallbacks
def lookup(resolver, domain):
    """The TLS-RPT record of `domain` through `resolver`, or None; never fails (a failure is logged)."""
    name = f"_smtp._tls.{domain}"
    try:
        answers, _, _ = yield resolver.lookupText(name)
    except (defer.CancelledError, error.DNSNameError):
        return None
    except Exception as e:
        log.debug("TLS-RPT: {name}: lookup failed ({error})", name=name, error=type(e).__name__)
        return None
    texts = [b"".join(a.payload.data) for a in answers if a.type == dns.TXT]
    record, problem = select(texts)
    if record is None and texts and problem != "no TLS-RPT record":
        log.info("TLS-RPT: {name}: {problem}", name=name, problem=problem)
    return record
