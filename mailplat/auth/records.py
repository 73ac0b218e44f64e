"""
The DNS records a domain needs for mail served by this server, and a check
of what its name servers say about them (`mailplat dns-records DOMAIN`,
`mailplat dns-check DOMAIN`; docs/authentication.md, set-up from zero).

    plan = Plan.for_domain(config, "example.org", addresses=["192.0.2.10"])
    print(zone_text(plan))                    # ready to paste into the zone
    findings = yield check(plan, lookups)     # [Finding(record, status, detail)]

The records: MX (to `[server] hostname`), the host's address and the PTR
it must match (forward-confirmed reverse DNS, which the large mailbox
providers require), SPF, one DKIM TXT per key under state_dir/dkim,
DMARC, MTA-STS and TLS-RPT, and the SRV records of RFC 6186 / RFC 8314
for mail clients. The first six are required: without them mail from
this server is refused or filed as junk elsewhere. The others help and
are reported, but a missing one does not fail the check.
"""

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from twisted.internet import defer

from mailplat.auth import dmarc, spf, tlsrpt
from mailplat.auth.lookups import DNSTemporaryError

OK, MISSING, WRONG, TEMPERROR = "ok", "missing", "wrong", "temperror"

# (SRV owner label, [listen] key, the standard port, priority). RFC 8314
# 5.1: implicit TLS is preferred, so it gets the lower (better) priority;
# RFC 6186 3.4 lets a client compare priorities across IMAP and POP3.
SRV_SERVICES = (
    ("_submissions._tcp", "smtps", 465, 0),  # RFC 8314 5.1
    ("_submission._tcp", "submission", 587, 10),  # RFC 6186 3.1
    ("_imaps._tcp", "imaps", 993, 0),  # RFC 6186 3.2
    ("_imap._tcp", "imap", 143, 10),
    ("_pop3s._tcp", "pop3s", 995, 20),  # RFC 6186 3.3
    ("_pop3._tcp", "pop3", 110, 30),
)
MTA_STS_MAX_AGE = {"testing": 86400, "enforce": 604800}  # RFC 8461 3.2: seconds
_STS_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")  # RFC 8461 3.1


@dataclass
class Record:
    """
    One record to publish. `value` is the RDATA in zone-file form; None
    when it cannot be known here (the server's address), and the record is
    printed as a note to fill in. `in_zone` False: it belongs in another
    zone (a PTR, a host name outside the domain) and is printed as a note.
    """

    label: str  # what it is for: "MX", "SPF", "DKIM", "SRV", ...
    name: str  # owner name, without the final dot
    rtype: str  # MX, TXT, SRV, A, AAAA, PTR, CNAME
    value: str = None
    required: bool = True
    in_zone: bool = True
    comment: str = ""
    line: str = None  # the zone-file line when it is given (the DKIM key's own)
    expect: dict = field(default_factory=dict)  # what the check compares

    def zone_line(self):
        if self.line is not None:
            return self.line
        value = self.value if self.value is not None else f"<{self.expect.get('placeholder', 'value')}>"
        if self.rtype == "TXT" and self.value is not None:
            value = quote_txt(self.value)
        return f"{self.name}. IN {self.rtype} {value}"


@dataclass
class Finding:
    record: Record
    status: str  # ok, missing, wrong, temperror
    detail: str = ""


def quote_txt(text):
    """A TXT value as zone-file strings of at most 255 octets each (RFC 1035 3.3.14)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


def _split_endpoint(endpoint):
    """A Twisted endpoint string's parts (':' separated, '\\:' escaped)."""
    return [p.replace("\\:", ":").replace("\\\\", "\\") for p in re.split(r"(?<!\\):", endpoint)]


def listener_address(endpoint):
    """
    (port, interface) of a `[listen]` endpoint string ("tcp:port=587",
    "tcp:587:interface=192.0.2.10", "tcp6:port=993:interface=\\:\\:"); the
    port is None for an endpoint without one (unix sockets, systemd).
    """
    parts = _split_endpoint(endpoint)
    if parts[0].lower() not in ("tcp", "tcp6", "ssl"):
        return None, None
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = keywords.get("port", positional[0] if positional else None)
    try:
        port = int(port)
    except (TypeError, ValueError):
        return None, None
    return port, keywords.get("interface", "")


