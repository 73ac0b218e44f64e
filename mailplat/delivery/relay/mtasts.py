"""
MTA-STS (RFC 8461): a recipient domain's published promise that its MX
hosts take mail only over TLS with a valid certificate.

    policies = MTASTSPolicies(PolicyCache(path), port=443, trust_root=None)
    policy = yield policies.policy_for("example.org", resolver)   # Policy or None

`policy_for` looks up `_mta-sts.<domain>` TXT; when its `id` differs from
the cached policy's (or nothing valid is cached), it fetches
`https://mta-sts.<domain>/.well-known/mta-sts.txt` (certificate checked
against the trust root, no redirects, at most 64 KB, a timeout) and caches
the result by domain, in memory and in a small JSON file, until its
`max_age` runs out. It never fails: every error is logged and answered
with the cached policy or None (RFC 8461 5: no policy, deliver as before).
The router applies the policy (L{mailplat.delivery.relay.router}).
"""

import json
import os
import re
import socket
import time

from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.names import dns, error
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

log = Logger()

MODES = ("enforce", "testing", "none")
MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 3.3: senders may cap the policy at 64 KB
MAX_MAX_AGE = 31557600  # RFC 8461 3.2: max_age is at most a year
FETCH_TIMEOUT = 20  # seconds for the whole HTTPS fetch (connect, TLS, body)
POLICY_PATH = "/.well-known/mta-sts.txt"

_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class PolicyError(Exception):
    """A TXT record or policy file that does not follow RFC 8461 3."""


def _host(name):
    return name.strip().lower().rstrip(".")


def parse_txt(strings):
    """
    The policy id of the `_mta-sts` TXT records (each a list of strings),
    or None when there is no valid one (RFC 8461 3.1: records not starting
    with "v=STSv1" are ignored; more than one that does means no policy).
    """
    records = []
    for parts in strings:
        text = b"".join(p if isinstance(p, bytes) else p.encode() for p in parts).decode("ascii", "replace")
        if re.match(r"^v=STSv1\s*(;|$)", text):
            records.append(text)
    if len(records) != 1:
        return None
    fields = {}
    for field in records[0].split(";"):
        key, sep, value = field.strip().partition("=")
        if sep and key not in fields:
            fields[key] = value.strip()
    policy_id = fields.get("id", "")
    return policy_id if _ID.match(policy_id) else None


class Policy:
    """A parsed policy file: mode, MX patterns, max_age (RFC 8461 3.2)."""

    def __init__(self, mode, mx, max_age):
        self.mode = mode
        self.mx = [_host(p) for p in mx]
        self.max_age = max_age

    def matches(self, host):
        """RFC 8461 4.1: exact, or `*.` standing for exactly one leftmost label."""
        host = _host(host)
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, dot, rest = host.partition(".")
                if dot and label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def to_json(self):
        return {"mode": self.mode, "mx": self.mx, "max_age": self.max_age}

    def __repr__(self):
        return f"Policy(mode={self.mode!r}, mx={self.mx!r}, max_age={self.max_age})"


