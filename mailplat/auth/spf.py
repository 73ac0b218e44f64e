"""
SPF (RFC 7208): is the client's address allowed to send for the domain of
the envelope sender? Our own asynchronous evaluator over the server's
twisted.names resolver (L{mailplat.auth.lookups.Lookups}), not pyspf:
pyspf's DNS function is synchronous and each lookup depends on the answer
before it (include, redirect, macros), so feeding it from asynchronous
lookups would mean running it again and again or in a thread that waits on
the reactor. The RFC's algorithm is small; this module follows it section
by section.

    result = yield check(lookups, "192.0.2.1", "alice@example.org", "mail.example.org")
    result.result       # "pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"
    result.reason       # a short text for the header comment and the log
    result.explanation  # the domain's exp= text on fail (RFC 7208 6.2), or None

Not done: the `p` macro expands to "unknown" (RFC 7208 7.3 lets it; it
needs a PTR lookup per use and the RFC advises against it), and the HELO
identity is checked only when the envelope sender is null (RFC 7208 2.3).
"""

import functools
import ipaddress
import re
import time
from urllib.parse import quote

from twisted.internet import defer

from mailplat.auth.lookups import DNSTemporaryError

LOOKUP_LIMIT = 10  # RFC 7208 4.6.4: include, a, mx, ptr, exists, redirect
VOID_LIMIT = 2  # RFC 7208 4.6.4: lookups answered with no records / NXDOMAIN
MX_LIMIT = 10  # RFC 7208 4.6.4: MX names per mx mechanism
PTR_LIMIT = 10  # RFC 7208 4.6.4: PTR names considered per ptr

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}

_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)\Z", re.S)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)\Z", re.S)
_CIDR = re.compile(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?\Z", re.S)
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])([0-9]*)(r?)([.\-+,/_=]*)\}|(%)|(_)|(-))", re.I)
_TOPLABEL = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\Z")


class SPFResult:
    def __init__(self, result, reason="", explanation=None):
        self.result = result
        self.reason = reason
        self.explanation = explanation

    def __repr__(self):
        return f"<SPFResult {self.result}: {self.reason}>"


class PermError(Exception):
    pass


class TempError(Exception):
    pass


# --- the record (RFC 7208 4.5, 12) ---------------------------------------------------


def spf_records(records):
    """The TXT records that are SPF records: "v=spf1" alone or followed by a space (RFC 7208 4.5)."""
    out = []
    for r in records:
        if r[:6].lower() == b"v=spf1" and (len(r) == 6 or r[6:7] == b" "):
            out.append(r)
    return out


def parse(record):
    """
    An SPF record -> (directives [(qualifier, name, argument, cidr4, cidr6)],
    modifiers {name: value}). Any syntax error is a PermError (RFC 7208 4.6).
    """
    parsed = _parsed(record)
    if isinstance(parsed, PermError):
        raise PermError(*parsed.args)
    directives, modifiers = parsed
    return list(directives), dict(modifiers)


@functools.lru_cache(maxsize=1024)
def _parsed(record):
    # A record is parsed once per TTL at most, not once per message: the
    # outcome of _parse (its error too) depends on the record alone.
    try:
        directives, modifiers = _parse(record)
    except PermError as e:
        return e
    return tuple(directives), tuple(modifiers.items())


def _parse(record):
    try:
        text = record.decode("ascii")
    except UnicodeDecodeError:
        raise PermError("the record is not ASCII")
    directives, modifiers = [], {}
    for term in text[6:].split(" "):
        if not term:
            continue
        m = _MODIFIER.match(term)
        if m:
            name, value = m.group(1).lower(), m.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise PermError(f"{name}= appears twice")  # RFC 7208 6
                _check_domain_spec(value, term)
            else:
                _check_macro_string(value, term)  # unknown modifiers are ignored, but must parse
            modifiers.setdefault(name, value)
            continue
        m = _MECHANISM.match(term)
        if not m:
            raise PermError(f"bad term {term!r}")
        qualifier, name, rest = m.group(1) or "+", m.group(2).lower(), m.group(3)
        directives.append((QUALIFIERS[qualifier], name) + _mechanism_argument(name, rest, term))
    return directives, modifiers


