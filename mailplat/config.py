"""
TOML configuration: the embedded defaults, the file an operator writes, and
the typed settings the rest of the server reads.

Every error is a L{ConfigError} naming the file, the key and what is wrong,
so an operator can fix it without reading code. Relative paths are taken
from the directory the server is started in (like twistd's own options).
"""

import difflib
import os
import tomllib
from dataclasses import dataclass, field

DEFAULTS_NAME = "<embedded defaults>"

# The embedded defaults: what `twistd -n mailplat` runs with no --config.
# Unprivileged ports on loopback, all state under ./var.
DEFAULT_TOML = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port=2525:interface=127.0.0.1"
submission = "tcp:port=5587:interface=127.0.0.1"
smtps = "tcp:port=4465:interface=127.0.0.1"
imap = "tcp:port=1143:interface=127.0.0.1"
imaps = "tcp:port=1993:interface=127.0.0.1"
pop3 = "tcp:port=1110:interface=127.0.0.1"
pop3s = "tcp:port=1995:interface=127.0.0.1"
managesieve = "tcp:port=4190:interface=127.0.0.1"

[tls]

[realm]
backend = "passwd-file"

[store]
backend = "maildir"
path = "%s/mail/%%d/%%n"

[delivery]
local = "maildir"

[aliases]

