"""
The account boundary (issue #17, item 1): a mailbox name is data from the
network, and no IMAP command may reach a place outside the logged-in
user's account with it. Logged in as alice, with bob, victim1, victim2,
carol of another domain and a user named `cur` on the same server, every
name of the table is tried with every command that names a mailbox, over
real IMAPS sockets, on maildir and on mbox; each must get a tagged NO
(never a traceback, never a path), and nothing outside alice's account
may change on disk. Then the same for symlinks placed in alice's account
that lead out of it, and for plus tags that would name a directory outside
it at SMTP delivery (`alice+/@` with a user `cur@` present).
"""

import hashlib
import imaplib
import os
import smtplib

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, collect_log, in_thread, in_thread_closing
from tests.test_imap_maildir import drain

ALICE = "alice@example.test"
OTHERS = ("bob@example.test", "victim1@example.test", "victim2@example.test", "carol@example.org", "cur@example.test")
MESSAGE = b"From: someone@remote.test\r\nSubject: %s\r\n\r\nprivate mail of %s\r\n"

# Every name of the issue, for both layouts: maildir (`.` + name in the
# account root, '.' between levels) and mbox (files under the root, '/'
# between levels). alice's root is mail/example.test/alice; four levels up
# is the test's directory, where `outside/` holds a file nobody may touch.
ATTACKS = (
    "/../bob",
    "../bob",
    "Sent/../../bob",
    "/../victim1",
    "/../victim2",
    "../victim1/INBOX",
    "../victim2/INBOX",
    "../bob/INBOX",
    "Sent/../../bob/INBOX",
    "/../../example.org/carol",
    "../../example.org/carol",
    "../../example.org/carol/INBOX",
    "/../../../../outside",
    "../../../../outside",
    "../../../../outside/precious",
    "/../../../../made-by-attack",
    "../../../../made-by-attack",
    "/../cur",
    "/tmp",
    "/new",
    "/cur",
    "/",
    ".",
    "..",
    "...",
    "",
    "Sent/..",
    "Sent/../Trash",
    "Sent//Trash",
    ".Sent",
    "/Sent",
    "/etc/passwd",
    "INBOX/../../bob",
)

# Refused by the maildir layout only: in mbox `Sent..Trash` is a file name like any other.
MAILDIR_ATTACKS = ("Sent..Trash", "Sent.", "Sent/Trash", "a/b")

# Names that come only as literals: a quoted string can't hold them.
CONTROL_NAMES = (b"a\r\nb", b"a\nb", b"a\x00b", b"\r\n", b"a\x01b")


def quoted(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def snapshot(top, skip):
    """{path: what is there} for the whole tree under `top` except `skip` (blocking)."""
    out = {}
    for directory, dirs, files in os.walk(top):
        if directory == skip or directory.startswith(skip + os.sep):
            dirs[:] = []
            continue
        for d in dirs:
            path = os.path.join(directory, d)
            out[path] = "link " + os.readlink(path) if os.path.islink(path) else "dir"
        for f in files:
            if f.startswith("mailplat-index.json"):
                # The stores' own index cache, flushed in the background at
                # any moment (and its temporary files): not mail, not ours.
                continue
            path = os.path.join(directory, f)
            if os.path.islink(path):
                out[path] = "link " + os.readlink(path)
            elif not os.path.isfile(path):
                out[path] = "special"  # the server's control socket (state_dir/control.sock)
            else:
                with open(path, "rb") as fh:
                    out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


def own_tree(root):
    """alice's own directories (maildir folders and their tmp/new/cur; mbox parents)."""
    out = set()
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".imap"]
        out.update(os.path.join(directory, d) for d in dirs)
        out.update(os.path.join(directory, f) for f in files if not f.startswith((".", "dovecot", "mailplat")))
    return out


