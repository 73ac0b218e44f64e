"""
Where mail for a domain goes: a static route, the smarthost, or the
domain's MX hosts (RFC 5321 5.1), as a list of destinations to try in order.
"""

import ipaddress
import random
import socket

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.python.failure import Failure

from mailplat import dns as shared_dns
from mailplat.auth import tlsrpt
from mailplat.delivery.relay import dane
from mailplat.interfaces import PermanentFailure, TemporaryFailure

TLS_MODES = ("may", "starttls", "implicit", "none")

log = Logger()


class Route:
    """A configured next hop: host, port, TLS mode and optional credentials."""

    def __init__(self, host, port, tls="may", verify=False, auth=None):
        self.host = host
        self.port = port
        self.tls = tls
        self.verify = verify
        self.auth = auth  # (user, password) or None


class Destination:
    """One address to connect to, with how to talk to it."""

    __slots__ = ("name", "address", "port", "tls", "verify", "auth", "mta_sts", "dane", "tlsrpt")

    def __init__(self, name, address, port, tls="may", verify=False, auth=None, mta_sts=None, dane=None, tlsrpt=None):
        self.name = name  # the host name (MX, route or smarthost), for TLS and logs
        self.address = address
        self.port = port
        self.tls = tls
        self.verify = verify
        self.auth = auth
        # "enforce" or "testing" when the domain's MTA-STS policy chose this
        # host (RFC 8461): the client names it in errors and logs.
        self.mta_sts = mta_sts
        # The host's authenticated TLSA records (dane.TLSAPolicy, RFC 7672):
        # STARTTLS required, the certificate checked against them.
        self.dane = dane
        # The domain's TLS-RPT record (RFC 8460), named when a policy fails.
        self.tlsrpt = tlsrpt

    @property
    def key(self):
        """Connections are shared by messages with the same key."""
        return (self.address, self.port, self.tls, self.verify, self.auth and self.auth[0],
                self.dane.key if self.dane is not None else None)

    def __str__(self):
        host = f"[{self.address}]" if ":" in self.address else self.address
        if self.name and self.name != self.address:
            return f"{self.name}[{self.address}]:{self.port}"
        return f"{host}:{self.port}"

    __repr__ = __str__


def parse_servers(items):
    """["127.0.0.1:5353", "::1", "[::1]:53"] -> [(host, port)]."""
    out = []
    for item in items:
        host, port = split_hostport(item, 53)
        out.append((host, port))
    return out


def split_hostport(text, default_port=None):
    """'host:port', '[v6]:port', 'host' (with a default port) -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']'")
        port = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port is None:
            raise ValueError(f"{text!r}: expected host:port")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:
        host, port = text, ""  # a bare IPv6 address
    else:
        host, port = text, ""
    if not port:
        if default_port is None:
            raise ValueError(f"{text!r}: expected host:port")
        port = default_port
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: the port is not a number")
    if not host or not 0 < port < 65536:
        raise ValueError(f"{text!r}: expected host:port")
    return host, port


def make_resolver(servers=None, timeout=None):
    """The relay's own resolver (see L{mailplat.dns.make_resolver})."""
    return shared_dns.make_resolver(servers, timeout or shared_dns.DEFAULT_TIMEOUT)


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _dns_failure(failure, what):
    """A lookup error as a mail failure: NXDOMAIN is final, the rest temporary."""
    if failure.check(error.DNSNameError):
        raise PermanentFailure(f"{what}: no such domain", "5.1.2", 550)
    if failure.check(error.DomainError):
        return None  # no resolver knows the name: treated as no records
    raise TemporaryFailure(f"{what}: DNS lookup failed ({failure.type.__name__})", "4.4.3")


