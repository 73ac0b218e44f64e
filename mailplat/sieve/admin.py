"""
`mailplat sieve list|put|get|activate|check USER [FILE]`: a user's Sieve
scripts from the command line, in the same place ManageSieve keeps them
(L{mailplat.sieve.storage}).

    mailplat sieve list alice@example.org             # names, the active one marked
    mailplat sieve put alice@example.org rules.sieve  # checked, stored as "rules"
    mailplat sieve activate alice@example.org rules   # "" deactivates
    mailplat sieve get alice@example.org [rules]      # the script (default: the active one)
    mailplat sieve check alice@example.org rules.sieve
"""

import os
import sys

from mailplat.sieve import SieveSyntaxError
from mailplat.sieve.filter import SieveFilter
from mailplat.sieve.storage import ScriptError, ScriptStore


def add_parser(sub):
    sieve = sub.add_parser("sieve", help="a user's Sieve scripts: list, put, get, activate, check")
    actions = sieve.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "the user's scripts; the active one marked"),
        ("put", "check FILE and store it as the script named after it (or --name)"),
        ("get", "print a script (default: the active one)"),
        ("activate", "make the script named FILE the active one (\"\" for none)"),
        ("check", "check FILE and say where it is wrong"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("user")
        if name != "list":
            action.add_argument("file", nargs="?" if name == "get" else None)
        if name == "put":
            action.add_argument("--name", help="the script's name (default: FILE's name without .sieve)")
    return sieve


def run(config, args):
    user = args.user.strip().lower()
    store = ScriptStore(SieveFilter(config.sieve["home"]).home(user), config.sieve["max_scripts"], config.sieve["max_script_bytes"])
    try:
        if args.action == "list":
            for name, active in store.listing():
                print(f"{name}{'  (active)' if active else ''}")
            return 0
        if args.action == "get":
            name = args.file or store.active()
            if name is None:
                raise ScriptError("no script is active")
            sys.stdout.write(store.get(name).decode("utf-8", "replace"))
            return 0
        if args.action == "activate":
            store.activate(args.file)
            print(f"{user}: {'no script active' if not args.file else args.file + ' is active'}")
            return 0
        with open(args.file, "rb") as f:
            data = f.read()
        if args.action == "check":
            store.check(data)
            print(f"{args.file}: OK")
            return 0
        name = args.name or os.path.basename(args.file).removesuffix(".sieve")
        store.put(name, data)
        print(f"{user}: stored {name}")
        return 0
    except SieveSyntaxError as e:
        print(f"mailplat: {args.file}: {e}", file=sys.stderr)
        return 1
    except ScriptError as e:
        print(f"mailplat: {e.text}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mailplat: {e.filename or args.file}: {e.strerror}", file=sys.stderr)
        return 1
