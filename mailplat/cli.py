"""
`mailplat`: the administration command.

    mailplat [--config FILE] check-config
    mailplat [--config FILE] user add|passwd|del ADDRESS
    mailplat [--config FILE] user list
    mailplat [--config FILE] plugins

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
    """The value of an already-fired Deferred (file-based backends answer at once)."""
    box = []
    deferred.addBoth(box.append)
    if not box:
        raise SystemExit("mailplat: the realm backend did not answer synchronously")
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def cmd_check_config(config, args):
    from mailplat import tls
    from mailplat.service import Backends

    backends = Backends(config)
    problems = getattr(backends.realm, "problems", lambda: [])()
    for problem in problems:
        print(f"warning: {problem}")
    import os

    if os.path.exists(config.tls_certificate) or not config.tls_create:
        tls.context_factory(config)
    _check_endpoints(config)
    print(f"{config.source}: OK")
    for name, endpoint in config.listen.items():
        print(f"  {name:<11} {endpoint}")
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
    from mailplat.realm import passwords

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
        if args.action == "add":
            realm.add_user(address, passwords.hash_password(_read_password()))
            print(f"added {address}")
        elif args.action == "passwd":
            if _result(realm.lookup(address)) is None:
                raise SystemExit(f"mailplat: no such user: {address}")
            realm.set_password(address, passwords.hash_password(_read_password()))
            print(f"password changed for {address}")
        elif args.action == "del":
            realm.delete_user(address)
            print(f"deleted {address} (their mail is left in place)")
    except MailplatError as e:
        raise SystemExit(f"mailplat: {e}")
    return 0


def cmd_plugins(config, args):
    from mailplat import plugin

    for kind in plugin.KINDS:
        for name, p in sorted(plugin.available(kind).items()):
            print(f"{kind:<9} {name:<14} {getattr(p, 'module', '?'):<28} {p.description}")
    return 0


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
    sub.add_parser("plugins", help="list the backend plugins found")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        config = configuration.load(args.config)
        handler = {"check-config": cmd_check_config, "user": cmd_user, "plugins": cmd_plugins}[args.command]
        return handler(config, args)
    except configuration.ConfigError as e:
        print(f"mailplat: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