def _mechanism_argument(name, rest, term):
    """(domain-spec or network, cidr4, cidr6) of one mechanism (RFC 7208 5)."""
    if name == "all":
        if rest:
            raise PermError(f"bad term {term!r}")
        return (None, None, None)
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            raise PermError(f"{name} needs a domain: {term!r}")
        _check_domain_spec(rest[1:], term)
        return (rest[1:], None, None)
    if name == "ptr":
        if rest and not rest.startswith(":"):
            raise PermError(f"bad term {term!r}")
        if rest:
            _check_domain_spec(rest[1:], term)
        return (rest[1:] or None, None, None)
    if name in ("a", "mx"):
        m = _CIDR.match(rest)
        spec, c4, c6 = m.group(1), m.group(2), m.group(3)
        if spec and not spec.startswith(":"):
            raise PermError(f"bad term {term!r}")
        if spec:
            _check_domain_spec(spec[1:], term)
        return (spec[1:] or None, _cidr(c4, 32, term), _cidr(c6, 128, term))
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise PermError(f"{name} needs a network: {term!r}")
        network = rest[1:]
        try:
            if name == "ip4":
                net = ipaddress.IPv4Network(network, strict=False)
                if "/" in network and not re.fullmatch(r"(0|[1-9][0-9]?)", network.partition("/")[2]):
                    raise ValueError
            else:
                net = ipaddress.IPv6Network(network, strict=False)
        except ValueError:
            raise PermError(f"bad network in {term!r}")
        return (net, None, None)
    raise PermError(f"unknown mechanism {name!r}")  # RFC 7208 5: unknown mechanisms are a permerror


def _cidr(text, limit, term):
    if text is None:
        return None
    if (len(text) > 1 and text[0] == "0") or int(text) > limit:
        raise PermError(f"bad prefix length in {term!r}")
    return int(text)


def _check_macro_string(value, term, exp=False):
    pos = 0
    for m in _MACRO.finditer(value):
        _literal(value[pos : m.start()], term)
        if m.group(1):
            if m.group(1).lower() in "crt" and not exp:
                raise PermError(f"%{{{m.group(1)}}} is only for exp= texts: {term!r}")  # RFC 7208 7.2
            if m.group(2) and int(m.group(2)) == 0:
                raise PermError(f"zero labels in {term!r}")  # RFC 7208 7.3
        pos = m.end()
    _literal(value[pos:], term)


def _literal(text, term):
    if "%" in text or any(not "!" <= c <= "~" for c in text):
        raise PermError(f"bad macro string in {term!r}")


def _check_domain_spec(value, term):
    """domain-spec = macro-string domain-end (RFC 7208 7.1)."""
    if not value:
        raise PermError(f"empty domain in {term!r}")
    _check_macro_string(value, term)
    if value.endswith("}") and _MACRO.search(value):
        return  # domain-end may be a macro
    labels = value.rstrip(".").split(".") if value.endswith(".") else value.split(".")
    if len(labels) < 2 or not _TOPLABEL.match(labels[-1]):
        raise PermError(f"bad domain in {term!r}")


# --- macros (RFC 7208 7) --------------------------------------------------------------