def _address(text):
    try:
        return ipaddress.ip_address((text or "").strip("[]"))
    except ValueError:
        return None


def _public_address(text):
    """An ipaddress address when `text` is one the Internet reaches (not loopback, private, ...), else None."""
    address = _address(text)
    return address if address is not None and address.is_global else None


def listener_notes(listen):
    """What in `[listen]` keeps other machines from the services the records announce."""
    notes = []
    standard = {"smtp": 25, **{listener: port for _, listener, port, _ in SRV_SERVICES}}
    for listener, port in standard.items():
        if listener not in listen:
            continue
        actual, interface = listener_address(listen[listener])
        problems = []
        if actual is not None and actual != port:
            problems.append(f"port {actual}, not {port}" + (" (senders always connect to 25)" if listener == "smtp" else ""))
        address = _address(interface)
        if address is not None and address.is_loopback:
            problems.append(f"on {interface} only, which other machines cannot reach")
        if problems:
            notes.append(f"[listen] {listener}: " + "; ".join(problems))
    return notes


def mta_sts_policy(hostname, mode="testing"):
    """The policy file for https://mta-sts.DOMAIN/.well-known/mta-sts.txt (RFC 8461 3.2)."""
    return f"version: STSv1\nmode: {mode}\nmx: {hostname}\nmax_age: {MTA_STS_MAX_AGE[mode]}\n"


def mta_sts_id(policy):
    """
    The id of the `_mta-sts` record: from the policy's text, so it changes
    exactly when the policy does (RFC 8461 3.1 asks for a new id then).
    """
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


class Plan:
    """
    The records of one domain. Build with L{for_domain}.

    @ivar records: the L{Record}s, in the order they are printed.
    @ivar notes: lines for the operator (ports, listeners, keys).
    @ivar addresses: the server's addresses as known here (ipaddress).
    """

    def __init__(self, domain, hostname, addresses, policy, records, notes):
        self.domain = domain
        self.hostname = hostname
        self.addresses = addresses
        self.policy = policy
        self.records = records
        self.notes = notes

    @classmethod
    def for_domain(cls, config, domain, addresses=(), mta_sts_mode="testing", keys=None):
        """
        @param addresses: the server's public addresses (--address); when
            empty, the `[listen] smtp` interface if it is a public one.
        @param keys: the domain's DKIM keys (L{mailplat.auth.dkim_keys.DKIMKey});
            None: read them from `[dkim]`'s key directory.
        """
        from mailplat.auth.dkim_keys import KeyStore, check_name

        domain = check_name("domain", domain)
        hostname = config.hostname.lower().rstrip(".")
        notes = []
        known = []
        for a in addresses:
            try:
                known.append(ipaddress.ip_address(a))
            except ValueError:
                raise ValueError(f"not an IP address: {a!r}")
        if not known and "smtp" in config.listen:
            _, interface = listener_address(config.listen["smtp"])
            public = _public_address(interface or "")
            if public is not None:
                known.append(public)
        if keys is None:
            keys, problems = KeyStore(config.dkim["key_dir"]).keys(domain)
            notes += [f"DKIM key not usable: {p}" for p in problems]

        records = [Record("MX", domain, "MX", f"10 {hostname}.", comment=f"Mail for {domain} goes to {hostname}.")]
        records += _address_records(domain, hostname, known)
        spf_value = "v=spf1 " + "".join(f"ip{a.version}:{a} " for a in known) + "mx -all"
        records.append(Record("SPF", domain, "TXT", spf_value,
                              comment=f"SPF (RFC 7208): only {hostname} (the MX) sends mail for {domain}."))
        records += _dkim_records(domain, keys, config)
        records.append(Record(
            "DMARC", f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}",
            comment="DMARC (RFC 7489): p=none while you read the reports sent to rua=;\n"
                    "then p=quarantine, then p=reject.",
        ))
        policy = mta_sts_policy(hostname, mta_sts_mode)
        records.append(Record(
            "MTA-STS", f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={mta_sts_id(policy)}", required=False,
            comment="MTA-STS (RFC 8461): senders must use TLS to the MX. Serve the policy file\n"
                    f"below at https://mta-sts.{domain}/.well-known/mta-sts.txt (a certificate for\n"
                    "that name), and give the record a new id whenever the file changes.",
        ))
        records.append(Record(
            "MTA-STS host", f"mta-sts.{domain}", "CNAME", None, required=False, in_zone=False,
            comment="The web server of the policy file (mailplat does not serve it): an A/AAAA or a CNAME.",
            expect={"placeholder": "the web server that serves the policy file"},
        ))
        records.append(Record(
            "TLS-RPT", f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{domain}", required=False,
            comment="TLS-RPT (RFC 8460): where senders report TLS failures to this MX.",
        ))
        records += _srv_records(domain, hostname, config.listen)
        notes += listener_notes(config.listen)
        return cls(domain, hostname, known, policy, records, notes)

    def required(self):
        return [r for r in self.records if r.required]


