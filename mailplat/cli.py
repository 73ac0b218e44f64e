"""
`mailplat`: the administration command.

    mailplat [--config FILE] check-config
    mailplat [--config FILE] user add|passwd|del ADDRESS
    mailplat [--config FILE] user list
    mailplat [--config FILE] quota show|recalc ADDRESS
    mailplat [--config FILE] plugins [--describe NAME]
    mailplat new-plugin realm|delivery|check NAME [--dir D]
    mailplat [--config FILE] sql-schema [--dialect sqlite|postgresql]
    mailplat [--config FILE] queue list|flush
    mailplat [--config FILE] queue delete|bounce ID
    mailplat [--config FILE] lockout list
    mailplat [--config FILE] lockout clear ADDRESS|NETWORK
    mailplat [--config FILE] dkim keygen DOMAIN [--selector S] [--algorithm rsa|ed25519]
    mailplat [--config FILE] dkim list
    mailplat [--config FILE] dns-records DOMAIN [--address IP]... [--mta-sts-mode testing|enforce] [--mta-sts-policy]
    mailplat [--config FILE] dns-check DOMAIN [--address IP]...
    mailplat [--config FILE] migrate --from maildir|mbox|sql --to sql|maildir USER|--all [--dsn DSN] [--path T]
    mailplat quickstart DOMAIN [--dir D] [--hostname H] [--state-dir S] [--user U] [--address IP]...

Passwords come from a prompt, or from standard input when it is not a
terminal (one line), and are stored hashed with ARGON2ID.
"""

import argparse
import getpass
import sys

from mailplat import config as configuration
from mailplat.interfaces import IRealmAdmin, MailplatError


def _read_password(prompt_twice=True):
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if prompt_twice and getpass.getpass("Again: ") != password:
            raise SystemExit("mailplat: passwords do not match")
    if not password:
        raise SystemExit("mailplat: empty password refused")
    return password


def _realm(config):
    from mailplat.service import Backends

    backends = Backends(config)
    return backends.realm


def _result(deferred):
    """
    The value of a Deferred: at once when it has fired (file backends), else
    after running the reactor until it does (database backends). The
    reactor runs at most once per process, so a command does all its
    asynchronous work in one Deferred (see cmd_user).
    """
    from twisted.internet import defer

    deferred = defer.maybeDeferred(lambda: deferred)
    box = []
    deferred.addBoth(box.append)
    if not box:
        from twisted.internet import reactor

        deferred.addBoth(lambda _: reactor.stop())
        reactor.run(installSignalHandlers=False)
    if not box:
        raise SystemExit("mailplat: the realm backend did not answer")
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def cmd_check_config(config, args):
    from mailplat import tls
    from mailplat.service import Backends

    configuration.require_service(config)
    backends = Backends(config)
    # Any backend (realm, store, delivery agent, check) may have warnings.
    for backend in [backends.realm, backends.store, backends.delivery, getattr(backends, "relay", None)] + [
            e.check for e in getattr(backends, "checks", [])]:
        for problem in getattr(backend, "problems", lambda: [])():
            print(f"warning: {problem}")
    for problem in getattr(backends, "plugin_problems", []):
        print(f"warning: {problem} (not selected; the server starts without it)")
    if tls.will_create(config):
        tls.check_creatable(config)
    else:
        tls.context_factory(config)
    _check_endpoints(config)
    from mailplat import privileges

    for problem in privileges.problems(config):
        print(f"warning: {problem}")
    print(f"{config.source}: OK")
    for name, endpoint in config.listen.items():
        print(f"  {name:<11} {endpoint}")
    for enabled in getattr(backends, "checks", []):
        print(f"  check       {enabled.name}")
    keys, key_problems = backends.dkim.store.keys()
    for key in keys:
        if any(k.path == key.path for k in backends.dkim.keys_for(key.domain)):
            print(f"  dkim        {key.domain} {key.selector} ({key.algorithm})")
    for problem in key_problems:
        print(f"warning: DKIM key not used: {problem}")
    return 0


def _check_endpoints(config):
    """Parse each [listen] endpoint as the server will, without listening."""
    from twisted.internet import endpoints, reactor

    for name, endpoint in config.listen.items():
        try:
            endpoints.serverFromString(reactor, endpoint)
        except (ValueError, TypeError, KeyError) as e:
            raise configuration.ConfigError(config.source, f"listen.{name}", f"bad endpoint {endpoint!r}: {e}")