[limits]
"""

LISTENERS = ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s", "managesieve")
TLS_WRAPPED = ("smtps", "imaps", "pop3s")
# [listen] keys that serve HTTP, not mail (mailplat.metrics, mailplat.web):
# alone they are no service. Not in the embedded defaults: turned on by the
# operator (an HTTP port answers anyone who asks for a user's settings).
WEB_LISTENERS = ("metrics", "http")

# key -> (type, default); the [limits] table.
LIMIT_KEYS = {
    "message_size": (int, 50 * 1024 * 1024),
    "line_length": (int, 16 * 1024),
    "recipients": (int, 1000),
    "connections_per_ip": (int, 50),
    "command_timeout": (int, 300),
    "data_timeout": (int, 600),
    # seconds a whole DATA, BDAT chunk or IMAP command with literals may take
    # (a command line alone has command_timeout), however its bytes trickle
    "data_total_timeout": (int, 3600),
    "auth_failures": (int, 5),
    "auth_failure_window": (int, 600),
    "auth_failure_delay": (int, 1),  # seconds added to each failed login's answer; 0 is allowed
    # addresses and CIDRs never locked out or tarpitted (a local webmail);
    # read as a tuple of ipaddress networks (docs/security.md)
    "trusted_networks": (list, []),
}


# key -> (type, default); the [relay] table's plain keys (times in seconds).
RELAY_KEYS = {
    "enabled": (bool, True),
    "smarthost": (str, None),
    "smarthost_tls": (str, "starttls"),
    "smarthost_tls_verify": (bool, True),
    "smarthost_auth_file": (str, None),
    "dns_servers": (list, []),
    "mx_port": (int, 25),
    "retry_first": (int, 60),
    "retry_initial": (int, 300),
    "retry_max": (int, 4 * 3600),
    "max_age": (int, 5 * 86400),
    "delay_warning": (int, 0),
    "max_connections": (int, 50),
    "connections_per_destination": (int, 10),
    "timeout": (int, 300),
    "connect_timeout": (int, 30),
    # Outbound transport security (docs/relay.md): MTA-STS (RFC 8461) on MX
    # routes, its policy host's HTTPS port (tests serve elsewhere), and the
    # CA certificates (PEM) for verified TLS; none: the system's.
    "mta_sts": (bool, True),
    "mta_sts_port": (int, 443),
    "tls_trust_file": (str, None),
    # The relay queue plugin (mailplat.plugin kind "relay"); its own keys in [relay.NAME].
    "queue": (str, "spool"),
}
RELAY_TLS = ("may", "starttls", "implicit", "none")

# The [dns] table: the one resolver of the server (mailplat.dns).
DNS_KEYS = ("servers", "timeout", "validating")
DNS_DEFAULT_TIMEOUT = 10

# The [dkim] table: signing on submission (mailplat.auth.dkim_sign).
DKIM_KEYS = ("enabled", "domains", "selectors", "headers", "oversign_from")

# The [authentication] table: SPF/DKIM/DMARC checks on the MX port and the
# policy on their outcome (mailplat.auth.verify; docs/authentication.md).
AUTHENTICATION_KEYS = ("verify", "timeout", "junk_folder", "dmarc_reject", "dmarc_quarantine", "spf_fail", "temperror", "domains")
AUTHENTICATION_POLICY = {
    "dmarc_reject": (("reject", "quarantine", "none"), "reject"),
    "dmarc_quarantine": (("quarantine", "reject", "none"), "quarantine"),
    "spf_fail": (("none", "quarantine", "reject"), "none"),
    "temperror": (("accept", "defer"), "accept"),
}
AUTHENTICATION_DEFAULT_TIMEOUT = 20
# The header fields signed when present (RFC 6376 5.4.1's list, trimmed to
# what a submission client writes); From is signed once more than it occurs.
DKIM_HEADERS = (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
    "MIME-Version", "Content-Type", "In-Reply-To", "References",
)


class ConfigError(Exception):
    """A configuration problem, said so that an operator can fix it."""

    def __init__(self, source, key, problem):
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: " if source else ""
        keytext = f"{key}: " if key else ""
        super().__init__(f"{where}{keytext}{problem}")


@dataclass
class Config:
    """Typed settings. Paths are absolute."""

    source: str
    hostname: str
    state_dir: str
    local_domains: list
    listen: dict  # name -> endpoint string, only the ones turned on
    tls_certificate: str
    tls_key: str
    tls_create: bool
    allow_plaintext_auth: bool
    realm: dict  # the [realm] table, "backend" included, paths absolute
    store: dict
    delivery: dict
    aliases_path: str | None
    recipient_delimiter: str
    restrict_sender: bool
    limits: dict
    # The [relay] table, checked (see RELAY_KEYS); None when there is no
    # [relay] table or it says enabled = false: no relay queue runs.
    relay: dict | None = None
    # [dns]: {"servers": [(host, port)] ([] = resolv.conf), "timeout": seconds}
    dns: dict = field(default_factory=lambda: {"servers": [], "timeout": DNS_DEFAULT_TIMEOUT, "validating": False})
    # [dkim]: see _dkim; key files live under state_dir/dkim/DOMAIN/SELECTOR.key
    dkim: dict = field(default_factory=dict)
    # [authentication]: see _authentication; None means the defaults
    authentication: dict | None = None
    # [quota]: {"storage": octets, "messages": int, "warning_percent": int}
    # (0: no limit; mailplat.quota.settings); realms may override per user.
    quota: dict = field(default_factory=lambda: {"storage": 0, "messages": 0, "warning_percent": 90})
    # [log] format: "text" (twistd's lines) or "json" (one JSON object a line)
    log_format: str = "text"
    # [tls] acme: see _acme; None when certificates do not come by ACME
    acme: dict | None = None
    # [autoconfig]: {"enabled": bool, "hostname": the host clients are told to use}
    autoconfig: dict = field(default_factory=lambda: {"enabled": True, "hostname": None})
    # [sieve]: see _sieve (mailplat.sieve.filter, mailplat.managesieve)
    sieve: dict = field(default_factory=lambda: {"enabled": False, "home": "", "max_scripts": 32, "max_script_bytes": 1 << 20,
                                                 "before": [], "after": [], "global_dir": ""})
    # [server] user / group: who the server runs as once its ports are bound
    # (mailplat.privileges); None: as whoever starts it (or twistd -u/-g).
    user: str | None = None
    group: str | None = None
    raw: dict = field(repr=False, default_factory=dict)

    def is_local_domain(self, domain):
        return domain.lower() in self.local_domains

    def section(self, name):
        """The raw table for a plugin's own keys (e.g. [delivery.lmtp])."""
        return self.raw.get(name, {})


def _merge(base, override):
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _absolute(path, base):
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def load(path=None, cwd=None):
    """
    Read the configuration.

    @param path: the TOML file, or None for the embedded defaults alone.
    @raise ConfigError: naming the file, the key and the problem.
    """
    cwd = cwd or os.getcwd()
    defaults = tomllib.loads(DEFAULT_TOML % "var")
    if path is None:
        return _build(defaults, DEFAULTS_NAME, cwd)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found")
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, None, f"not valid TOML: {e}")
    merged = _merge(defaults, {k: v for k, v in data.items() if k != "listen"})
    # A config file says which services run: a missing [listen] key is off.
    merged["listen"] = data.get("listen", {})
    # Paths under the state dir follow a state_dir the file sets.
    # (Only a state_dir of the right type: _build names a wrong one.)
    server, store = data.get("server"), data.get("store")
    if (
        isinstance(server, dict)
        and isinstance(server.get("state_dir"), str)
        and not (isinstance(store, dict) and "path" in store)
    ):
        merged["store"]["path"] = os.path.join(server["state_dir"], "mail/%d/%n")
    return _build(merged, path, cwd)