def _address_records(domain, hostname, known):
    in_zone = hostname == domain or hostname.endswith("." + domain)
    where = "" if in_zone else f" (in the zone of {hostname}, not {domain})"
    out = []
    if known:
        for a in known:
            out.append(Record("address", hostname, "A" if a.version == 4 else "AAAA", str(a), in_zone=in_zone,
                              comment=f"{hostname} has the server's address{where}.", expect={"address": a}))
    else:
        out.append(Record("address", hostname, "A", None, in_zone=in_zone,
                          comment=f"{hostname} has the server's address{where}\n"
                                  "(and AAAA for IPv6); give it with --address to have it filled in.",
                          expect={"placeholder": "the server's IPv4 address"}))
    reverse = [a for a in known] or [None]
    for a in reverse:
        out.append(Record(
            "PTR", a.reverse_pointer if a else "<the address reversed>.in-addr.arpa", "PTR", f"{hostname}.",
            in_zone=False,
            comment=f"The address must point back to {hostname} (PTR): set by whoever runs\n"
                    "the address (the hosting provider), not in this zone.",
            expect={"address": a},
        ))
    return out


def _dkim_records(domain, keys, config):
    if not keys:
        return [Record(
            "DKIM", f"<selector>._domainkey.{domain}", "TXT", None,
            comment=f"DKIM (RFC 6376): no key for {domain} yet; make one with\n"
                    f"`mailplat dkim keygen {domain}`, then run this again.",
            expect={"placeholder": "v=DKIM1; k=rsa; p=..."},
        )]
    from mailplat.auth.dkim_sign import DKIMSigner

    signer = DKIMSigner(config.dkim)
    signing = {k.path for k in signer.keys_for(domain)}
    out = []
    for key in keys:
        note = "" if key.path in signing else f"\n(note: [dkim] in {config.source} does not sign with this key)"
        out.append(Record(
            "DKIM", key.record_name, "TXT", key.txt_value(), line=key.txt_record(),
            comment=f"DKIM (RFC 6376): the public half of {key.path}.{note}",
            expect={"public": key.public_key(), "algorithm": key.algorithm},
        ))
    return out


def _srv_records(domain, hostname, listen):
    records = []
    for owner, listener, standard, priority in SRV_SERVICES:
        name = f"{owner}.{domain}"
        if listener not in listen:
            # RFC 6186 4: a target of "." says the service is not offered.
            records.append(Record("SRV", name, "SRV", "0 0 0 .", required=False,
                                  comment=f"No [listen] {listener}: not offered.", expect={"ports": {0}, "target": "."}))
            continue
        port, _ = listener_address(listen[listener])
        ports = {standard}
        comment = f"{listener}: port {standard}."
        if port != standard:
            if port is not None:
                ports.add(port)
            comment = (f"{listener}: [listen] {listener} is port {port}, not the standard {standard}: publish this\n"
                       f"once port {standard} reaches it (a port forward), or write {port} instead.")
        records.append(Record("SRV", name, "SRV", f"{priority} 1 {standard} {hostname}.", required=False,
                              comment=comment, expect={"ports": ports, "target": hostname}))
    return records