class _Context:
    """What one check_host knows: the address, the sender, the HELO name, the limits used."""

    def __init__(self, lookups, ip, sender, helo, receiver):
        self.lookups = lookups
        self.ip = ip
        self.sender = sender
        self.local, _, self.sender_domain = sender.rpartition("@")
        self.helo = helo
        self.receiver = receiver
        self.dns_mechanisms = 0
        self.voids = 0

    def count_lookup(self):
        self.dns_mechanisms += 1
        if self.dns_mechanisms > LOOKUP_LIMIT:
            raise PermError(f"more than {LOOKUP_LIMIT} DNS lookups")

    def count_void(self, records):
        if not records:
            self.voids += 1
            if self.voids > VOID_LIMIT:
                raise PermError(f"more than {VOID_LIMIT} void DNS lookups")
        return records

    def macro_value(self, letter, domain):
        letter = letter.lower()
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", ""))
        if letter == "p":
            return "unknown"
        if letter == "v":
            return "in-addr" if self.ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "c":
            return str(self.ip)
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(int(time.time()))
        raise PermError(f"unknown macro letter {letter!r}")

    def expand(self, value, domain, exp=False):
        def one(m):
            if m.group(5):
                return "%"
            if m.group(6):
                return " "
            if m.group(7):
                return "%20"
            letter, digits, reverse, delimiters = m.groups()[:4]
            if letter.lower() in "crt" and not exp:
                raise PermError(f"%{{{letter}}} outside exp=")
            parts = re.split("[" + re.escape(delimiters or ".") + "]", self.macro_value(letter, domain))
            if reverse:
                parts.reverse()
            if digits:
                if int(digits) == 0:
                    raise PermError("zero labels in a macro")
                parts = parts[-int(digits) :]
            out = ".".join(parts)
            return quote(out, safe="") if letter.isupper() else out

        return _MACRO.sub(one, value)

    def target(self, spec, domain):
        """A mechanism's target name: the expanded domain-spec, or the current domain."""
        if spec is None:
            return domain
        name = self.expand(spec, domain).rstrip(".")
        # RFC 7208 7.3: over 253 octets, drop labels from the left until it fits.
        while len(name) > 253 and "." in name:
            name = name.partition(".")[2]
        return name


# --- check_host (RFC 7208 4) ------------------------------------------------------------


def valid_domain(domain):
    """RFC 7208 4.3: a name made of labels of 1 to 63 octets, with at least one dot."""
    labels = domain.rstrip(".").split(".")
    return len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels) and len(domain) <= 253


def in_network(ip, addresses, cidr4, cidr6):
    prefix = cidr4 if ip.version == 4 else cidr6
    for address in addresses:
        if address.version != ip.version:
            continue
        if prefix is None:
            if address == ip:
                return True
        elif ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
            return True
    return False


async def _check_host(ctx, domain, depth=0):
    """RFC 7208 4: the result for `domain` (raises PermError / TempError)."""
    if not valid_domain(domain):
        return SPFResult("none", f"{domain!r} is not a domain name")
    try:
        records = spf_records(await ctx.lookups.txt(domain))
    except DNSTemporaryError as e:
        raise TempError(str(e))
    if not records:
        return SPFResult("none", f"no SPF record for {domain}")
    if len(records) > 1:
        raise PermError(f"{domain} has {len(records)} SPF records")  # RFC 7208 4.5
    directives, modifiers = parse(records[0])
    for qualifier, name, argument, cidr4, cidr6 in directives:
        if await _matches(ctx, domain, name, argument, cidr4, cidr6, depth):
            result = SPFResult(qualifier, f"{domain}: matched {name}")
            if qualifier == "fail" and "exp" in modifiers:
                result.explanation = await _explanation(ctx, modifiers["exp"], domain)
            return result
    if "redirect" in modifiers:
        # RFC 7208 6.1: only when no mechanism matched (an "all" always does).
        ctx.count_lookup()
        target = ctx.target(modifiers["redirect"], domain)
        result = await _check_host(ctx, target, depth + 1)
        if result.result == "none":
            raise PermError(f"redirect to {target}, which has no SPF record")
        return result
    return SPFResult("neutral", f"{domain}: no mechanism matched")


