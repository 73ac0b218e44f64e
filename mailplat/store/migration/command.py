"""
`mailplat migrate --from maildir|mbox|sql --to sql|maildir USER|--all`:
copy users' mail to another store keeping UIDVALIDITY, UIDNEXT, UIDs,
flags, keywords, internal dates and subscriptions (docs/store-sql.md,
"Migration").

Where each side's settings come from: the side that is the configured
store (`[store] backend`) uses `[store]`; the other side is named by
options, `--dsn` for sql, `--path` (and `--inbox` for mbox) for a path
template as `[store] path` takes it. Users are checked against the
configured realm; `--all` takes every user the realm lists.

A user whose mail is already in the target is refused (exit status 1
for one user; skipped and listed with --all), so running a migration
again changes nothing.
"""

import os
import sys

from twisted.internet import defer, threads

from mailplat import plugin
from mailplat.interfaces import BackendContext, MailplatError
from mailplat.store.migration import maildir_target, sql_target
from mailplat.store.migration.snapshot import AlreadyMigrated, MigrationError, NoSuchAccount, read_account

SOURCES = ("maildir", "mbox", "sql")
TARGETS = ("maildir", "sql")


class UsageError(Exception):
    """A command line that names no usable store; the text says what to add."""


def add_parser(sub):
    p = sub.add_parser(
        "migrate",
        help="copy users' mail to another store keeping UIDs, UIDVALIDITY, flags and keywords (docs/store-sql.md)",
        description="The side that is [store] backend uses [store]; the other side comes from --dsn (sql) "
        "or --path/--inbox (maildir, mbox). A user whose mail is already in the target is refused.",
    )
    p.add_argument("--from", dest="source", choices=SOURCES, required=True, help="the store the mail is in")
    p.add_argument("--to", dest="target", choices=TARGETS, required=True, help="the store to copy it to")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("user", nargs="?", help="the user's address")
    who.add_argument("--all", action="store_true", help="every user the realm lists")
    p.add_argument("--dsn", help="the sql side's database when [store] is not sql (postgresql://user@host/db)")
    p.add_argument("--path", help="the maildir or mbox side's path template when [store] is not it ('var/mail/%%d/%%n')")
    p.add_argument("--inbox", help="the mbox side's INBOX file template (as [store] inbox)")
    return p


def _section(config, kind, args):
    """The settings of one side: [store] when it is the configured store, else the options."""
    if config.store.get("backend") == kind:
        return config.store
    if kind == "sql":
        if not args.dsn:
            raise UsageError(f"[store] backend is {config.store.get('backend')!r}: name the sql side with --dsn")
        return {"backend": "sql", "dsn": args.dsn, "listen": False, "pool_size": 4}
    if not args.path:
        raise UsageError(f"[store] backend is {config.store.get('backend')!r}: name the {kind} side with --path")
    section = {"backend": kind, "path": args.path}
    if kind == "mbox" and args.inbox:
        section["inbox"] = args.inbox
    return section


def open_stores(config, args):
    """(realm, source store, target store), built by their plugins."""
    if args.source == args.target:
        raise UsageError("--from and --to name the same store")
    sections = {kind: _section(config, kind, args) for kind in (args.source, args.target)}
    if sections[args.source] is not config.store and sections[args.target] is not config.store:
        if "path" in sections[args.source] and "path" in sections[args.target]:
            raise UsageError("one --path can't name both sides: make one of them the [store] of the configuration")
    context = BackendContext(config)
    context.realm = plugin.build("realm", config.realm["backend"], config.realm, context)
    stores = {kind: plugin.build("store", kind, section, context) for kind, section in sections.items()}
    return context.realm, stores[args.source], stores[args.target]


# --- one user ----------------------------------------------------------------------


def _kind(store):
    from mailplat.store.maildir import MaildirStore
    from mailplat.store.sql import SQLStore

    if isinstance(store, SQLStore):
        return "sql"
    if isinstance(store, MaildirStore):
        return "maildir"
    return "mbox"