def zone_text(plan):
    """Every record as zone-file lines, with notes as ';' comments, and the MTA-STS policy file."""
    out = [
        f"; DNS records for {plan.domain}, mail served by {plan.hostname} (mailplat dns-records).",
        f"; Paste into the zone of {plan.domain}. Commented records belong in another zone",
        "; or need a value filled in. Check them with `mailplat dns-check "
        f"{plan.domain}`.",
    ]
    for note in plan.notes:
        out.append(f"; note: {note}")
    srv_header, previous = False, None
    for record in plan.records:
        if record.label == "SRV" and not srv_header:
            out += ["", "; Client set-up (RFC 6186, RFC 8314): mail clients find the servers by these."]
            srv_header = True
        if record.comment != previous:  # several addresses: one comment
            if record.label != "SRV":
                out.append("")
            out += [f"; {line}" for line in record.comment.splitlines()]
        previous = record.comment
        line = record.zone_line()
        out.append(line if record.in_zone and record.value is not None else f"; {line}")
        if record.label == "MTA-STS":
            out.append(f"; The policy file ({plan.policy.count(chr(10))} lines; `mailplat dns-records "
                       f"{plan.domain} --mta-sts-policy` prints it alone):")
            out += [f";   {line}" for line in plan.policy.splitlines()]
    return "\n".join(out) + "\n"


# --- the check ----------------------------------------------------------------------------


def _show(values):
    return ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values) or "nothing"


def _txt(values):
    return [v.decode("utf-8", "replace") for v in values]


async def _guard(record, coroutine):
    """A check's L{Finding}; a DNS failure is temperror, never a traceback."""
    try:
        return await coroutine
    except DNSTemporaryError as e:
        return Finding(record, TEMPERROR, f"no answer ({e})")
    except Exception as e:  # a record shaped as no check expected: said, not raised
        return Finding(record, TEMPERROR, f"could not be checked: {type(e).__name__}: {e}")


async def _check_mx(lookups, plan, record):
    found = [h.lower().rstrip(".") for h in await lookups.mx(plan.domain)]
    if plan.hostname in found:
        return Finding(record, OK, f"MX {plan.hostname}" + (f" (and {_show([h for h in found if h != plan.hostname])})" if len(found) > 1 else ""))
    if not found:
        return Finding(record, MISSING, f"no MX record; expected {record.value}")
    return Finding(record, WRONG, f"found MX {_show(found)}, not {plan.hostname}")


async def _host_addresses(lookups, hostname):
    four = await lookups.addresses(hostname, 4)
    six = await lookups.addresses(hostname, 6)
    return four + six


async def _check_address(lookups, plan, record, found):
    wanted = record.expect.get("address")
    if not found:
        return Finding(record, MISSING, f"{plan.hostname} has no A or AAAA record")
    if wanted is not None and wanted not in found:
        return Finding(record, WRONG, f"{plan.hostname} has {', '.join(map(str, found))}, not {wanted}")
    return Finding(record, OK, f"{plan.hostname} is {', '.join(map(str, found))}")


async def _check_ptr(lookups, plan, record, found):
    wanted = record.expect.get("address")
    addresses = [wanted] if wanted is not None else found
    if not addresses:
        return Finding(record, MISSING, f"no address of {plan.hostname} to look up a PTR for")
    problems, missing = [], []
    for a in addresses:
        names = [n.lower().rstrip(".") for n in await lookups.ptr(a)]
        if not names:
            missing.append(str(a))
        elif plan.hostname not in names:
            problems.append(f"{a} points to {_show(names)}")
    if problems:
        return Finding(record, WRONG, "; ".join(problems) + f", not {plan.hostname}")
    if missing:
        return Finding(record, MISSING, f"no PTR for {', '.join(missing)}; ask the address's provider for {plan.hostname}")
    return Finding(record, OK, f"{', '.join(map(str, addresses))} -> {plan.hostname}")