def cmd_user(config, args):
    realm = _realm(config)
    if args.action == "list":
        for address in _result(realm.list_users()):
            print(address)
        return 0
    if not IRealmAdmin.providedBy(realm):
        raise SystemExit(f"mailplat: realm backend {config.realm['backend']!r} cannot manage users")
    address = args.address.strip().lower()
    if address.count("@") != 1 or not all(address.split("@")):
        raise SystemExit(f"mailplat: {args.address!r} is not an address (user@domain)")
    domain = address.split("@")[1]
    if args.action in ("add", "passwd") and not config.is_local_domain(domain):
        raise SystemExit(
            f"mailplat: {domain} is not a local domain; add it to [domains] local in {config.source}"
        )
    try:
        _result(_user_action(realm, args.action, address))
    except (MailplatError, _Refused) as e:
        raise SystemExit(f"mailplat: {e}")
    return 0


class _Refused(Exception):
    """A user command that cannot be done; the message says why."""


def _user_action(realm, action, address):
    """
    add / passwd / del as one Deferred, so a database realm needs a single
    reactor run (see L{_result}) and a file realm none.
    """
    from twisted.internet import defer

    from mailplat.realm import passwords

    @defer.inlineCallbacks
    def run():
        if action == "passwd":
            user = yield realm.lookup(address)
            if user is None:
                raise _Refused(f"no such user: {address}")
        if action == "add":
            yield realm.add_user(address, passwords.hash_password(_read_password()))
            print(f"added {address}")
        elif action == "passwd":
            yield realm.set_password(address, passwords.hash_password(_read_password()))
            print(f"password changed for {address}")
        elif action == "del":
            yield realm.delete_user(address)
            print(f"deleted {address} (their mail is left in place)")

    return run()


def cmd_sieve(config, args):
    """`sieve list|put|get|activate|check USER [FILE]` (mailplat.sieve.admin)."""
    from mailplat.sieve import admin

    return admin.run(config, args)


def cmd_quota(config, args):
    """`quota show|recalc ADDRESS`: a user's limits and usage (docs/operating.md, Quotas)."""
    from twisted.internet import defer

    from mailplat.service import Backends

    backends = Backends(config)
    store = backends.store
    if not hasattr(store, "recalculate"):
        raise SystemExit(f"mailplat: store {config.store['backend']!r} keeps no quota")
    address = args.address.strip().lower()

    @defer.inlineCallbacks
    def run():
        user = yield defer.maybeDeferred(backends.realm.lookup, address)
        if user is None:
            raise _Refused(f"no such user: {address}")
        if args.action == "recalc":
            report = yield store.recalculate(user)
        else:
            report = yield store.quota(user)
        return user, report

    try:
        user, report = _result(run())
    except (MailplatError, _Refused) as e:
        raise SystemExit(f"mailplat: {e}")
    print(user + (" (recounted)" if args.action == "recalc" else ""))
    for name, used, limit in (("storage", report.storage, report.storage_limit),
                              ("messages", report.messages, report.messages_limit)):
        shown = f"{used} octets" if name == "storage" else str(used)
        if limit:
            print(f"  {name:9} {shown} of {limit} ({used * 100 // limit}%)")
        else:
            print(f"  {name:9} no limit" + (f" ({shown} counted)" if args.action == "recalc" else ""))
    return 0


def cmd_plugins(config, args):
    from mailplat import plugin

    found, problems = plugin.scan()
    describe = getattr(args, "describe", None)
    if describe:
        chosen = [p for p in found if p.name == describe]
        for p in chosen:
            print("\n".join(plugin.describe(p)))
        for problem in problems:
            if problem.name == describe:
                print(f"BROKEN {problem}")
        if not chosen:
            if not any(problem.name == describe for problem in problems):
                print(f"mailplat: no plugin named {describe!r}; `mailplat plugins` lists them", file=sys.stderr)
            return 1
        return 0
    for kind in plugin.KINDS:
        factory_iface = plugin.KINDS[kind][0]
        for p in sorted((p for p in found if factory_iface.providedBy(p)), key=lambda p: p.name):
            print(f"{kind:<9} {p.name:<14} {getattr(p, 'module', '?'):<28} {p.description}")
    for problem in problems:
        print(f"{'BROKEN':<9} {problem.name or '-':<14} {problem.module:<28} {problem.reason}")
    # A script (or CI) running `mailplat plugins` learns of a broken one.
    return 1 if problems else 0


