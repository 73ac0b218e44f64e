"""
`mailplat quickstart DOMAIN`: a first production set-up in one command
(as mox's quickstart does): a commented config for the domain on the
standard ports, a DKIM key, `postmaster@DOMAIN` with a random password
printed once, and what to do next (the DNS records, the service user,
the systemd unit, a real certificate).

It refuses to overwrite a config that exists; the config it writes passes
`mailplat check-config` as written.
"""

import os
import secrets
import sys

from mailplat import config as configuration

DEFAULT_DIR = "/etc/mailplat"
DEFAULT_STATE_DIR = "/var/lib/mailplat"
DEFAULT_USER = "mailplat"
CONFIG_NAME = "mailplat.toml"

TEMPLATE = '''\
# mailplat configuration for {domain}, written by `mailplat quickstart {domain}`.
# Every key is described in docs/ (operating.md, authentication.md, relay.md, ...).
# Check a change with `mailplat --config {config} check-config`.

[server]
# The name this server gives in its SMTP greeting and EHLO, the MX of {domain},
# and the name on its certificate. Its A/AAAA record and the PTR of its address
# must agree with it (see the DNS records quickstart printed).
hostname = "{hostname}"
# Mail, users, certificates, DKIM keys and the relay queue live here.
state_dir = "{state_dir}"
# Bind the ports as root, then run as this user (state_dir is given to it).
# Under systemd with User={user} (etc/mailplat.service) it starts as that user.
user = "{user}"
# group = "{user}"          # default: the user's own group

[domains]
# The domains this server receives mail for. Add more here, then
# `mailplat dkim keygen DOMAIN` and `mailplat dns-records DOMAIN` for each.
local = ["{domain}"]

[listen]
# Twisted endpoint strings. tcp:port=N listens on every IPv4 address; for
# IPv6 and IPv4 together write "tcp6:port=N:interface=\\\\:\\\\:" instead (Linux).
smtp = "tcp:port=25"            # MX: mail from other servers (STARTTLS offered)
submission = "tcp:port=587"     # mail clients sending, STARTTLS then login
smtps = "tcp:port=465"          # mail clients sending, implicit TLS (RFC 8314)
imap = "tcp:port=143"           # IMAP, STARTTLS
imaps = "tcp:port=993"          # IMAP, implicit TLS
pop3 = "tcp:port=110"           # POP3, STLS
pop3s = "tcp:port=995"          # POP3, implicit TLS
# HTTP: client autoconfiguration (Thunderbird, Outlook, Apple) and ACME http-01.
http = "tcp:port=80"
# metrics = "tcp:port=9100:interface=127.0.0.1"   # Prometheus, keep it private

[tls]
# Until a real certificate is set, a self-signed one is made under state_dir/tls
# (clients will warn). A certificate from Let's Encrypt by ACME (http-01 is
# answered on [listen] http, port 80 must reach it):
# acme = {{ email = "postmaster@{domain}", directory = "https://acme-v02.api.letsencrypt.org/directory", domains = ["{hostname}"], challenge = "http-01" }}
# Or files you keep up to date yourself (readable by the user above):
# certificate = "/etc/letsencrypt/live/{hostname}/fullchain.pem"
# key = "/etc/letsencrypt/live/{hostname}/privkey.pem"

[realm]
# Users and password hashes, one per line: `mailplat user add ADDRESS`.
backend = "passwd-file"
path = "{state_dir}/users"

[store]
backend = "maildir"
path = "{state_dir}/mail/%d/%n"

[delivery]
local = "maildir"

[dkim]
# Submitted mail is signed with every key under state_dir/dkim for its domain
# (`mailplat dkim keygen DOMAIN`; publish the TXT record it prints).

[autoconfig]
# The host mail clients are told to connect to (default: [server] hostname).
# hostname = "{hostname}"

# [relay]
# Mail to other domains is sent straight to their MX by default. Through a
# smarthost instead (see docs/relay.md):
# smarthost = "smtp.provider.example:587"
'''


class QuickstartError(Exception):
    """Something quickstart will not do; the message says what to change."""


def _check_domain(domain):
    from mailplat.auth.dkim_keys import DKIMKeyError, check_name

    try:
        return check_name("domain", domain.strip().lower().rstrip("."))
    except DKIMKeyError as e:
        raise QuickstartError(str(e))