class ServerCase(unittest.TestCase):
    """A server with alice, her neighbours, and mail for each."""

    store = "maildir"

    @defer.inlineCallbacks
    def setUp(self):
        self.log = collect_log(self)
        users = {ALICE: "pw"}
        users.update({u: "pw" for u in OTHERS})
        self.server = yield MailServer(self, listeners=("smtp", "imaps")).start(users=users)
        self.addCleanup(drain, self.server)
        self.outside = os.path.join(self.server.dir, "outside")
        os.makedirs(self.outside)
        with open(os.path.join(self.outside, "precious"), "wb") as f:
            f.write(b"not mail\n")
        yield in_thread(self._deliver_all)
        self.alice_root = self.server.maildir(ALICE)

    def _deliver_all(self):
        with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
            for user in (ALICE,) + OTHERS:
                s.sendmail("someone@remote.test", [user], MESSAGE % (user.encode(), user.encode()))

    def login(self):
        c = imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=10)
        self.clients.append(c)
        c.login(ALICE, "pw")
        return c

    def check(self, f):
        self.clients = []
        return in_thread_closing(f, self.clients).addCallback(lambda _: self.assertNoTraceback())

    def assertNoTraceback(self):
        bad = [t for t in self.log if "Traceback" in t or "SERVERBUG" in t or "Unhandled" in t]
        self.assertEqual(bad, [])

    def outside_state(self):
        return snapshot(self.server.dir, self.alice_root)

    def assertRefused(self, results):
        """`results`: [(what, (typ, data))]; each must be a NO that names no path."""
        wrong = []
        for what, (typ, data) in results:
            text = b" ".join(d if isinstance(d, bytes) else repr(d).encode() for d in data if d is not None)
            if typ != "NO" or self.server.dir.encode() in text or b"/var/" in text:
                wrong.append((what, typ, text))
        self.assertEqual(wrong, [], "answered other than a plain NO")

    def attack(self, command):
        """
        Run `command(client, name)` for each attack name in one session;
        every answer must be NO and nothing outside alice's account (nor
        alice's own tree) may change.
        """

        def run():
            c = self.login()
            c.select("INBOX")
            before, mine = self.outside_state(), own_tree(self.alice_root)
            results = []
            for name in ATTACKS + (MAILDIR_ATTACKS if self.store == "maildir" else ()):
                try:
                    results.append((name, command(c, name)))
                except imaplib.IMAP4.error as e:
                    results.append((name, ("BAD", [str(e).encode()])))
            self.assertRefused(results)
            self.assertEqual(self.outside_state(), before, "something outside alice's account changed")
            self.assertEqual(own_tree(self.alice_root) - mine, set(), "new entries in alice's account")
            # The session is still usable and alice's own mail is where it was.
            typ, data = c.select("INBOX")
            self.assertEqual((typ, data), ("OK", [b"1"]))

        return self.check(run)