def cmd_quickstart(args):
    """A commented production config, a DKIM key, postmaster@DOMAIN, and the next steps (mailplat.quickstart)."""
    from mailplat import quickstart

    try:
        quickstart.run(args.domain, directory=args.dir, hostname=args.hostname, state_dir=args.state_dir,
                       user=args.user, addresses=args.address or ())
    except (quickstart.QuickstartError, configuration.ConfigError, MailplatError, ValueError) as e:
        print(f"mailplat: quickstart: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mailplat: quickstart: cannot write {e.filename or args.dir}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


def cmd_new_plugin(args):
    from mailplat import skeleton

    try:
        written = skeleton.write(args.kind, args.name, args.dir or ".")
    except (ValueError, OSError) as e:
        print(f"mailplat: new-plugin: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def cmd_sql_schema(config, args):
    """Print the DDL of the sql realm, for an operator who creates tables by hand."""
    from mailplat.realm import sql

    dialect = args.dialect
    if dialect is None:
        dsn = config.realm.get("dsn") if config.realm.get("backend") == "sql" else None
        dialect = "postgresql" if dsn else "sqlite"
    print(sql.schema(dialect), end="")
    return 0


def _age(seconds):
    """12s, 4m10s, 5h12m, 2d3h."""
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _queue_records(config, control):
    """The queued records: the spool's files, or the sql queue's table (`[relay] queue = "sql"`)."""
    relay = config.relay or {}
    if relay.get("queue") != "sql":
        return control.records()
    from mailplat.delivery.relay.sqlqueue import list_records

    own = (config.raw.get("relay") or {}).get("sql") or {}
    dsn = own.get("dsn") or (config.store.get("dsn") if config.store.get("backend") == "sql" else None)
    if not dsn:
        raise SystemExit("mailplat: relay.sql.dsn: the queue's PostgreSQL database is not configured")
    try:
        return list_records(dsn)
    except Exception as e:
        raise SystemExit(f"mailplat: cannot read the sql relay queue: {type(e).__name__}: {e}")


def cmd_queue(config, args):
    """The relay queue: list it, or ask the running server to act (see docs/relay.md)."""
    import time

    from mailplat.delivery.relay.control import QueueControl

    control = QueueControl(config.state_dir)
    if args.action == "list":
        records = _queue_records(config, control)
        now = time.time()
        for record in records:
            sender = record["sender"] or "<>"
            kind = " (DSN)" if record.get("dsn") else ""
            print(f"{record['id']}  {_age(now - record['created']):>5}  {record['size']:>9}  {sender}{kind}")
            for r in record["recipients"]:
                line = f"    {r['address']}  {r['state']}"
                if r["attempts"]:
                    line += f"  attempts={r['attempts']}"
                if r["state"] in ("queued", "deferred") and r["next"] > now:
                    line += f"  next in {_age(r['next'] - now)}"
                if r["error"]:
                    line += f"  last error: {r['error']}"
                print(line)
        print(f"{len(records)} message(s) in the queue" + (" (server running)" if control.server_running() else ""))
        return 0
    if args.action in ("delete", "bounce") and not args.id:
        raise SystemExit(f"mailplat: queue {args.action} needs a queue ID (see `mailplat queue list`)")
    ok, message = control.command(args.action, getattr(args, "id", None))
    print(message if ok else f"mailplat: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_lockout(config, args):
    """Failed-login lockouts of the running server: list, clear (docs/operating.md)."""
    from mailplat import control

    try:
        if args.action == "list":
            ok, message, rows = control.ask(config.state_dir, "lockout.list")
        else:
            ok, message, rows = control.ask(config.state_dir, "lockout.clear", address=args.address)
    except control.NotRunning as e:
        print(f"mailplat: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mailplat: cannot reach the server on {control.socket_path(config.state_dir)}: {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"mailplat: {message}", file=sys.stderr)
        return 1
    if args.action == "list":
        if rows:
            print(f"{'ADDRESS':<40} {'FAILURES':>8}  {'STATE':<7} {'FREE IN':>7}  USERS TRIED")
        for row in rows:
            state = "locked" if row["locked"] else "failing"
            failures = f"{row['failures']}/{row['limit']}"
            print(f"{row['address']:<40} {failures:>8}  {state:<7} {_age(row['seconds']):>7}  {','.join(row['users'])}")
    print(message)
    return 0


def cmd_dkim(config, args):
    """DKIM keys under state_dir/dkim (docs/authentication.md)."""
    from mailplat.auth.dkim_keys import DKIMKeyError, KeyStore, default_selector
    from mailplat.auth.dkim_sign import DKIMSigner

    store = KeyStore(config.dkim["key_dir"])
    if args.action == "keygen":
        selector = args.selector or default_selector(args.algorithm)
        try:
            key = store.create(args.domain, selector, args.algorithm, force=args.force)
        except DKIMKeyError as e:
            raise SystemExit(f"mailplat: {e}")
        print(f"; {key.algorithm} key for {key.domain}, selector {key.selector}: {key.path}")
        print("; publish this TXT record in the domain's DNS zone:")
        print(key.txt_record())
        if not DKIMSigner(config.dkim).keys_for(key.domain):
            print(f"; note: [dkim] in {config.source} does not sign for {key.domain} with this key", file=sys.stderr)
        return 0
    keys, problems = store.keys()
    signer = DKIMSigner(config.dkim)
    for key in keys:
        signing = "signing" if any(k.path == key.path for k in signer.keys_for(key.domain)) else "not signing"
        print(f"{key.domain:<24} {key.selector:<18} {key.algorithm:<8} {signing:<12} {key.record_name}")
    for problem in problems:
        print(f"BROKEN {problem}")
    print(f"{len(keys)} key(s) in {store.directory}")
    return 1 if problems else 0


def _plan(config, args):
    from mailplat.auth.dkim_keys import DKIMKeyError
    from mailplat.auth.records import Plan

    try:
        return Plan.for_domain(config, args.domain, args.address or (), getattr(args, "mta_sts_mode", "testing"))
    except (DKIMKeyError, ValueError) as e:
        raise SystemExit(f"mailplat: {e}")


def cmd_dns_records(config, args):
    """Every DNS record the domain needs, as zone-file lines (docs/authentication.md)."""
    from mailplat.auth.records import zone_text

    plan = _plan(config, args)
    print(plan.policy if args.mta_sts_policy else zone_text(plan), end="")
    return 0


def cmd_dns_check(config, args):
    """Look each record of dns-records up through [dns]; 0 when every required one is right."""
    from twisted.internet import defer

    from mailplat.auth import records
    from mailplat.auth.lookups import Lookups
    from mailplat.dns import SharedResolver

    plan = _plan(config, args)
    resolver = SharedResolver(config.dns)

    @defer.inlineCallbacks
    def run():
        # No query starts after [dns] timeout: a name server that is down costs
        # about one timeout (a query started just before it may take another).
        lookups = Lookups(resolver, deadline=resolver.timeout)
        try:
            findings = yield records.check(plan, lookups)
        finally:
            yield resolver.close()
        return findings

    findings = _result(run())
    for line in records.report(plan, findings):
        print(line)
    return 0 if records.passed(findings) else 1


def cmd_migrate(config, args):
    """`migrate --from K --to K USER|--all`: mail to another store, UIDs kept (mailplat/store/migration)."""
    from mailplat.store.migration import command

    return command.command(config, args)


def cmd_lists(config, args):
    """The users' allow and block lists (docs/lists.md)."""
    from mailplat.spam import lists_cli

    return lists_cli.run(config, args)


def parser():
    p = argparse.ArgumentParser(prog="mailplat", description="Administer a mailplat server.")
    p.add_argument("--config", "-c", help="TOML configuration file (default: embedded defaults)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check-config", help="check the configuration and exit")
    user = sub.add_parser("user", help="manage users")
    actions = user.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a user"), ("passwd", "change a password"), ("del", "remove a user")):
        actions.add_parser(action, help=text).add_argument("address")
    actions.add_parser("list", help="list users")
    quota = sub.add_parser("quota", help="a user's quota: show limits and usage, or recount the usage")
    quota_actions = quota.add_subparsers(dest="action", required=True)
    quota_actions.add_parser("show", help="limits and usage").add_argument("address")
    quota_actions.add_parser("recalc", help="recount the usage from the folders").add_argument("address")
    plugins = sub.add_parser("plugins", help="list the backend plugins found, and the broken ones (exit 1 if any)")
    plugins.add_argument("--describe", metavar="NAME", help="print what plugin NAME is and the keys of its table")
    qs = sub.add_parser("quickstart", help="write a production config for DOMAIN, add postmaster@DOMAIN, print the next steps")
    qs.add_argument("domain")
    qs.add_argument("--dir", default="/etc/mailplat", help="where to write mailplat.toml (default /etc/mailplat)")
    qs.add_argument("--hostname", help="the server's host name (default mail.DOMAIN)")
    qs.add_argument("--state-dir", default="/var/lib/mailplat", help="state_dir (default /var/lib/mailplat)")
    qs.add_argument("--user", default="mailplat", help="[server] user, the user it runs as (default mailplat)")
    qs.add_argument("--address", action="append", metavar="IP",
                    help="the server's public address, for the DNS records (repeat for IPv4 and IPv6)")
    new_plugin = sub.add_parser("new-plugin", help="write the skeleton of a plugin package: module, pyproject, test")
    new_plugin.add_argument("kind", choices=("realm", "delivery", "check"))
    new_plugin.add_argument("name", help="the name the config will use, e.g. myrealm")
    new_plugin.add_argument("--dir", help="where to write the package's folder (default: here)")
    schema = sub.add_parser("sql-schema", help="print the SQL tables of the sql realm")
    schema.add_argument("--dialect", choices=("sqlite", "postgresql"), help="default: from [realm]")
    queue = sub.add_parser("queue", help="the relay queue: list, flush, delete, bounce")
    qactions = queue.add_subparsers(dest="action", required=True)
    qactions.add_parser("list", help="list queued messages and their recipients")
    qactions.add_parser("flush", help="retry every waiting recipient now")
    qactions.add_parser("delete", help="remove a message without a DSN").add_argument("id")
    qactions.add_parser("bounce", help="give up on a message and send a DSN").add_argument("id")
    lockout = sub.add_parser("lockout", help="failed-login lockouts of the running server: list, clear")
    lactions = lockout.add_subparsers(dest="action", required=True)
    lactions.add_parser("list", help="addresses with failed logins: count, locked or not, time until free, users tried")
    lactions.add_parser("clear", help="forget an address's failed logins (IPv4, IPv6 or a network)").add_argument(
        "address", metavar="ADDRESS|NETWORK")
    dkim = sub.add_parser("dkim", help="DKIM signing keys: keygen, list")
    dactions = dkim.add_subparsers(dest="action", required=True)
    keygen = dactions.add_parser("keygen", help="make a key and print its DNS TXT record")
    keygen.add_argument("domain")
    keygen.add_argument("--selector", "-s", help="default: ALGORITHM-YYYYMM, e.g. rsa-202612")
    keygen.add_argument("--algorithm", "-a", choices=("rsa", "ed25519"), default="rsa",
                        help="rsa (2048 bits, RFC 6376) or ed25519 (RFC 8463); default rsa")
    keygen.add_argument("--force", action="store_true", help="replace an existing key of that selector")
    dactions.add_parser("list", help="list the keys and whether [dkim] signs with them")
    for name, text in (("dns-records", "print the DNS records a domain needs, as zone-file lines"),
                       ("dns-check", "look a domain's records up and say which are missing or wrong")):
        command = sub.add_parser(name, help=text)
        command.add_argument("domain")
        command.add_argument("--address", action="append", metavar="IP",
                             help="the server's public address (IPv4 or IPv6; repeat for both); "
                                  "default: the [listen] smtp interface when it is a public one")
    from mailplat.sieve import admin as sieve_admin

    sieve_admin.add_parser(sub)
    from mailplat.spam import lists_cli

    lists_cli.add_parser(sub)
    from mailplat.store.migration import command as migrate_cli

    migrate_cli.add_parser(sub)
    records = sub.choices["dns-records"]
    records.add_argument("--mta-sts-mode", choices=("testing", "enforce"), default="testing",
                         help="the MTA-STS policy mode (RFC 8461 5); start with testing")
    records.add_argument("--mta-sts-policy", action="store_true",
                         help="print only the MTA-STS policy file (.well-known/mta-sts.txt)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.command == "new-plugin":
        return cmd_new_plugin(args)  # needs no configuration
    if args.command == "quickstart":
        return cmd_quickstart(args)  # writes the configuration
    try:
        config = configuration.load(args.config)
        handler = {"check-config": cmd_check_config, "user": cmd_user, "quota": cmd_quota, "plugins": cmd_plugins, "queue": cmd_queue, "dkim": cmd_dkim,
                   "lockout": cmd_lockout,
                   "dns-records": cmd_dns_records, "dns-check": cmd_dns_check, "sieve": cmd_sieve,
                   "sql-schema": cmd_sql_schema, "lists": cmd_lists, "migrate": cmd_migrate}[
            args.command
        ]
        return handler(config, args)
    except configuration.ConfigError as e:
        print(f"mailplat: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