class Router:
    """Turns a recipient domain into destinations, in the order to try them."""

    def __init__(self, dns_servers=None, routes=None, smarthost=None, mx_port=25, resolver=None, dns_timeout=None,
                 mta_sts=None, dane=True):
        # `resolver`: the server's shared one (mailplat.dns), its owner's to
        # close; without it the router makes its own from `dns_servers`.
        # `mta_sts`: an MTASTSPolicies (mtasts.py) for MX routes, or None.
        # `dane`: DANE (RFC 7672) on MX routes, when the resolver is a
        # validating one (`[dns] validating`; a router's own never is).
        self.mta_sts = mta_sts
        self.dane = dane
        self.dns_servers = dns_servers
        self.dns_timeout = dns_timeout
        self._resolver = resolver
        self._upstream = None
        self.routes = {d.lower().rstrip("."): r for d, r in (routes or {}).items()}
        self.smarthost = smarthost
        self.mx_port = mx_port

    @property
    def resolver(self):
        """Made on first use: client.Resolver starts timers when built."""
        if self._resolver is None:
            self._resolver, self._upstream = make_resolver(self.dns_servers, self.dns_timeout)
        return self._resolver

    def close(self):
        """Stop the timers of a resolver of our own (a shared one is its owner's to close)."""
        if self.mta_sts is not None:
            self.mta_sts.stop()
        if self._upstream is not None:
            shared_dns.close_resolver(self._upstream)

    def port_for(self, mx_host):
        """The SMTP port of an MX host (25; tests point it elsewhere)."""
        return self.mx_port

    @defer.inlineCallbacks
    def route(self, domain, tls_optional=False):
        """
        @param tls_optional: the message says "TLS-Required: No" (RFC 8689
            3): the domain's MTA-STS policy is not applied.
        @return: Deferred firing with a non-empty list of L{Destination};
            fails with L{PermanentFailure} (null MX, no such domain) or
            L{TemporaryFailure} (DNS trouble).
        """
        domain = domain.lower().rstrip(".")
        fixed = self.routes.get(domain) or self.smarthost
        if fixed is not None:
            # A configured host that doesn't resolve is the operator's to fix:
            # the mail waits (4.4.3) rather than bouncing.
            addresses = yield self.addresses(fixed.host, trouble=[])
            if not addresses:
                raise TemporaryFailure(f"{fixed.host}: no address for the configured route", "4.4.3")
            return [
                Destination(fixed.host, a, fixed.port, fixed.tls, fixed.verify, fixed.auth) for a in addresses
            ]
        # The policy lookup runs beside the MX lookup; it never fails.
        if self.mta_sts is not None and not tls_optional:
            policy = self.mta_sts.policy_for(domain, self.resolver)
        else:
            policy = defer.succeed(None)
        # RFC 8689 4.1: "TLS-Required: No" sets DANE aside as well.
        use_dane = self.dane and not tls_optional and self.validating
        try:
            if use_dane:
                mx, mx_secure = yield self.mx_hosts_secure(domain)
            else:
                mx, mx_secure = (yield self.mx_hosts(domain)), False
        finally:
            cached = yield policy
        tlsa, unavailable = {}, {}
        if use_dane:
            tlsa, unavailable = yield self.dane_hosts(domain, mx, mx_secure)
        report = None
        sts_mode = cached.policy.mode if cached is not None and cached.policy is not None else None
        if tlsa or unavailable or sts_mode in ("enforce", "testing"):
            # RFC 8460: where the domain wants to hear of TLS failures.
            report = yield tlsrpt.lookup(self.resolver, domain)
        # RFC 8461 2: a host with DANE TLSA records is held to them, not to MTA-STS.
        others = [h for h in mx if h not in tlsa and h not in unavailable]
        plain = {}
        if others:
            try:
                matching, tls, verify, mode = self.apply_mta_sts(domain, others, cached)
            except TemporaryFailure as e:
                if not tlsa:
                    raise _with_report(e, report)
                log.warn("relay: {domain}: {reason}; only the DANE hosts are tried", domain=domain, reason=e.text)
                matching = []
            plain = {h: (tls, verify, mode) for h in matching}
        out, trouble = [], []
        for host in mx:
            if host not in tlsa and host not in plain:
                continue
            addresses = yield self.addresses(host, trouble=trouble)
            for a in addresses:
                if host in tlsa:
                    # RFC 7672 2.2: STARTTLS required; a verified path only with usable records.
                    out.append(Destination(host, a, self.port_for(host), "starttls", bool(tlsa[host].records),
                                           dane=tlsa[host], tlsrpt=report))
                else:
                    tls, verify, mode = plain[host]
                    out.append(Destination(host, a, self.port_for(host), tls, verify, mta_sts=mode, tlsrpt=report))
        if not out and unavailable:
            # RFC 7672 2.1.1: an MX host whose TLSA lookup failed is not used; the message waits.
            reasons = "; ".join(f"{h}: {why}" for h, why in unavailable.items())
            raise _with_report(TemporaryFailure(f"{domain}: DANE: {reasons}; not sent", "4.7.5"), report)
        if not out:
            if trouble:
                raise TemporaryFailure(f"{domain}: DNS lookup failed for {', '.join(trouble)}", "4.4.3")
            if mx == [domain]:
                # RFC 5321 5.1: neither MX nor address records.
                raise PermanentFailure(f"{domain}: no MX or address records", "5.1.2", 550)
            raise TemporaryFailure(f"{domain}: no address for any MX host ({', '.join(mx)})", "4.4.3")
        return out

    def apply_mta_sts(self, domain, mx, cached):
        """
        RFC 8461 4.1-4.2 on the MX list: (hosts, tls, verify, mode). Under
        mode=enforce only hosts matching the policy remain, and each needs
        STARTTLS with a certificate valid for its name; none matching is a
        temporary failure (the message waits, then bounces at max_age).
        Under mode=testing the mail goes as before and a mismatch is logged.
        """
        policy = cached.policy if cached is not None else None
        if policy is None or policy.mode == "none":
            return mx, "may", False, None
        matching = [h for h in mx if policy.matches(h)]
        if policy.mode == "enforce":
            if not matching:
                raise TemporaryFailure(
                    f"{domain}: no MX host ({', '.join(mx)}) matches its MTA-STS policy "
                    f"(mx: {', '.join(policy.mx)}); not sent", "4.7.5")
            return matching, "starttls", True, "enforce"
        for host in mx:
            if host not in matching:
                log.warn("MTA-STS testing: {domain}: MX {host} does not match the policy (mx: {patterns}); "
                         "enforce would not send there", domain=domain, host=host, patterns=", ".join(policy.mx))
        return mx, "may", False, "testing"

    @property
    def validating(self):
        """The resolver vouches for its answers (`[dns] validating`): DANE can apply."""
        return bool(getattr(self.resolver, "validating", False)) and hasattr(self.resolver, "lookup_secure")

    @defer.inlineCallbacks
    def mx_hosts_secure(self, domain):
        """
        L{mx_hosts} through the validating resolver: (hosts, whether the MX
        answer, or its validated absence, was authenticated; RFC 7672 2.2.1).
        """
        try:
            answer = yield self.resolver.lookup_secure(domain, dns.MX)
        except error.DNSNameError:
            raise PermanentFailure(f"{domain}: no such domain", "5.1.2", 550)
        except Exception as e:
            # SERVFAIL here is often a validation failure (RFC 4035 5.5): never the implicit MX.
            raise TemporaryFailure(f"{domain}: DNS lookup failed ({type(e).__name__})", "4.4.3")
        return self._by_preference(domain, answer.records), answer.authenticated

    @defer.inlineCallbacks
    def dane_hosts(self, domain, mx, mx_secure):
        """
        ({host: TLSAPolicy} for the hosts DANE holds, {host: reason} for
        those whose TLSA lookup failed), with one log line per host (the
        DANE outcome of this delivery).
        """
        tlsa, unavailable = {}, {}
        if not mx_secure:
            log.info("DANE: {domain}: the MX answer is not DNSSEC-authenticated; no DANE", domain=domain)
            return tlsa, unavailable
        # One TLSA lookup per host, all at once.
        lookups = [dane.lookup_host(self.resolver, host, names=[host, domain]) for host in mx]
        results = yield defer.DeferredList(lookups, consumeErrors=True)
        for host, (ok, result) in zip(mx, results):
            if not ok:
                reason = str(result.value) if result.check(dane.DANEUnavailable) else \
                    f"TLSA lookup of _25._tcp.{host} failed ({result.type.__name__})"
                unavailable[host] = reason
                log.warn("DANE: {domain}: MX {host}: {reason}; host not used now", domain=domain, host=host, reason=reason)
                continue
            policy = result
            if policy is None:
                log.info("DANE: {domain}: MX {host}: no authenticated TLSA records; no DANE", domain=domain, host=host)
            else:
                tlsa[host] = policy
                log.info("DANE: {domain}: MX {host}: {outcome}", domain=domain, host=host, outcome=policy.describe())
        return tlsa, unavailable

    @defer.inlineCallbacks
    def mx_hosts(self, domain):
        """
        MX host names by preference, equal preferences shuffled (RFC 5321
        5.1); [domain] itself when it has no MX (the implicit MX).
        """
        try:
            answers, _, _ = yield self.resolver.lookupMailExchange(domain)
        except Exception:
            answers = _dns_failure(Failure(), domain) or []
        return self._by_preference(domain, answers)

    @staticmethod
    def _by_preference(domain, answers):
        records = [
            (a.payload.preference, str(a.payload.name).lower().rstrip("."))
            for a in answers
            if a.type == dns.MX
        ]
        if not records:
            return [domain]
        # RFC 7505 3: an MX of "." says the domain accepts no mail.
        if any(name == "" for _, name in records):
            raise PermanentFailure(f"{domain} accepts no mail (null MX, RFC 7505)", "5.1.10", 556)
        random.shuffle(records)
        records.sort(key=lambda r: r[0])
        return list(dict.fromkeys(name for _, name in records))


    @defer.inlineCallbacks
    def addresses(self, host, trouble=None):
        """
        IPv4 then IPv6 addresses of a host ([] when it has none). With a
        `trouble` list, lookup errors only add the host to it (one MX host
        failing must not stop the others from being tried).
        """
        if _is_ip(host):
            return [host]
        out = []
        for lookup, rtype in ((self.resolver.lookupAddress, dns.A), (self.resolver.lookupIPV6Address, dns.AAAA)):
            try:
                answers, _, _ = yield lookup(host)
            except Exception:
                failure = Failure()
                if trouble is None:
                    _dns_failure(failure, host)
                elif not failure.check(error.DNSNameError, error.DomainError) and host not in trouble:
                    trouble.append(host)
                continue
            for a in answers:
                if a.type == rtype == dns.A:
                    out.append(a.payload.dottedQuad())
                elif a.type == rtype == dns.AAAA:
                    out.append(socket.inet_ntop(socket.AF_INET6, a.payload.address))
        return list(dict.fromkeys(out))


def _with_report(failure, report):
    """A policy failure names the domain's TLS-RPT address (RFC 8460), for the delivery log line."""
    if report is None:
        return failure
    return TemporaryFailure(f"{failure.text} (TLS-RPT: {report})", failure.enhanced)