class AttackNames(ServerCase):
    """The table of names against every command, on maildir."""

    # --- one test per command that names a mailbox ---------------------------------

    def test_select(self):
        return self.attack(lambda c, n: c.select(quoted(n)))

    def test_examine(self):
        return self.attack(lambda c, n: c.select(quoted(n), readonly=True))

    def test_status(self):
        return self.attack(lambda c, n: c.status(quoted(n), "(MESSAGES UIDNEXT)"))

    def test_append(self):
        return self.attack(lambda c, n: c.append(quoted(n), None, None, b"Subject: planted\r\n\r\nx\r\n"))

    def test_copy(self):
        def copy(c, n):
            c.select("INBOX")
            return c.copy("1", quoted(n))

        return self.attack(copy)

    def test_move(self):
        def move(c, n):
            c.select("INBOX")
            return c._simple_command("MOVE", "1", quoted(n))

        return self.attack(move)

    def test_copy_and_move_to_a_refused_name_say_cannot_not_trycreate(self):
        # RFC 3501 6.4.7: TRYCREATE tells the client to CREATE and retry;
        # for a name no CREATE can make, that would be a loop.
        def run():
            c = self.login()
            c.select("INBOX")
            answers = [c.copy("1", quoted("/../bob")), c._simple_command("MOVE", "1", quoted("../bob"))]
            answers.append(c.copy("1", "Nonexistent"))
            return answers

        def check(answers):
            (copy, move, missing) = answers
            self.assertEqual(copy[0], "NO")
            self.assertIn(b"[CANNOT]", copy[1][0])
            self.assertEqual(move[0], "NO")
            self.assertIn(b"[CANNOT]", move[1][0])
            self.assertIn(b"[TRYCREATE]", missing[1][0])

        self.clients = []
        return in_thread_closing(run, self.clients).addCallback(check)

    def test_create(self):
        return self.attack(lambda c, n: c.create(quoted(n)))

    def test_create_below(self):
        sep = "." if self.store == "maildir" else "/"
        return self.attack(lambda c, n: c.create(quoted(n + sep + "x")) if n else ("NO", [None]))

    def test_delete(self):
        return self.attack(lambda c, n: c.delete(quoted(n)))

    def test_rename_from(self):
        return self.attack(lambda c, n: c.rename(quoted(n), "Stolen"))

    def test_rename_to(self):
        return self.attack(lambda c, n: c.rename("Sent", quoted(n)))

    def test_rename_inbox_to(self):
        return self.attack(lambda c, n: c.rename("INBOX", quoted(n)))

    def test_subscribe(self):
        return self.attack(lambda c, n: c.subscribe(quoted(n)))

    def test_list_shows_nothing_outside(self):
        """LIST and LSUB patterns only ever match alice's own folders."""

        def run():
            c = self.login()
            typ, data = c.list()
            own = set(data)
            before = self.outside_state()
            leaked = []
            for name in ATTACKS:
                for ref, pattern in ((quoted(""), quoted(name + "*")), (quoted(name), "*"), (quoted(name), "%")):
                    for verb in (c.list, c.lsub):
                        typ, data = verb(ref, pattern)
                        if typ != "OK":
                            leaked.append((verb.__name__, ref, pattern, typ, data))
                            continue
                        listed = [d for d in data if d is not None]
                        if verb == c.list:
                            extra = [d for d in listed if d not in own and not d.endswith(b' ""')]
                        else:
                            extra = [d for d in listed if b"bob" in d or b"victim" in d or b"carol" in d]
                        if extra:
                            leaked.append((verb.__name__, ref, pattern, extra))
            self.assertEqual(leaked, [])
            self.assertEqual(self.outside_state(), before)

        return self.check(run)

    def test_control_characters_in_literals(self):
        """NUL, CR, LF in a name (only a literal can carry them): NO or BAD, never a file."""

        def run():
            c = self.login()
            before, mine = self.outside_state(), own_tree(self.alice_root)
            sock = c.socket()
            f = sock.makefile("rb")
            wrong = []
            for i, name in enumerate(CONTROL_NAMES):
                for verb in (b"SELECT", b"CREATE", b"SUBSCRIBE", b"DELETE", b"STATUS"):
                    tag = b"z%d%s" % (i, verb[:2])
                    tail = b" (MESSAGES)" if verb == b"STATUS" else b""
                    sock.sendall(tag + b" " + verb + b" {%d+}\r\n" % len(name) + name + tail + b"\r\n")
                    while True:
                        line = f.readline()
                        if not line or line.startswith(tag + b" "):
                            break
                    if not (line.startswith(tag + b" NO ") or line.startswith(tag + b" BAD ")):
                        wrong.append((verb, name, line))
            self.assertEqual(wrong, [])
            self.assertEqual(self.outside_state(), before)
            self.assertEqual(own_tree(self.alice_root) - mine, set())
            f.close()

        return self.check(run)

    def test_inbox_and_ordinary_folders_still_work(self):
        """The boundary refuses only what is outside: INBOX, `tmp` as a folder name, levels."""
        sep = "." if self.store == "maildir" else "/"

        def run():
            c = self.login()
            self.assertEqual(c.select("inbox")[0], "OK")
            for name in ("tmp", "new", "cur", "Lists" + sep + "twisted", "dots.in.name" if sep == "/" else "Space name"):
                self.assertEqual(c.create(quoted(name))[0], "OK", name)
                self.assertEqual(c.select(quoted(name))[0], "OK", name)
                self.assertEqual(c.append(quoted(name), None, None, b"Subject: x\r\n\r\nx\r\n")[0], "OK", name)
                self.assertEqual(c.status(quoted(name), "(MESSAGES)")[1], [b'"%s" (MESSAGES 1)' % name.encode()])
            self.assertEqual(c.rename("tmp", "tmp2")[0], "OK")
            self.assertEqual(c.delete("tmp2")[0], "OK")
            self.assertEqual(c.subscribe("INBOX")[0], "OK")
            if self.store == "maildir":
                # `tmp` is the Maildir++ folder `.tmp`, not the maildir's tmp/.
                for sub in ("tmp", "new", "cur"):
                    self.assertEqual(
                        [d for d in os.listdir(os.path.join(self.alice_root, sub)) if os.path.isdir(os.path.join(self.alice_root, sub, d))],
                        [],
                    )

        return self.check(run)


