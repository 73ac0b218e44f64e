"""
DMARC (RFC 7489): does an SPF or DKIM pass vouch for the domain of the
From address, and what does that domain ask us to do when none does?

The policy record is `_dmarc.<From domain>`, else `_dmarc.<organisational
domain>` (RFC 7489 6.6.3), the organisational domain coming from the
Public Suffix List shipped in the `publicsuffixlist` package (no download
at run time; a new package version brings a newer list). Alignment is
relaxed (same organisational domain) or strict (same name), per the
record's aspf/adkim (RFC 7489 3.1).

    result = yield evaluate(lookups, from_domain, spf_result, spf_domain, dkim_results)
    result.result     # pass, fail, none, temperror, permerror
    result.policy     # what the domain asks for this message: none, quarantine, reject
                      # (sp= for a subdomain, before pct= is applied)
"""

import functools
import re

from twisted.internet import defer

from mailplat.auth.lookups import DNSTemporaryError

POLICIES = ("none", "quarantine", "reject")
_TAG = re.compile(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*\Z", re.S)

_psl = None


def public_suffix_list():
    """The Public Suffix List, loaded once (a quarter of a second)."""
    global _psl
    if _psl is None:
        from publicsuffixlist import PublicSuffixList

        _psl = PublicSuffixList()
    return _psl


def organisational_domain(domain):
    """RFC 7489 3.2: the public suffix plus one label (the domain itself if it is a suffix)."""
    return _organisational(domain.lower().rstrip("."))


@functools.lru_cache(maxsize=4096)
def _organisational(domain):
    # ~0.1 ms a look-up in publicsuffixlist (IDNA encoding of each label): kept.
    return public_suffix_list().privatesuffix(domain) or domain


def aligned(a, b, mode):
    """RFC 7489 3.1: strict = the same name; relaxed = the same organisational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode == "s":
        return a == b
    return organisational_domain(a) == organisational_domain(b)


class DMARCRecord:
    def __init__(self, tags):
        self.tags = tags
        self.p = tags["p"]
        self.sp = tags.get("sp", self.p)
        self.pct = tags.get("pct", 100)
        self.adkim = tags.get("adkim", "r")
        self.aspf = tags.get("aspf", "r")


@functools.lru_cache(maxsize=1024)
def parse_record(text):
    """
    A DMARC TXT record -> L{DMARCRecord}, or None when it is not one we can
    use (RFC 7489 6.3: v=DMARC1 first; unknown tags ignored; a bad p= is
    p=none when rua= is there, else no record, 6.6.3). Kept per record
    text (a L{DMARCRecord} is not changed once made).
    """
    try:
        text = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = [p for p in text.split(";")]
    first = _TAG.match(parts[0]) if parts else None
    if not first or first.group(1) != "v" or first.group(2) != "DMARC1":
        return None
    tags = {}
    for part in parts[1:]:
        if not part.strip():
            continue
        m = _TAG.match(part)
        if not m:
            continue
        name, value = m.group(1).lower(), m.group(2)
        if name in ("p", "sp"):
            value = value.lower()
            if value not in POLICIES:
                continue
        elif name in ("adkim", "aspf"):
            value = value.lower()
            if value not in ("r", "s"):
                continue
        elif name == "pct":
            if not value.isdigit() or not 0 <= int(value) <= 100:
                continue
            value = int(value)
        tags.setdefault(name, value)
    if "p" not in tags:
        if "rua" not in tags:
            return None
        tags["p"] = "none"
    return DMARCRecord(tags)


class DMARCResult:
    def __init__(self, result, domain=None, policy="none", record=None, reason=""):
        self.result = result
        self.domain = domain  # the From domain (header.from)
        self.policy = policy  # none / quarantine / reject: what the record asks on failure
        self.record = record
        self.reason = reason

    def __repr__(self):
        return f"<DMARCResult {self.result} {self.domain} p={self.policy}: {self.reason}>"


async def _record(lookups, name):
    """The one DMARC record at `name`, or None (several records are none, RFC 7489 6.6.3)."""
    parsed = [r for r in (parse_record(t) for t in await lookups.txt(f"_dmarc.{name}")) if r is not None]
    return parsed[0] if len(parsed) == 1 else None


async def _discover(lookups, domain):
    """RFC 7489 6.6.3: (record, found at the organisational domain?) or (None, False)."""
    record = await _record(lookups, domain)
    if record is not None:
        return record, False
    org = organisational_domain(domain)
    if org != domain:
        record = await _record(lookups, org)
        if record is not None:
            return record, True
    return None, False


def evaluate(lookups, from_domain, spf_result, spf_domain, dkim_results):
    """
    A Deferred firing with the L{DMARCResult} (never fails).

    @param from_domain: the From address's domain, or None when the message
        has no single usable From address (then the result is permerror
        when there is a From field at all, decided by the caller).
    @param spf_result: the SPF result ("pass", "temperror", ...).
    @param spf_domain: the domain SPF checked (envelope sender or HELO).
    @param dkim_results: the L{mailplat.auth.dkim_verify.DKIMResult}s.
    """

    async def run():
        try:
            record, inherited = await _discover(lookups, from_domain)
        except DNSTemporaryError as e:
            return DMARCResult("temperror", from_domain, reason=str(e))
        if record is None:
            return DMARCResult("none", from_domain, reason="no DMARC record")
        policy = record.sp if inherited else record.p
        if spf_result == "pass" and spf_domain and aligned(spf_domain, from_domain, record.aspf):
            return DMARCResult("pass", from_domain, policy, record, "SPF aligned")
        for r in dkim_results:
            if r.result == "pass" and r.domain and aligned(r.domain, from_domain, record.adkim):
                return DMARCResult("pass", from_domain, policy, record, f"DKIM aligned ({r.domain})")
        # A temporary failure of a check that could have aligned: not a
        # failure yet (temporary failures never reject).
        if spf_result == "temperror" and spf_domain and aligned(spf_domain, from_domain, record.aspf):
            return DMARCResult("temperror", from_domain, policy, record, "SPF temperror")
        for r in dkim_results:
            if r.result == "temperror" and r.domain and aligned(r.domain, from_domain, record.adkim):
                return DMARCResult("temperror", from_domain, policy, record, "DKIM temperror")
        return DMARCResult("fail", from_domain, policy, record, "neither SPF nor DKIM aligned")

    return defer.ensureDeferred(run())


def applied_policy(result, draw):
    """
    RFC 7489 6.6.4: the policy to apply to a failing message, after pct=:
    a message outside the sample gets the next milder policy.

    @param draw: a number in [0, 1) (random.random(), injectable for tests).
    """
    if result.result != "fail":
        return "none"
    pct = result.record.pct if result.record is not None else 100
    if pct >= 100 or draw * 100 < pct:
        return result.policy
    return {"reject": "quarantine", "quarantine": "none"}.get(result.policy, "none")