async def _matches(ctx, domain, name, argument, cidr4, cidr6, depth):
    lookups, ip = ctx.lookups, ctx.ip
    if name == "all":
        return True
    if name == "ip4":
        return ip.version == 4 and ip in argument
    if name == "ip6":
        return ip.version == 6 and ip in argument
    ctx.count_lookup()
    target = ctx.target(argument, domain)
    try:
        if name == "include":
            # RFC 7208 5.2: pass matches; fail/softfail/neutral do not; none is a permerror.
            result = await _check_host(ctx, target, depth + 1)
            if result.result == "none":
                raise PermError(f"include:{target} has no SPF record")
            return result.result == "pass"
        if not valid_domain(target):
            return False
        if name == "a":
            addresses = ctx.count_void(await lookups.addresses(target, ip.version))
            return in_network(ip, addresses, cidr4, cidr6)
        if name == "mx":
            hosts = ctx.count_void(await lookups.mx(target))
            if len(hosts) > MX_LIMIT:
                raise PermError(f"{target} has more than {MX_LIMIT} MX records")
            for host in hosts:
                if in_network(ip, await lookups.addresses(host, ip.version), cidr4, cidr6):
                    return True
            return False
        if name == "exists":
            # RFC 7208 5.7: an A lookup whatever the client's address family.
            return bool(ctx.count_void(await lookups.addresses(target, 4)))
        if name == "ptr":
            return await _ptr_matches(ctx, target)
    except DNSTemporaryError as e:
        raise TempError(str(e))
    raise PermError(f"unknown mechanism {name!r}")


async def _ptr_matches(ctx, target):
    """RFC 7208 5.5: a validated PTR name equal to or under `target`; DNS errors are no match."""
    try:
        names = (await ctx.lookups.ptr(ctx.ip))[:PTR_LIMIT]
    except DNSTemporaryError:
        return False
    target = target.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if not (name == target or name.endswith("." + target)):
            continue
        try:
            if ctx.ip in await ctx.lookups.addresses(name, ctx.ip.version):
                return True
        except DNSTemporaryError:
            continue
    return False


async def _explanation(ctx, spec, domain):
    """RFC 7208 6.2: the exp= text, or None when it cannot be had (never an error)."""
    try:
        target = ctx.target(spec, domain)
        if not valid_domain(target):
            return None
        records = await ctx.lookups.txt(target)
        if len(records) != 1:
            return None
        text = records[0].decode("ascii")
        for piece in text.split(" "):  # explain-string = *( macro-string / SP )
            _check_macro_string(piece, "exp", exp=True)
        return ctx.expand(text, domain, exp=True)
    except (PermError, DNSTemporaryError, UnicodeDecodeError):
        return None


def client_ip(address):
    """An ipaddress address for the client, IPv4-mapped IPv6 as IPv4 (RFC 7208 5); None if not an address."""
    return _client_ip(address) if isinstance(address, str) else _client_ip_of(address)


@functools.lru_cache(maxsize=4096)
def _client_ip(address):
    return _client_ip_of(address)  # ipaddress objects are immutable: one per client address


def _client_ip_of(address):
    try:
        ip = ipaddress.ip_address(address.strip("[]").partition("%")[0])
    except (ValueError, AttributeError):
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def check(lookups, address, sender, helo, receiver="unknown"):
    """
    A Deferred firing with the L{SPFResult} for mail from `sender` ("" for
    the null sender: then the HELO name's postmaster is checked, RFC 7208
    2.4) sent by the client at `address`. Never fails.
    """
    ip = client_ip(address)
    if not sender:
        sender = f"postmaster@{helo}"
    elif "@" not in sender:
        sender = f"postmaster@{sender}"
    local, _, domain = sender.rpartition("@")
    if not local:
        sender = f"postmaster@{domain}"  # RFC 7208 4.3
    if ip is None:
        return defer.succeed(SPFResult("none", f"client address {address!r} is not an IP address"))
    ctx = _Context(lookups, ip, sender, helo, receiver)

    async def run():
        try:
            return await _check_host(ctx, domain.lower().rstrip("."))
        except TempError as e:
            return SPFResult("temperror", str(e))
        except PermError as e:
            return SPFResult("permerror", str(e))

    return defer.ensureDeferred(run())