def _expect(source, table, key, kind, typ, required=False, default=None):
    value = table.get(key, default)
    if value is None:
        if required:
            raise ConfigError(source, f"{kind}.{key}", "is required")
        return None
    problem = type_problem(value, typ)
    if problem:
        raise ConfigError(source, f"{kind}.{key}", problem)
    return value


# TOML's types as an operator reads them (the core's keys and plugins' schemas).
TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list",
              dict: "a table"}


def type_name(typ):
    if isinstance(typ, tuple):
        return " or ".join(type_name(t) for t in typ)
    return TYPE_NAMES.get(typ, getattr(typ, "__name__", str(typ)))


def type_problem(value, typ):
    """
    None when `value` (as tomllib gives it) is of `typ` (a type or a
    tuple of types), else the problem: "must be a whole number, not 'x'".
    True is no number, and a whole number is a number.
    """
    types = typ if isinstance(typ, tuple) else (typ,)
    for t in types:
        if t in (int, float) and isinstance(value, bool):
            continue
        if isinstance(value, t) or (t is float and isinstance(value, int) and not isinstance(value, bool)):
            return None
    return f"must be {type_name(typ)}, not {value!r}"


def _table(source, data, name):
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(source, name, "must be a table")
    return value


# Every table a config may have and the keys of those the core reads
# itself. [realm], [store], [delivery] and [checks.<name>] hold a plugin's
# keys too: mailplat.plugin checks those against the keys the plugin declares.
SERVER_KEYS = ("hostname", "state_dir", "user", "group")
DOMAINS_KEYS = ("local",)
TLS_KEYS = ("certificate", "key", "create_self_signed", "allow_plaintext_auth", "acme")
# [tls] acme = { ... }: certificates by ACME (RFC 8555; mailplat.acme, docs/operating.md)
ACME_KEYS = ("email", "directory", "domains", "challenge", "renew_days", "account_key", "ca_bundle")
ACME_CHALLENGES = ("tls-alpn-01", "http-01")
REALM_KEYS = ("backend", "path")
STORE_KEYS = ("backend", "path")
DELIVERY_KEYS = ("local", "recipient_delimiter")
ALIASES_KEYS = ("path",)
SMTP_KEYS = ("restrict_sender",)
LOG_KEYS = ("format",)
LOG_FORMATS = ("text", "json")
KNOWN_TABLES = ("server", "domains", "listen", "tls", "realm", "store", "delivery", "aliases", "limits", "relay",
                "smtp", "dns", "dkim", "authentication", "checks", "log", "quota", "autoconfig", "sieve")
# [autoconfig]: what client autoconfiguration on [listen] http says (mailplat.autoconfig)
AUTOCONFIG_KEYS = ("enabled", "hostname")


def unknown(key, name, known, what="key"):
    """
    The text for an unknown `name` under `key` (a table, or "" at the top),
    with the closest known spelling: "smtp.restrict_sendr: unknown key (did
    you mean restrict_sender?)". Returns (dotted key, problem).
    """
    dotted = f"{key}.{name}" if key else str(name)
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    if close:
        return dotted, f"unknown {what} (did you mean {close[0]}?)"
    return dotted, f"unknown {what}; known: {', '.join(known) or 'none'}"


def check_keys(source, key, table, known, what="key"):
    """Refuse the first key of `table` that is not in `known`, naming it."""
    for name in table:
        if name not in known:
            raise ConfigError(source, *unknown(key, name, known, what))


