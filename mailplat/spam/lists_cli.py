"""
`mailplat lists add|del|show USER allow|block PATTERN`: the users' allow
and block lists in state_dir/lists.json (mailplat.spam.lists,
docs/lists.md). USER `*` is the global lists. The running server sees a
change at the next message: nothing to reload.
"""

import sys

from mailplat.spam.lists import KINDS, ListError, SenderLists


def add_parser(sub):
    lists = sub.add_parser("lists", help="the users' allow and block lists of senders: add, del, show")
    actions = lists.add_subparsers(dest="action", required=True)
    for name, text in (("add", "put an address or domain on a user's allow or block list"),
                       ("del", "take an address or domain off a user's allow or block list"),
                       ("show", "print a user's lists (or one of them)")):
        action = actions.add_parser(name, help=text)
        action.add_argument("user", metavar="USER", help="the user's address, or * for the global lists")
        optional = name == "show"
        action.add_argument("kind", metavar="allow|block", choices=KINDS, nargs="?" if optional else None)
        if not optional:
            action.add_argument("pattern", metavar="PATTERN",
                                help="an address (boss@example.com) or a domain (example.com: its subdomains too)")
    return lists


def run(config, args):
    lists = SenderLists.in_state_dir(config.state_dir)
    try:
        if args.action == "show":
            shown = lists.show(args.user)
            for kind in [args.kind] if args.kind else KINDS:
                for pattern in shown[kind]:
                    print(f"{kind} {pattern}")
            return 0
        if args.action == "add":
            if lists.add(args.user, args.kind, args.pattern):
                print(f"{args.pattern} added to the {args.kind} list of {args.user}")
            else:
                print(f"{args.pattern} is already on the {args.kind} list of {args.user}")
            return 0
        if lists.remove(args.user, args.kind, args.pattern):
            print(f"{args.pattern} taken off the {args.kind} list of {args.user}")
            return 0
        print(f"mailplat: {args.pattern} is not on the {args.kind} list of {args.user}", file=sys.stderr)
        return 1
    except ListError as e:
        print(f"mailplat: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"mailplat: {lists.path}: {e}", file=sys.stderr)
        return 1