def write_config(domain, directory, hostname, state_dir, user):
    """Write directory/mailplat.toml (refused when it exists). @return: its path."""
    path = os.path.join(directory, CONFIG_NAME)
    if os.path.lexists(path):
        raise QuickstartError(f"{path} exists already; quickstart does not overwrite a config "
                              "(move it away, or give another --dir)")
    os.makedirs(directory, exist_ok=True)
    text = TEMPLATE.format(domain=domain, hostname=hostname, state_dir=state_dir, user=user, config=path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def run(domain, directory=DEFAULT_DIR, hostname=None, state_dir=DEFAULT_STATE_DIR, user=DEFAULT_USER,
        addresses=(), out=None):
    """
    The whole quickstart; prints the next steps to `out`.

    @return: (config path, postmaster address, password).
    @raise QuickstartError: a config that exists, a bad domain.
    """
    from mailplat.auth.dkim_keys import KeyStore, default_selector
    from mailplat.auth.records import Plan, zone_text
    from mailplat.realm import passwords
    from mailplat.realm.passwdfile import PasswdFileRealm

    domain = _check_domain(domain)
    hostname = (hostname or f"mail.{domain}").strip().lower().rstrip(".")
    if not hostname or any(c.isspace() or c in "/@:\"" for c in hostname):
        raise QuickstartError(f"--hostname: not a host name: {hostname!r}")
    directory = os.path.abspath(directory)
    state_dir = os.path.abspath(state_dir)
    if any(c in '"\\' for c in state_dir + user) or not user:
        raise QuickstartError("--state-dir and --user must not contain quotes or backslashes")
    path = write_config(domain, directory, hostname, state_dir, user)
    config = configuration.load(path)

    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    # A state_dir kept from an earlier set-up keeps its key and postmaster.
    store = KeyStore(config.dkim["key_dir"])
    kept, _ = store.keys(domain)
    key = kept[0] if kept else store.create(domain, default_selector("rsa"), "rsa")
    postmaster = f"postmaster@{domain}"
    realm = PasswdFileRealm(config.realm["path"])
    password = None
    found = []
    realm.lookup(postmaster).addBoth(found.append)  # a file realm answers at once
    if hasattr(found[0], "raiseException"):
        found[0].raiseException()
    if found[0] is None:
        password = secrets.token_urlsafe(15)
        realm.add_user(postmaster, passwords.hash_password(password))
    owner = _give_to_user(config, user)

    plan = Plan.for_domain(config, domain, addresses)
    w = (out or sys.stdout).write
    w(f"Wrote {path} for {domain} (mail server {hostname}).\n")
    w(f"{'Kept' if kept else 'Made'} the DKIM key {key.path} (selector {key.selector}).\n")
    if password is not None:
        w(f"Added {postmaster}; its password, shown only this once:\n\n    {password}\n\n")
    else:
        w(f"{postmaster} exists already in {config.realm['path']}; its password is unchanged\n"
          f"(`mailplat --config {path} user passwd {postmaster}` sets a new one).\n\n")
    w("Next steps:\n\n")
    step = 1
    if owner is None:
        w(f"{step}. Create the user the server runs as, and give it {config.state_dir}:\n\n"
          f"    useradd --system --home-dir {config.state_dir} --shell /usr/sbin/nologin {user}\n"
          f"    chown -R {user}: {config.state_dir}\n\n")
        step += 1
    w(f"{step}. Publish these DNS records (check them later with `mailplat --config {path} dns-check {domain}`):\n\n")
    w("".join(f"    {line}\n" if line else "\n" for line in zone_text(plan).splitlines()))
    w(f"\n   For client autoconfiguration, also: autoconfig.{domain} and autodiscover.{domain}\n"
      f"   as CNAMEs of {hostname} (Thunderbird, Outlook; port 80 must reach [listen] http).\n\n")
    step += 1
    w(f"{step}. Get a real certificate: uncomment `acme` in [tls] of {path} (Let's Encrypt, http-01 on\n"
      "   port 80), or point certificate/key at files you renew. Until then clients see a self-signed one.\n\n")
    step += 1
    w(f"{step}. Run it under systemd (docs/operating.md, \"Running as a service\"): copy etc/mailplat.service\n"
      "   from the mailplat sources to /etc/systemd/system/, set the virtualenv's path in ExecStart and\n"
      f"   ExecStartPre, keep --config {path}, then:\n\n"
      "    systemctl daemon-reload && systemctl enable --now mailplat\n"
      "    journalctl -u mailplat -f\n\n")
    step += 1
    w(f"{step}. Set up a mail client with {postmaster} and its password: it finds the servers by\n"
      f"   itself (autoconfig), or use {hostname}, IMAP 993 (TLS) and SMTP 465 (TLS), login = the address.\n"
      f"   Add users with `mailplat --config {path} user add ADDRESS`.\n")
    return path, postmaster, password


def _give_to_user(config, user):
    """Run as root with the user created already: state_dir becomes the user's. @return: the RunAs, or None."""
    import pwd

    from mailplat import privileges

    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    run_as = privileges.RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, str(pw.pw_gid), [])
    privileges.prepare(config, run_as)
    return run_as