def open_source(store, address):
    """Deferred IMailAccount of `address` in the source; fails with NoSuchAccount, never making one."""
    kind = _kind(store)
    if kind == "sql":
        return sql_target.check_source(store, address).addCallback(lambda _: store.account(address))
    try:
        root = store.user_root(address)
    except MailplatError as e:
        return defer.fail(MigrationError(f"{address}: {e}"))

    def opened(_):
        if kind == "maildir":
            # Not store.account(): that would add the special-use folders to the source.
            from mailplat.store.maildir.account import MaildirAccount

            return MaildirAccount(store, address, root)
        return store.account(address)

    return threads.deferToThread(_exists, root, address, kind).addCallback(opened)


def _exists(root, address, kind):
    if not os.path.isdir(root):
        raise NoSuchAccount(f"{address}: no mail in the {kind} store")


def target_count(store, address):
    """Deferred number of messages the target holds for `address` (None: no account there)."""
    if _kind(store) == "sql":
        return store.db.run("looking up an account", sql_target.message_count, address)
    return threads.deferToThread(maildir_target.message_count, store.user_root(address))


def write_target(store, snapshot):
    if _kind(store) == "sql":
        return sql_target.write(store, snapshot)
    return maildir_target.write(store.user_root(snapshot.address), snapshot)


@defer.inlineCallbacks
def migrate_user(source, target, address):
    """Deferred (snapshot, warnings); fails with a L{MigrationError} saying why not."""
    count = yield target_count(target, address)
    if count:
        raise AlreadyMigrated(f"{address}: the {_kind(target)} store already holds {count} messages of this user; nothing changed")
    account = yield open_source(source, address)
    snapshot = yield read_account(account)
    warnings = yield write_target(target, snapshot)
    return snapshot, warnings


# --- the command ----------------------------------------------------------------------


@defer.inlineCallbacks
def run(realm, source, target, args, say):
    """Deferred exit status; `say(line)` prints."""
    if args.all:
        users = yield defer.maybeDeferred(realm.list_users)
    else:
        address = args.user.strip().lower()
        user = yield defer.maybeDeferred(realm.lookup, address)
        if user is None:
            say(f"mailplat: no such user: {address} (not in the realm)")
            return 1
        users = [user]
    failed = 0
    names = f"from {args.source} to {args.target}"
    for user in users:
        try:
            snapshot, warnings = yield migrate_user(source, target, user)
        except NoSuchAccount as e:
            if not args.all:
                say(f"mailplat: {e}")
                failed += 1
            else:
                say(f"{user}: nothing to migrate ({e})")
            continue
        except AlreadyMigrated as e:
            say(f"{'mailplat: ' if not args.all else ''}{e}" + (" (skipped)" if args.all else ""))
            if not args.all:
                failed += 1
            continue
        except (MigrationError, MailplatError, OSError) as e:
            say(f"mailplat: {user}: not migrated: {e}")
            failed += 1
            continue
        folders = len(snapshot.folders)
        say(f"{user}: {snapshot.message_count} messages in {folders} folder{'' if folders == 1 else 's'} copied {names}")
        for warning in warnings:
            say(f"  warning: {warning}")
    return 1 if failed else 0


def command(config, args):
    """The `migrate` handler of mailplat.cli."""
    from mailplat.cli import _result

    try:
        realm, source, target = open_stores(config, args)
    except (UsageError, plugin.PluginError, ValueError) as e:
        raise SystemExit(f"mailplat: migrate: {e}")

    def close(result):
        closing = [s.close() for s in (source, target) if _kind(s) == "sql"]
        return defer.gatherResults(closing).addBoth(lambda _: result)

    def say(line):
        # What went wrong on standard error, what was done on standard output.
        print(line, file=sys.stderr if line.startswith("mailplat:") else sys.stdout)

    d = run(realm, source, target, args, say).addBoth(close)
    try:
        return _result(d)
    except (MailplatError, MigrationError) as e:
        raise SystemExit(f"mailplat: migrate: {e}")
