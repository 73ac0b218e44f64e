"""
Relay delivery: the persistent queue that carries mail for remote
recipients to other servers (spool, router, outbound SMTP, retries, DSNs).
See docs/relay.md for the [relay] keys and `mailplat queue`.
"""

import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl

from mailplat.config import ConfigError
from mailplat.delivery.relay.client import ConnectionPool
from mailplat.delivery.relay.mtasts import MTASTSPolicies, PolicyCache
from mailplat.delivery.relay.queue import RelayQueue, RetryPolicy
from mailplat.delivery.relay.router import Route, Router

__all__ = ["RelayQueue", "build"]


def read_credentials(config, path):
    """`user:password` from the first non-empty, non-comment line of the file."""
    key = "relay.smarthost_auth_file"
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError as e:
        raise ConfigError(config.source, key, f"cannot read {path}: {e.strerror}")
    if not lines or ":" not in lines[0]:
        raise ConfigError(config.source, key, f"{path}: expected one line user:password")
    user, _, password = lines[0].partition(":")
    if not user or not password:
        raise ConfigError(config.source, key, f"{path}: expected one line user:password")
    return user, password


def read_trust_root(config, path):
    """The CA certificates of `[relay] tls_trust_file` (PEM, one or more) as a Twisted trust root."""
    key = "relay.tls_trust_file"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(config.source, key, f"cannot read {path}: {e.strerror}")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(config.source, key, f"{path}: expected PEM certificates (-----BEGIN CERTIFICATE-----)")
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certificates]
    )


def build(config, local_agent=None, resolver=None, make_queue=None):
    """
    The RelayQueue for `config` (None when [relay] is absent or off).

    @param make_queue: what makes the queue from the parts built here
        (default L{RelayQueue}; the sql queue passes its own).

    @param resolver: the server's shared resolver (L{mailplat.dns}); the MX
        and address lookups go to it unless `[relay] dns_servers` is set,
        which gives the relay name servers of its own (docs/relay.md).
    """
    settings = config.relay
    if settings is None:
        return None
    routes = {d: Route(r["host"], r["port"], r["tls"], r["verify"]) for d, r in settings["routes"].items()}
    smarthost = None
    if settings["smarthost"]:
        s = settings["smarthost"]
        auth = None
        if settings["smarthost_auth_file"]:
            auth = read_credentials(config, settings["smarthost_auth_file"])
        smarthost = Route(s["host"], s["port"], s["tls"], s["verify"], auth)
    trust_root = read_trust_root(config, settings["tls_trust_file"]) if settings["tls_trust_file"] else None
    mta_sts = None
    if settings["mta_sts"]:
        cache = PolicyCache(os.path.join(config.state_dir, "mta-sts.json"))
        mta_sts = MTASTSPolicies(cache, port=settings["mta_sts_port"], trust_root=trust_root)
    dns_timeout = (config.dns or {}).get("timeout")
    if settings["dns_servers"] or resolver is None:
        router = Router(settings["dns_servers"], routes, smarthost, settings["mx_port"], dns_timeout=dns_timeout,
                        mta_sts=mta_sts)
    else:
        router = Router(None, routes, smarthost, settings["mx_port"], resolver=resolver, mta_sts=mta_sts)
    pool = ConnectionPool(
        config.hostname,
        total=settings["max_connections"],
        per_destination=settings["connections_per_destination"],
        timeout=settings["timeout"],
        connect_timeout=settings["connect_timeout"],
        trust_root=trust_root,
    )
    retry = RetryPolicy(
        first=settings["retry_first"],
        initial=settings["retry_initial"],
        maximum=settings["retry_max"],
        max_age=settings["max_age"],
        delay_warning=settings["delay_warning"],
    )

    return (make_queue or RelayQueue)(
        config.state_dir,
        config.hostname,
        config.local_domains,
        router,
        pool,
        retry,
        local_agent=local_agent,
        on_stop=[router.close],
    )