async def _check_spf(lookups, plan, record, found):
    records = spf.spf_records(await lookups.txt(plan.domain))
    if not records:
        return Finding(record, MISSING, f'no SPF record; expected "{record.value}"')
    if len(records) > 1:
        return Finding(record, WRONG, f"{len(records)} SPF records (RFC 7208 3.2: one): {_show(_txt(records))}")
    text = _txt(records)[0]
    try:
        spf.parse(records[0])
    except spf.PermError as e:
        return Finding(record, WRONG, f'"{text}" does not parse: {e}')
    addresses = plan.addresses or found
    refused = []
    for a in addresses:
        result = await spf.check(lookups, str(a), f"postmaster@{plan.domain}", plan.hostname)
        if result.result == "temperror":
            return Finding(record, TEMPERROR, f'"{text}" for {a}: {result.reason}')
        if result.result != "pass":
            refused.append(f"{result.result} for {a}")
    if refused:
        return Finding(record, WRONG, f'"{text}" does not let the server send: {", ".join(refused)}')
    if not addresses:
        return Finding(record, OK, f'"{text}" (no address of {plan.hostname} known to test it with)')
    return Finding(record, OK, f'"{text}" passes for {", ".join(map(str, addresses))}')


def _dkim_public(text):
    """The p= of a DKIM key record (whitespace removed), or None when it is not one."""
    from dkim.util import InvalidTagValueList, parse_tag_value

    try:
        tags = parse_tag_value(text)
    except InvalidTagValueList:
        return None, None
    if b"p" not in tags:
        return None, None
    return re.sub(rb"\s+", b"", tags[b"p"]).decode("ascii", "replace"), tags.get(b"k", b"rsa").decode("ascii", "replace")


async def _check_dkim(lookups, plan, record):
    if record.value is None:
        return Finding(record, MISSING, f"no DKIM key for {plan.domain}: run `mailplat dkim keygen {plan.domain}`")
    found = await lookups.txt(record.name)
    if not found:
        return Finding(record, MISSING, f"no TXT record at {record.name}")
    wanted = record.expect["public"]
    keys = [_dkim_public(t) for t in found]
    if any(p == wanted and k == record.expect["algorithm"] for p, k in keys):
        if len(found) > 1:
            return Finding(record, WRONG, f"{len(found)} TXT records at {record.name}; a verifier takes one at random")
        return Finding(record, OK, f"the key of {record.name.split('._domainkey.')[0]}")
    shown = [f"k={k} p={p[:12]}..." if p else t for (p, k), t in zip(keys, _txt(found))]
    return Finding(record, WRONG, f"found {_show(shown)}, not this key (p={wanted[:12]}...)")


async def _check_dmarc(lookups, plan, record):
    texts = await lookups.txt(record.name)
    dmarcs = [t for t in texts if t.strip()[:8].upper() == b"V=DMARC1"]
    if dmarcs:
        parsed = [dmarc.parse_record(t) for t in dmarcs]
        if len(dmarcs) > 1:
            return Finding(record, WRONG, f"{len(dmarcs)} DMARC records (RFC 7489 6.6.3: none is used): {_show(_txt(dmarcs))}")
        if parsed[0] is None:
            return Finding(record, WRONG, f'"{_txt(dmarcs)[0]}" is not a DMARC record receivers can use (p= missing or bad)')
        return Finding(record, OK, f'"{_txt(dmarcs)[0]}"')
    org = dmarc.organisational_domain(plan.domain)
    if org != plan.domain:
        inherited = [dmarc.parse_record(t) for t in await lookups.txt(f"_dmarc.{org}")]
        inherited = [r for r in inherited if r is not None]
        if len(inherited) == 1:
            return Finding(record, OK, f"none of its own; _dmarc.{org} applies (sp={inherited[0].sp})")
    return Finding(record, MISSING, f'no DMARC record; expected "{record.value}"')


async def _check_mta_sts(lookups, plan, record):
    texts = [t for t in _txt(await lookups.txt(record.name)) if t.startswith("v=STSv1")]
    if not texts:
        return Finding(record, MISSING, f'no record (optional); expected "{record.value}"')
    if len(texts) > 1:
        return Finding(record, WRONG, f"{len(texts)} records: senders ignore them all (RFC 8461 3.1)")
    tags = dict(t.strip().partition("=")[::2] for t in texts[0].split(";") if "=" in t)
    if not _STS_ID.match(tags.get("id", "").strip()):
        return Finding(record, WRONG, f'"{texts[0]}": id= must be 1-32 letters and digits')
    return Finding(record, OK, f'"{texts[0]}" (the policy file itself is not fetched)')