def parse_policy(data):
    """
    bytes of the policy file -> L{Policy}; raises L{PolicyError} naming
    what is wrong. Lines are `key: value` ending in CRLF (LF accepted);
    unknown keys are ignored, `mx` may repeat (RFC 8461 3.2).
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("not ASCII text")
    fields, mx = {}, []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise PolicyError(f"not a key: value line: {line[:80]!r}")
        if key == "mx":
            mx.append(value)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, not 'STSv1'")
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode is {mode!r}, not one of {', '.join(MODES)}")
    max_age = fields.get("max_age", "")
    if not max_age.isdigit() or len(max_age) > 10 or int(max_age) > MAX_MAX_AGE:
        raise PolicyError(f"max_age is {max_age!r}, not a number of seconds up to {MAX_MAX_AGE}")
    for pattern in mx:
        name = _host(pattern[2:] if pattern.startswith("*.") else pattern)
        if not name or not all(_LABEL.match(label) for label in name.split(".")):
            raise PolicyError(f"mx {pattern!r} is not a host name pattern")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without any mx line")
    return Policy(mode, mx, int(max_age))


class CachedPolicy:
    """A policy as cached: with the TXT id it was fetched under and when."""

    def __init__(self, policy_id, policy, fetched):
        self.id = policy_id
        self.policy = policy
        self.fetched = fetched

    @property
    def expires(self):
        return self.fetched + self.policy.max_age


class PolicyCache:
    """
    Policies by domain, in memory and in one JSON file (RFC 8461 5.1: a
    policy outlives a restart until its max_age runs out). The file is
    small and written once per fetched policy: written in place of a
    temporary file (fsync, rename), on the reactor thread.
    """

    def __init__(self, path, clock=time.time):
        self.path = path
        self.clock = clock
        self.entries = {}
        self._load()

    def _load(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warn("MTA-STS: cannot read the policy cache {path} ({error}); starting empty", path=self.path, error=e)
            return
        for domain, item in (data.get("policies") or {}).items() if isinstance(data, dict) else ():
            try:
                policy = Policy(item["mode"], list(item["mx"]), int(item["max_age"]))
                if policy.mode not in MODES:
                    raise ValueError(policy.mode)
                self.entries[domain] = CachedPolicy(str(item["id"]), policy, float(item["fetched"]))
            except (KeyError, TypeError, ValueError):
                log.warn("MTA-STS: {path}: a bad entry for {domain}; ignored", path=self.path, domain=domain)

    def get(self, domain):
        """The cached policy of `domain` that has not expired, or None."""
        entry = self.entries.get(domain)
        if entry is not None and entry.expires <= self.clock():
            return None
        return entry

    def put(self, domain, policy_id, policy):
        entry = self.entries[domain] = CachedPolicy(policy_id, policy, self.clock())
        now = self.clock()
        for name in [d for d, e in self.entries.items() if e.expires <= now]:
            del self.entries[name]
        self._save()
        return entry

    def _save(self):
        data = {
            "policies": {
                d: dict(e.policy.to_json(), id=e.id, fetched=e.fetched) for d, e in sorted(self.entries.items())
            }
        }
        directory = os.path.dirname(self.path) or "."
        tmp = f"{self.path}.tmp"
        try:
            os.makedirs(directory, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            # The policy still applies from memory; only a restart forgets it.
            log.warn("MTA-STS: cannot write the policy cache {path}: {error}", path=self.path, error=e)


@defer.inlineCallbacks
def _first_address(resolver, host):
    """The first IPv4, else IPv6, address of `host` through `resolver`."""
    for lookup, rtype in ((resolver.lookupAddress, dns.A), (resolver.lookupIPV6Address, dns.AAAA)):
        try:
            answers, _, _ = yield lookup(host)
        except Exception:
            continue
        for a in answers:
            if a.type == rtype == dns.A:
                return a.payload.dottedQuad()
            if a.type == rtype == dns.AAAA:
                return socket.inet_ntop(socket.AF_INET6, a.payload.address)
    raise PolicyError(f"{host}: no address")


@implementer(IAgentEndpointFactory)
class _PolicyEndpoints:
    """
    Agent endpoints for the policy host: its address from the server's
    resolver (not the system's), TLS with the name checked against the
    trust root (RFC 8461 3.3: the policy host needs a valid certificate).
    """

    def __init__(self, resolver, trust_root, clock, timeout):
        self.resolver = resolver
        self.trust_root = trust_root
        self.clock = clock
        self.timeout = timeout

    def endpointForURI(self, uri):
        return _ResolvingTLSEndpoint(self, uri.host.decode("ascii"), uri.port)


class _ResolvingTLSEndpoint:
    def __init__(self, factory, host, port):
        self.factory = factory
        self.host = host
        self.port = port

    @defer.inlineCallbacks
    def connect(self, protocol_factory):
        f = self.factory
        address = yield _first_address(f.resolver, self.host)
        kind = endpoints.TCP6ClientEndpoint if ":" in address else endpoints.TCP4ClientEndpoint
        tcp = kind(f.clock, address, self.port, timeout=f.timeout)
        context = ssl.optionsForClientTLS(self.host, trustRoot=f.trust_root)
        connected = yield endpoints.wrapClientTLS(context, tcp).connect(protocol_factory)
        return connected


class _CappedBody(protocol.Protocol):
    """Collects a response body, giving up beyond `limit` octets."""

    def __init__(self, limit, finished):
        self.limit = limit
        self.finished = finished
        self.chunks = []
        self.size = 0
        self.too_big = False

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.limit:
            if not self.too_big:
                self.too_big = True
                self.transport.stopProducing()
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if self.too_big:
            self.finished.errback(PolicyError(f"larger than {self.limit} octets"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(reason)


class MTASTSPolicies:
    """
    The MTA-STS policy of each recipient domain, as the router asks for it.

    @param cache: a L{PolicyCache}.
    @param port: the policy host's HTTPS port (443; tests serve elsewhere).
    @param trust_root: a Twisted trust root (None: the system's CAs).
    """

    def __init__(self, cache, port=443, trust_root=None, timeout=FETCH_TIMEOUT, clock=reactor):
        self.cache = cache
        self.port = port
        self.trust_root = trust_root
        self.timeout = timeout
        self.clock = clock
        self.fetches = 0  # HTTPS fetches started (for tests and logs)
        self._running = {}  # domain -> Deferred of a lookup under way

    def policy_for(self, domain, resolver):
        """Deferred firing with the L{CachedPolicy} to apply, or None; never fails."""
        domain = _host(domain)
        running = self._running.get(domain)
        if running is None:
            running = self._running[domain] = self._lookup(domain, resolver)
            running.addBoth(self._done, domain)
        # Several messages for one domain share one lookup and one fetch.
        copy = defer.Deferred()

        def share(result):
            copy.callback(result)
            return result

        running.addCallback(share)
        return copy

    def _done(self, result, domain):
        self._running.pop(domain, None)
        if isinstance(result, Failure):
            # Only a cancellation at shutdown gets here: no policy.
            if not result.check(defer.CancelledError):
                log.failure("MTA-STS: {domain}: policy lookup failed", result, domain=domain)
            return None
        return result

    def stop(self):
        """Cancel lookups under way (the server is stopping)."""
        for d in list(self._running.values()):
            d.cancel()

    @defer.inlineCallbacks
    def _lookup(self, domain, resolver):
        cached = self.cache.get(domain)
        try:
            policy_id = yield self._policy_id(domain, resolver)
        except defer.CancelledError:
            return cached
        except Exception as e:
            # RFC 8461 5: a DNS failure keeps the cached policy, if any.
            log.info("MTA-STS: {domain}: TXT lookup failed ({error})", domain=domain, error=e)
            return cached
        if policy_id is None:
            # RFC 8461 3.3 (and 5.1): no TXT record now does not end a
            # cached policy before its max_age.
            return cached
        if cached is not None and cached.id == policy_id:
            return cached
        try:
            body = yield self._fetch(domain, resolver)
            policy = parse_policy(body)
        except defer.CancelledError:
            return cached
        except Exception as e:
            reason = e.args[0] if isinstance(e, PolicyError) else f"{type(e).__name__}: {_describe(e)}"
            log.warn(
                "MTA-STS: {domain}: no usable policy at {url} ({reason}); {action}",
                domain=domain, url=self.url(domain), reason=reason,
                action="keeping the cached one" if cached else "delivering without MTA-STS",
            )
            return cached
        log.info("MTA-STS: {domain}: policy {policy_id} mode={mode} mx={mx} max_age={max_age}",
                 domain=domain, policy_id=policy_id, mode=policy.mode, mx=",".join(policy.mx), max_age=policy.max_age)
        return self.cache.put(domain, policy_id, policy)

    @defer.inlineCallbacks
    def _policy_id(self, domain, resolver):
        try:
            answers, _, _ = yield resolver.lookupText(f"_mta-sts.{domain}")
        except (error.DNSNameError, error.DomainError):
            return None
        return parse_txt([a.payload.data for a in answers if a.type == dns.TXT])

    def url(self, domain):
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://mta-sts.{domain}{port}{POLICY_PATH}"

    def _fetch(self, domain, resolver):
        """The policy file's bytes; fails on any HTTP status but 200 (RFC 8461 3.3: no redirects)."""
        self.fetches += 1
        agent = Agent.usingEndpointFactory(self.clock, _PolicyEndpoints(resolver, self.trust_root, self.clock, self.timeout))
        d = agent.request(b"GET", self.url(domain).encode("ascii"))

        def got(response):
            if response.code != 200:
                raise PolicyError(f"HTTP status {response.code}")
            if isinstance(response.length, int) and response.length > MAX_POLICY_SIZE:
                response.deliverBody(protocol.Protocol())  # lets the connection go
                raise PolicyError(f"larger than {MAX_POLICY_SIZE} octets")
            finished = defer.Deferred()
            response.deliverBody(_CappedBody(MAX_POLICY_SIZE, finished))
            return finished

        d.addCallback(got)
        d.addTimeout(self.timeout, self.clock)
        return d


def _describe(exc):
    """A one-line reason from what twisted.web raises (often a list of failures)."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(exc) or type(exc).__name__