class AttackNamesOnMbox(AttackNames):
    store = "mbox"


# --- symlinks placed in the account ------------------------------------------------------


class SymlinkEscape(ServerCase):
    """
    A symlink in alice's account (made by someone with a shell there, or
    left by a migration) that leads out of it is no folder of hers: the
    real path decides, not the spelling.
    """

    def plant(self):
        """[(name, what it leads to)] planted in alice's account (maildir layout)."""
        root = self.alice_root
        bob = self.server.maildir("bob@example.test")
        links = {
            ".Evil": bob,  # bob's whole maildir as alice's folder
            ".Outside": self.outside,  # any directory the server can write
            ".OwnCur": os.path.join(root, "cur"),  # alice's own cur/ as a folder
            ".Up": os.path.dirname(root),  # the domain directory
        }
        for entry, target in links.items():
            os.symlink(target, os.path.join(root, entry))
        # A real folder whose cur/ leads into bob's.
        half = os.path.join(root, ".Half")
        os.makedirs(os.path.join(half, "tmp"))
        os.makedirs(os.path.join(half, "new"))
        os.symlink(os.path.join(bob, "cur"), os.path.join(half, "cur"))
        return ["Evil", "Outside", "OwnCur", "Up", "Half"]

    def commands(self, c, name):
        c.select("INBOX")
        return [
            ("SELECT", c.select(quoted(name))),
            ("EXAMINE", c.select(quoted(name), readonly=True)),
            ("STATUS", c.status(quoted(name), "(MESSAGES)")),
            ("APPEND", c.append(quoted(name), None, None, b"Subject: planted\r\n\r\nx\r\n")),
            ("COPY", (c.select("INBOX"), c.copy("1", quoted(name)))[1]),
            ("MOVE", c._simple_command("MOVE", "1", quoted(name))),
            ("RENAME to", c.rename("Sent", quoted(name))),
            ("RENAME from", c.rename(quoted(name), "Stolen")),
            ("DELETE", c.delete(quoted(name))),
        ]

    def test_symlinks_out_of_the_account_are_refused(self):
        names = self.plant()

        def run():
            c = self.login()
            c.select("INBOX")  # new/ -> cur/: alice's own message, before the snapshot
            before, mine = self.outside_state(), own_tree(self.alice_root)
            listed = c.list()[1]
            results = []
            for name in names:
                results += [(f"{what} {name}", answer) for what, answer in self.commands(c, name)]
            self.assertRefused(results)
            self.assertEqual(self.outside_state(), before, "something outside alice's account changed")
            self.assertEqual(own_tree(self.alice_root) - mine, set())
            for name in names:
                self.assertFalse([l for l in listed if l.endswith(b'"' + name.encode() + b'"')], f"LIST shows {name}")
            self.assertEqual(c.select("INBOX"), ("OK", [b"1"]))

        return self.check(run)

    def test_symlink_to_a_folder_of_the_same_account_still_works(self):
        os.symlink(os.path.join(self.alice_root, self.own_folder()), os.path.join(self.alice_root, self.alias_entry()))

        def run():
            c = self.login()
            self.assertEqual(c.select("Alias")[0], "OK")
            self.assertEqual(c.delete("Alias")[0], "OK")
            # The link went, the folder it pointed to stays.
            self.assertTrue(os.path.isdir(os.path.join(self.alice_root, self.own_folder())) or os.path.isfile(os.path.join(self.alice_root, self.own_folder())))

        return self.check(run)

    def own_folder(self):
        return ".Sent"

    def alias_entry(self):
        return ".Alias"