async def _check_mta_sts_host(lookups, plan, record):
    found = await _host_addresses(lookups, record.name)
    if not found:
        return Finding(record, MISSING, f"{record.name} has no address (optional; needed with an _mta-sts record)")
    return Finding(record, OK, f"{record.name} is {', '.join(map(str, found))}")


async def _check_tls_rpt(lookups, plan, record):
    texts = [t for t in _txt(await lookups.txt(record.name)) if t.startswith("v=TLSRPTv1")]
    if not texts:
        return Finding(record, MISSING, f'no record (optional); expected "{record.value}"')
    parsed, problem = tlsrpt.select(texts)
    if parsed is None:
        return Finding(record, WRONG, f"{_show(texts)}: {problem} (RFC 8460 3)")
    return Finding(record, OK, f'"{texts[0]}" (reports to {parsed})')


async def _check_srv(lookups, plan, record):
    found = await lookups.srv(record.name)
    if not found:
        return Finding(record, MISSING, f"no record (optional); expected {record.value}")
    shown = [f"{r.priority} {r.weight} {r.port} {r.target}." if r.target else f"{r.priority} {r.weight} {r.port} ." for r in found]
    target, ports = record.expect["target"], record.expect["ports"]
    if any((r.target.lower() or ".") == target and r.port in ports for r in found):
        return Finding(record, OK, ", ".join(shown))
    return Finding(record, WRONG, f"found {', '.join(shown)}; expected {record.value}")


_CHECKS = {
    "MX": _check_mx, "DKIM": _check_dkim, "DMARC": _check_dmarc, "MTA-STS": _check_mta_sts,
    "MTA-STS host": _check_mta_sts_host, "TLS-RPT": _check_tls_rpt, "SRV": _check_srv,
}
_NEEDS_ADDRESSES = {"address": _check_address, "PTR": _check_ptr, "SPF": _check_spf}


def check(plan, lookups):
    """
    A Deferred firing with one L{Finding} per record of the plan, in its
    order (never fails: a lookup that is not answered is temperror).

    @param lookups: a L{mailplat.auth.lookups.Lookups} over the server's
        resolver, with a deadline (no query is sent after it).
    """

    async def addresses():
        try:
            return await _host_addresses(lookups, plan.hostname)
        except DNSTemporaryError as e:
            return e

    async def run():
        first = [r for r in plan.records if r.label in _CHECKS]
        results = await defer.gatherResults(
            [defer.ensureDeferred(_guard(r, _CHECKS[r.label](lookups, plan, r))) for r in first]
            + [defer.ensureDeferred(addresses())]
        )
        findings = dict(zip(map(id, first), results))
        found = results[-1]
        rest = [r for r in plan.records if r.label in _NEEDS_ADDRESSES]
        if isinstance(found, DNSTemporaryError):
            # The host's address decides the address, PTR and SPF checks.
            for r in rest:
                findings[id(r)] = Finding(r, TEMPERROR, f"no answer for the address of {plan.hostname} ({found})")
            rest = []
        later = await defer.gatherResults(
            [defer.ensureDeferred(_guard(r, _NEEDS_ADDRESSES[r.label](lookups, plan, r, found))) for r in rest]
        )
        findings.update(zip(map(id, rest), later))
        return [findings[id(r)] for r in plan.records]

    return defer.ensureDeferred(run())


def passed(findings):
    """True when every required record is right."""
    return all(f.status == OK for f in findings if f.record.required)


def report(plan, findings):
    """The lines `mailplat dns-check` prints."""
    out = []
    for f in findings:
        label = f.record.label + ("" if f.record.required else " (optional)")
        name = f.record.name
        if f.record.label == "PTR" and f.record.expect.get("address") is None:
            name = f"PTR of {plan.hostname}'s address"
        out.append(f"{f.status:<9} {label:<23} {name}: {f.detail}")
    required = [f for f in findings if f.record.required]
    good = sum(f.status == OK for f in required)
    if good == len(required):
        out.append(f"{plan.domain}: all {len(required)} required records are right.")
    else:
        bad = ", ".join(f"{f.record.label} {f.status}" for f in required if f.status != OK)
        out.append(f"{plan.domain}: {good} of {len(required)} required records are right ({bad}); "
                   f"`mailplat dns-records {plan.domain}` prints what to publish.")
    return out