def _build(data, source, cwd):
    for name in data:
        if name not in KNOWN_TABLES:
            what = "table" if isinstance(data[name], dict) else "top-level key"
            raise ConfigError(source, *unknown("", name, KNOWN_TABLES, what))
    for name, known in (("server", SERVER_KEYS), ("domains", DOMAINS_KEYS), ("tls", TLS_KEYS),
                        ("aliases", ALIASES_KEYS), ("smtp", SMTP_KEYS), ("log", LOG_KEYS),
                        ("limits", tuple(LIMIT_KEYS)), ("listen", LISTENERS + WEB_LISTENERS)):
        check_keys(source, name, _table(source, data, name), known)
    log_format = _expect(source, _table(source, data, "log"), "format", "log", str, default="text")
    if log_format not in LOG_FORMATS:
        raise ConfigError(source, "log.format", f"must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    server = _table(source, data, "server")
    hostname = _expect(source, server, "hostname", "server", str, required=True)
    if not hostname or any(c.isspace() for c in hostname):
        raise ConfigError(source, "server.hostname", f"not a host name: {hostname!r}")
    state_dir = _absolute(_expect(source, server, "state_dir", "server", str, required=True), cwd)
    run_as = {}
    for name in ("user", "group"):
        value = _expect(source, server, name, "server", str)
        if value is not None and (not value or any(c.isspace() or c == ":" for c in value)):
            raise ConfigError(source, f"server.{name}", f"not a {name} name: {value!r}")
        run_as[name] = value
    if run_as["group"] is not None and run_as["user"] is None:
        raise ConfigError(source, "server.group", "needs server.user (the group alone is not switched to)")

    domains = _table(source, data, "domains")
    local = _expect(source, domains, "local", "domains", list, default=[])
    for d in local:
        if not isinstance(d, str) or not d or "@" in d:
            raise ConfigError(source, "domains.local", f"not a domain name: {d!r}")
    local_domains = [d.lower().rstrip(".") for d in local]

    listen_table = _table(source, data, "listen")
    listen = {}
    for name, value in listen_table.items():
        value = _expect(source, listen_table, name, "listen", str)
        if value:
            listen[name] = value

    tls = _table(source, data, "tls")
    cert = _expect(source, tls, "certificate", "tls", str) or os.path.join(state_dir, "tls", "cert.pem")
    key = _expect(source, tls, "key", "tls", str) or os.path.join(state_dir, "tls", "key.pem")
    tls_create = _expect(source, tls, "create_self_signed", "tls", bool, default=True)
    plaintext_auth = _expect(source, tls, "allow_plaintext_auth", "tls", bool, default=False)

    realm = dict(_table(source, data, "realm"))
    _expect(source, realm, "backend", "realm", str, required=True)
    realm.setdefault("path", os.path.join(state_dir, "users"))
    realm["path"] = _absolute(_expect(source, realm, "path", "realm", str), cwd)

    store = dict(_table(source, data, "store"))
    _expect(source, store, "backend", "store", str, required=True)
    spath = _expect(source, store, "path", "store", str, required=True)
    store["path"] = _absolute(spath, cwd)

    delivery = dict(_table(source, data, "delivery"))
    _expect(source, delivery, "local", "delivery", str, required=True)
    delimiter = _expect(source, delivery, "recipient_delimiter", "delivery", str, default="+")
    if len(delimiter) > 1 or delimiter in ("@", '"', " "):
        raise ConfigError(source, "delivery.recipient_delimiter", f"must be one character (or empty), not {delimiter!r}")
    restrict_sender = _expect(source, _table(source, data, "smtp"), "restrict_sender", "smtp", bool, default=True)

    aliases = _table(source, data, "aliases")
    apath = _expect(source, aliases, "path", "aliases", str)
    aliases_path = _absolute(apath, cwd) if apath else None

    limits_table = _table(source, data, "limits")
    limits = {}
    for name, (typ, default) in LIMIT_KEYS.items():
        value = _expect(source, limits_table, name, "limits", typ, default=default)
        if name == "trusted_networks":
            limits[name] = _networks(source, f"limits.{name}", value)
            continue
        if value < 0 or (value == 0 and name != "auth_failure_delay"):
            raise ConfigError(source, f"limits.{name}", f"must be positive, not {value}")
        limits[name] = value

    relay = _relay(source, data, cwd)
    dns = _dns(source, data)
    dkim = _dkim(source, data, state_dir)
    authentication = _authentication(source, data)
    quota = _quota(source, data)
    acme = _acme(source, tls, listen, state_dir, cwd)
    autoconfig = _autoconfig(source, data, hostname)
    sieve = _sieve(source, data, state_dir, cwd)

    return Config(
        source=source,
        hostname=hostname,
        state_dir=state_dir,
        local_domains=local_domains,
        listen=listen,
        tls_certificate=_absolute(cert, cwd),
        tls_key=_absolute(key, cwd),
        tls_create=tls_create,
        allow_plaintext_auth=plaintext_auth,
        realm=realm,
        store=store,
        delivery=delivery,
        aliases_path=aliases_path,
        recipient_delimiter=delimiter,
        restrict_sender=restrict_sender,
        limits=limits,
        relay=relay,
        dns=dns,
        dkim=dkim,
        authentication=authentication,
        quota=quota,
        acme=acme,
        autoconfig=autoconfig,
        sieve=sieve,
        log_format=log_format,
        user=run_as["user"],
        group=run_as["group"],
        raw=data,
    )


def require_service(config):
    """
    Refuse to run a server that would listen on nothing (start-up and
    check-config; the admin commands work on such a config).
    """
    if not any(name not in WEB_LISTENERS for name in config.listen):
        raise ConfigError(
            config.source, "listen", f"no service is turned on; set at least one of {', '.join(LISTENERS)}"
        )


def _hostport(source, key, text, default_port=None):
    from mailplat.delivery.relay.router import split_hostport

    try:
        return split_hostport(text, default_port)
    except ValueError as e:
        raise ConfigError(source, key, str(e))


def _networks(source, key, values):
    """A list of addresses and CIDRs (IPv4, IPv6) as a tuple of ip_networks."""
    from mailplat.throttle import network

    out = []
    for value in values:
        try:
            out.append(network(value))
        except ValueError as e:
            raise ConfigError(source, key, f"{e}; write an address (192.0.2.7, 2001:db8::7) or a network (192.0.2.0/24)")
    return tuple(out)


def _relay(source, data, cwd):
    """The [relay] table, checked; None when relaying is off."""
    if "relay" not in data:
        return None
    table = _table(source, data, "relay")
    queue = table.get("queue", "spool")
    own = (queue,) if isinstance(queue, str) and isinstance(table.get(queue), dict) else ()
    check_keys(source, "relay", table, ("routes", *RELAY_KEYS, *own))
    relay = {}
    for name, (typ, default) in RELAY_KEYS.items():
        relay[name] = _expect(source, table, name, "relay", typ, default=default)
    if not relay["enabled"]:
        return None
    for name in ("retry_first", "retry_initial", "retry_max", "max_age", "max_connections",
                 "connections_per_destination", "timeout", "connect_timeout"):
        if relay[name] <= 0:
            raise ConfigError(source, f"relay.{name}", f"must be positive, not {relay[name]}")
    if relay["delay_warning"] < 0:
        raise ConfigError(source, "relay.delay_warning", "must be 0 (off) or a number of seconds")
    if not 0 < relay["mx_port"] < 65536:
        raise ConfigError(source, "relay.mx_port", f"not a port: {relay['mx_port']}")
    if relay["retry_max"] < relay["retry_initial"]:
        raise ConfigError(source, "relay.retry_max", "must not be less than relay.retry_initial")
    if relay["smarthost_tls"] not in RELAY_TLS:
        raise ConfigError(source, "relay.smarthost_tls", f"must be one of {', '.join(RELAY_TLS)}, not {relay['smarthost_tls']!r}")
    servers = []
    for item in relay["dns_servers"]:
        if not isinstance(item, str):
            raise ConfigError(source, "relay.dns_servers", f"must be a list of \"address:port\" strings, not {item!r}")
        servers.append(_hostport(source, "relay.dns_servers", item, 53))
    relay["dns_servers"] = servers
    if relay["smarthost"] is not None:
        host, port = _hostport(source, "relay.smarthost", relay["smarthost"])
        relay["smarthost"] = {"host": host, "port": port, "tls": relay["smarthost_tls"], "verify": relay["smarthost_tls_verify"]}
    if relay["smarthost_auth_file"] is not None:
        if relay["smarthost"] is None:
            raise ConfigError(source, "relay.smarthost_auth_file", "needs relay.smarthost")
        relay["smarthost_auth_file"] = _absolute(relay["smarthost_auth_file"], cwd)
    if not 0 < relay["mta_sts_port"] < 65536:
        raise ConfigError(source, "relay.mta_sts_port", f"not a port: {relay['mta_sts_port']}")
    if relay["tls_trust_file"] is not None:
        relay["tls_trust_file"] = _absolute(relay["tls_trust_file"], cwd)
    routes_table = table.get("routes", {})
    if not isinstance(routes_table, dict):
        raise ConfigError(source, "relay.routes", 'must be a table: { "domain" = "host:port" }')
    routes = {}
    for domain, value in routes_table.items():
        key = f"relay.routes.{domain}"
        if not domain or "@" in domain:
            raise ConfigError(source, key, "not a domain name")
        if isinstance(value, str):
            value = {"host": value}
        if not isinstance(value, dict):
            raise ConfigError(source, key, 'must be "host:port" or { host = "host:port", tls = "may" }')
        check_keys(source, key, value, ("host", "tls", "tls_verify"))
        hostport = _expect(source, value, "host", key, str, required=True)
        host, port = _hostport(source, f"{key}.host", hostport, 25)
        tls = _expect(source, value, "tls", key, str, default="may")
        if tls not in RELAY_TLS:
            raise ConfigError(source, f"{key}.tls", f"must be one of {', '.join(RELAY_TLS)}, not {tls!r}")
        verify = _expect(source, value, "tls_verify", key, bool, default=False)
        routes[domain.lower().rstrip(".")] = {"host": host, "port": port, "tls": tls, "verify": verify}
    relay["routes"] = routes
    return relay


def _unknown_keys(source, table, name, known):
    check_keys(source, name, table, known)


def _domain_name(source, key, value):
    """A domain name as the key files and DNS see it: lowercase, no final dot."""
    if not isinstance(value, str) or not value.strip(".") or any(c in value for c in "@/\\ \t") or ".." in value:
        raise ConfigError(source, key, f"not a domain name: {value!r}")
    return value.lower().rstrip(".")


def _acme(source, tls, listen, state_dir, cwd):
    """
    `[tls] acme = { email, directory, domains, ... }`: the ACME account and
    the names of the certificate (RFC 8555); its files live under
    state_dir/acme. None when the key is not set.
    """
    if "acme" not in tls:
        return None
    table = tls["acme"]
    if not isinstance(table, dict):
        raise ConfigError(source, "tls.acme", 'must be a table: { email = "...", directory = "https://...", domains = ["..."] }')
    check_keys(source, "tls.acme", table, ACME_KEYS)
    email = _expect(source, table, "email", "tls.acme", str, required=True)
    if "@" not in email.strip("@") or any(c.isspace() for c in email):
        raise ConfigError(source, "tls.acme.email", f"not an address: {email!r}")
    directory = _expect(source, table, "directory", "tls.acme", str, required=True)
    if not directory.startswith("https://"):
        # RFC 8555 6.1: ACME is spoken over HTTPS only.
        raise ConfigError(source, "tls.acme.directory", f"must be an https:// URL, not {directory!r}")
    domains = _expect(source, table, "domains", "tls.acme", list, required=True)
    if not domains:
        raise ConfigError(source, "tls.acme.domains", "must name at least one domain")
    domains = [_domain_name(source, "tls.acme.domains", d) for d in domains]
    for d in domains:
        if "*" in d:
            # RFC 8555 7.1.3: a wildcard is validated by dns-01 only.
            raise ConfigError(source, "tls.acme.domains", f"{d}: a wildcard needs the dns-01 challenge, which mailplat does not answer; list each name")
    renew_days = _expect(source, table, "renew_days", "tls.acme", int, default=30)
    if renew_days <= 0:
        raise ConfigError(source, "tls.acme.renew_days", f"must be a positive number of days, not {renew_days}")
    challenge = _expect(source, table, "challenge", "tls.acme", str, default="tls-alpn-01")
    if challenge not in ACME_CHALLENGES:
        raise ConfigError(source, "tls.acme.challenge", f"must be one of {', '.join(ACME_CHALLENGES)}, not {challenge!r}")
    if challenge == "tls-alpn-01" and not any(name in listen for name in TLS_WRAPPED):
        raise ConfigError(source, "tls.acme.challenge", "tls-alpn-01 is answered on an implicit-TLS listener: "
                          f"turn on one of [listen] {', '.join(TLS_WRAPPED)} (reached on port 443), "
                          'or use challenge = "http-01" with [listen] http')
    if challenge == "http-01" and "http" not in listen:
        raise ConfigError(source, "tls.acme.challenge", "http-01 is answered on [listen] http (reached on port 80): turn it on")
    acme_dir = os.path.join(state_dir, "acme")
    account_key = _expect(source, table, "account_key", "tls.acme", str)
    ca_bundle = _expect(source, table, "ca_bundle", "tls.acme", str)
    if ca_bundle is not None:
        ca_bundle = _absolute(ca_bundle, cwd)
        if not os.path.isfile(ca_bundle):
            raise ConfigError(source, "tls.acme.ca_bundle", f"file not found: {ca_bundle}")
    return {
        "email": email,
        "directory": directory,
        "domains": domains,
        "challenge": challenge,
        "renew_days": renew_days,
        # made (0600) on first use when not given
        "account_key": _absolute(account_key, cwd) if account_key else os.path.join(acme_dir, "account.key"),
        "ca_bundle": ca_bundle,  # None: the system's CAs (and certifi's) for the directory's HTTPS
        "dir": acme_dir,
        "certificate": os.path.join(acme_dir, "cert.pem"),  # the issued chain, leaf first
        "key": os.path.join(acme_dir, "key.pem"),
    }


def _autoconfig(source, data, hostname):
    """[autoconfig]: client autoconfiguration on [listen] http; the host defaults to [server] hostname."""
    table = _table(source, data, "autoconfig")
    check_keys(source, "autoconfig", table, AUTOCONFIG_KEYS)
    enabled = _expect(source, table, "enabled", "autoconfig", bool, default=True)
    host = _expect(source, table, "hostname", "autoconfig", str, default=hostname)
    if not host or any(c.isspace() or c in "/@:" for c in host):
        raise ConfigError(source, "autoconfig.hostname", f"not a host name: {host!r}")
    return {"enabled": enabled, "hostname": host}


def _dns(source, data):
    """The [dns] table: the name servers and timeout of the server's resolver."""
    table = _table(source, data, "dns")
    _unknown_keys(source, table, "dns", DNS_KEYS)
    servers = []
    for item in _expect(source, table, "servers", "dns", list, default=[]):
        if not isinstance(item, str):
            raise ConfigError(source, "dns.servers", f'must be a list of "address:port" strings, not {item!r}')
        servers.append(_hostport(source, "dns.servers", item, 53))
    timeout = table.get("timeout", DNS_DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(source, "dns.timeout", f"must be a positive number of seconds, not {timeout!r}")
    # true: the servers validate DNSSEC and their AD bit is believed (DANE, docs/relay.md).
    validating = _expect(source, table, "validating", "dns", bool, default=False)
    return {"servers": servers, "timeout": timeout, "validating": validating}


def _dkim(source, data, state_dir):
    """The [dkim] table: which domains and selectors sign, and which headers."""
    table = _table(source, data, "dkim")
    _unknown_keys(source, table, "dkim", DKIM_KEYS)
    enabled = _expect(source, table, "enabled", "dkim", bool, default=True)
    domains = _expect(source, table, "domains", "dkim", list)
    if domains is not None:
        domains = [_domain_name(source, "dkim.domains", d) for d in domains]
    selectors_table = table.get("selectors", {})
    if not isinstance(selectors_table, dict):
        raise ConfigError(source, "dkim.selectors", 'must be a table: { "example.org" = ["selector"] }')
    selectors = {}
    for domain, value in selectors_table.items():
        key = f"dkim.selectors.{domain}"
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(source, key, f"must be a selector or a list of selectors, not {value!r}")
        selectors[_domain_name(source, key, domain)] = [n.lower() for n in names]
    headers = _expect(source, table, "headers", "dkim", list, default=list(DKIM_HEADERS))
    for h in headers:
        if not isinstance(h, str) or not h or any(c.isspace() or c == ":" or not c.isprintable() for c in h):
            raise ConfigError(source, "dkim.headers", f"not a header field name: {h!r}")
    if "from" not in (h.lower() for h in headers):
        # RFC 6376 5.4: the From field MUST be signed.
        raise ConfigError(source, "dkim.headers", "must include From (RFC 6376 5.4)")
    return {
        "enabled": enabled,
        "domains": domains,  # None: every domain that has a key
        "selectors": selectors,  # domain -> [selector]; absent: every key of the domain
        "headers": headers,
        "oversign_from": _expect(source, table, "oversign_from", "dkim", bool, default=True),
        "key_dir": os.path.join(state_dir, "dkim"),
    }


def _policy_value(source, key, value, allowed):
    if value not in allowed:
        raise ConfigError(source, key, f"must be one of {', '.join(repr(a) for a in allowed)}, not {value!r}")
    return value


def _authentication(source, data):
    """The [authentication] table: inbound SPF/DKIM/DMARC checks and what their outcome does."""
    table = _table(source, data, "authentication")
    _unknown_keys(source, table, "authentication", AUTHENTICATION_KEYS)
    timeout = table.get("timeout", AUTHENTICATION_DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(source, "authentication.timeout", f"must be a positive number of seconds, not {timeout!r}")
    junk = _expect(source, table, "junk_folder", "authentication", str, default="Junk")
    if not junk or any(not c.isprintable() for c in junk):
        raise ConfigError(source, "authentication.junk_folder", f"not a folder name: {junk!r}")
    policy = {}
    for name, (allowed, default) in AUTHENTICATION_POLICY.items():
        value = _expect(source, table, name, "authentication", str, default=default)
        policy[name] = _policy_value(source, f"authentication.{name}", value, allowed)
    domains_table = table.get("domains", {})
    if not isinstance(domains_table, dict):
        raise ConfigError(source, "authentication.domains", 'must be a table: { "example.org" = { dmarc_reject = "quarantine" } }')
    domains = {}
    for domain, overrides in domains_table.items():
        key = f"authentication.domains.{domain}"
        if not isinstance(overrides, dict):
            raise ConfigError(source, key, "must be a table of policy keys")
        checked = {}
        check_keys(source, key, overrides, tuple(AUTHENTICATION_POLICY))
        for name, value in overrides.items():
            if not isinstance(value, str):
                raise ConfigError(source, f"{key}.{name}", f"must be a string, not {value!r}")
            checked[name] = _policy_value(source, f"{key}.{name}", value, AUTHENTICATION_POLICY[name][0])
        domains[_domain_name(source, key, domain)] = checked
    return {
        "verify": _expect(source, table, "verify", "authentication", bool, default=True),
        "timeout": timeout,
        "junk_folder": junk,
        "policy": policy,  # the defaults for every recipient domain
        "domains": domains,  # recipient domain -> the policy keys it overrides
    }


SIEVE_KEYS = ("enabled", "home", "max_scripts", "max_script_bytes", "before", "after", "global_dir")


def _sieve(source, data, state_dir, cwd):
    """The [sieve] table: where users' scripts live (Pigeonhole's layout) and their quota."""
    table = _table(source, data, "sieve")
    _unknown_keys(source, table, "sieve", SIEVE_KEYS)
    home = _expect(source, table, "home", "sieve", str, default=os.path.join(state_dir, "home", "%d", "%n"))
    if "%n" not in home and "%u" not in home:
        raise ConfigError(source, "sieve.home", f"must name the user with %n or %u (one home each), not {home!r}")
    limits = {}
    for key, default in (("max_scripts", 32), ("max_script_bytes", 1024 * 1024)):
        value = _expect(source, table, key, "sieve", int, default=default)
        if isinstance(value, bool) or value <= 0:
            raise ConfigError(source, f"sieve.{key}", f"must be a positive number, not {value!r}")
        limits[key] = value
    chain = {}
    for key in ("before", "after"):
        # Scripts every user's mail goes through, before and after their own (Pigeonhole's sieve_before/after).
        value = table.get(key, [])
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not all(isinstance(v, str) and v for v in paths):
            raise ConfigError(source, f"sieve.{key}", f"must be a script file or a list of them, not {value!r}")
        chain[key] = [_absolute(v, cwd) for v in paths]
    global_dir = _expect(source, table, "global_dir", "sieve", str, default=os.path.join(state_dir, "sieve-global"))
    return {"enabled": _expect(source, table, "enabled", "sieve", bool, default=True), "home": _absolute(home, cwd),
            "global_dir": _absolute(global_dir, cwd), **chain, **limits}


QUOTA_KEYS = ("storage", "messages", "warning_percent")


def _quota(source, data):
    """The [quota] table: default limits (docs/operating.md, Quotas)."""
    from mailplat.quota.rules import QuotaRuleError, settings

    table = _table(source, data, "quota")
    _unknown_keys(source, table, "quota", QUOTA_KEYS)
    try:
        return settings(table)
    except QuotaRuleError as e:
        key, _, problem = str(e).partition(": ")
        raise ConfigError(source, f"quota.{key}", problem)