class SymlinkEscapeOnMbox(SymlinkEscape):
    store = "mbox"

    def plant(self):
        root = self.alice_root
        bob = self.server.maildir("bob@example.test")
        links = {
            "Evil": os.path.join(bob, "INBOX"),  # bob's INBOX file
            "Outside": os.path.join(self.outside, "precious"),  # any file
            "Neighbours": os.path.dirname(root),  # a directory holding every user
            "Inbox2": os.path.join(root, "INBOX"),  # alice's INBOX under another name
        }
        for entry, target in links.items():
            os.symlink(target, os.path.join(root, entry))
        return ["Evil", "Outside", "Neighbours/bob/INBOX", "Neighbours/victim1/INBOX", "Neighbours", "Inbox2"]

    def own_folder(self):
        return "Sent"

    def alias_entry(self):
        return "Alias"


# --- plus tags at SMTP delivery ---------------------------------------------------------


class PlusTag(ServerCase):
    """
    `alice+TAG@` files into alice's folder TAG when it exists; a tag that
    names no folder of hers (`/` is the domain directory in Maildir++,
    which has a cur/ when a user `cur@` exists) goes to her INBOX.
    """

    TAGS = ("/", "..", ".", "/..", "../bob", "/../bob", "../cur", "Sent/../../bob", "//")

    def test_bad_plus_tags_deliver_to_inbox(self):
        domain = os.path.dirname(self.alice_root)
        before = self.outside_state()
        self.assertTrue(os.path.isdir(os.path.join(self.server.maildir("cur@example.test"))))

        def run():
            answers = []
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
                for tag in self.TAGS:
                    try:
                        answers.append((tag, s.sendmail("someone@remote.test", [f"alice+{tag}@example.test"], b"Subject: tagged\r\n\r\nx\r\n")))
                    except smtplib.SMTPException as e:
                        answers.append((tag, e))
            return answers

        def delivered(answers):
            # Accepted into INBOX, or refused at RCPT as no address at all
            # (`alice+..@` is not a dot-atom, RFC 5321 4.1.2): never elsewhere.
            accepted = [t for t, a in answers if a == {}]
            refused = [(t, a) for t, a in answers if a != {}]
            self.assertIn("/", accepted)
            self.assertEqual(
                [(t, a) for t, a in refused if not (isinstance(a, smtplib.SMTPRecipientsRefused) and list(a.recipients.values())[0][0] == 553)],
                [],
            )
            self.assertEqual(self.outside_state(), before, "a delivery wrote outside alice's account")
            # (domain/cur is the maildir of the user cur@, which is what made
            # the domain directory look like a folder to the old code.)
            for sub in ("tmp", "new"):
                self.assertFalse(os.path.exists(os.path.join(domain, sub)), f"{sub}/ in the domain directory")
            return self.check(lambda: self.assertEqual(self.login().select("INBOX"), ("OK", [str(1 + len(accepted)).encode()])))

        return in_thread(run).addCallback(delivered)

    def test_good_plus_tag_still_files_into_the_folder(self):
        sep = "." if self.store == "maildir" else "/"

        def run():
            c = self.login()
            for name in ("lists", "dev" + sep + "twisted"):
                self.assertEqual(c.create(name)[0], "OK")
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp"), timeout=10) as s:
                s.sendmail("someone@remote.test", ["alice+lists@example.test"], b"Subject: tagged\r\n\r\nx\r\n")
                # A '/' in a tag is a level in either layout.
                s.sendmail("someone@remote.test", ["alice+dev/twisted@example.test"], b"Subject: tagged\r\n\r\nx\r\n")
            self.assertEqual(c.select("lists"), ("OK", [b"1"]))
            self.assertEqual(c.select("dev" + sep + "twisted"), ("OK", [b"1"]))

        return self.check(run)


class PlusTagOnMbox(PlusTag):
    store = "mbox"
