"""
Allow and block lists the users control (docs/lists.md): per user and
global (the user `*`), by address (`boss@example.com`) or domain
(`example.com`, which covers its subdomains too), kept in one JSON file
under state_dir, `state_dir/lists.json`:

    {"*": {"allow": ["example.org"], "block": []},
     "alice@example.com": {"allow": ["boss@partner.example"], "block": ["spam.example"]}}

The file is replaced whole (temporary file, fsync, rename, fsync of the
directory) under a lock file, so the CLI (`mailplat lists`) and the
server (a message moved out of Junk allow-lists its sender) never lose
each other's change. The server reads it again when it changes.

Who wins: the user's own lists before the global ones; within one, the
most specific pattern (an address before a domain, a longer domain before
a shorter); on a tie, allow.
"""

import errno
import fcntl
import json
import os
import re
import tempfile

from twisted.internet import threads
from twisted.logger import Logger

from mailplat.checks import Check, Verdict

log = Logger(namespace="mailplat.spam.lists")

FILENAME = "lists.json"
GLOBAL = "*"
KINDS = ("allow", "block")
ALLOW, BLOCK = KINDS

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_LOCAL = re.compile(r"^[^\s@<>()\[\],;:\"\\]{1,64}$")


class ListError(ValueError):
    """A user or pattern the lists cannot hold, or a lists file that cannot be read."""


def normal_user(user):
    """`*` for the global lists, or the user's address in lower case."""
    user = (user or "").strip().lower()
    if user == GLOBAL:
        return user
    local, at, domain = user.rpartition("@")
    if not at or not local or not _DOMAIN.match(domain):
        raise ListError(f"{user!r}: a user's address (alice@example.com) or * for the global lists")
    return user


def normal_pattern(pattern):
    """An address or a domain, in lower case (`@example.com` is the domain example.com)."""
    text = (pattern or "").strip().lower().rstrip(".")
    if text.startswith("@"):
        text = text[1:]
    local, at, domain = text.rpartition("@")
    if at:
        if _LOCAL.match(local) and _DOMAIN.match(domain):
            return text
    elif _DOMAIN.match(text) and "." in text:
        return text
    raise ListError(f"{pattern!r}: an address (boss@example.com) or a domain (example.com)")


def _specificity(pattern, sender, domain):
    """How closely `pattern` names `sender` (0: not at all)."""
    if "@" in pattern:
        return 1000 if pattern == sender else 0
    if domain == pattern or domain.endswith("." + pattern):
        return 1 + pattern.count(".")
    return 0


def judge(entries, sender):
    """ALLOW, BLOCK or None for one owner's {kind: [patterns]} (the most specific pattern; allow on a tie)."""
    domain = sender.rpartition("@")[2]
    best, verdict = 0, None
    for kind in (BLOCK, ALLOW):  # allow second: it wins a tie
        for pattern in entries.get(kind, ()):
            s = _specificity(pattern, sender, domain)
            if s and s >= best:
                best, verdict = s, kind
    return verdict


class SenderLists:
    """
    The lists file of one server: looked up at delivery (from the
    reactor: a stat, and a read only when the file changed) and changed
    by the CLI and by the Junk learning.
    """

    def __init__(self, path):
        self.path = path
        self._seen = None  # (inode, size, mtime_ns) of the file last read
        self._data = {}

    @classmethod
    def in_state_dir(cls, state_dir):
        return cls(os.path.join(state_dir, FILENAME))

    # --- reading ---------------------------------------------------------

    def _current(self):
        """The lists as the file holds them now (read again only when it changed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._data = None, {}
            return self._data
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._seen:
            try:
                self._data = _read(self.path)
            except ListError as e:
                # A broken file keeps the last good lists: logged, never fatal to delivery.
                log.error("{error}", error=str(e))
            self._seen = stamp
        return self._data

    def show(self, user):
        """{kind: [patterns]} of one user (or `*`), sorted."""
        entries = self._current().get(normal_user(user), {})
        return {kind: sorted(entries.get(kind, ())) for kind in KINDS}

    def verdict(self, user, sender):
        """
        ALLOW, BLOCK or None for mail from `sender` to `user`: the user's
        own lists, then the global ones. The null sender is never listed.
        """
        sender = (sender or "").strip().lower()
        if "@" not in sender:
            return None
        data = self._current()
        for owner in (user.lower(), GLOBAL):
            found = judge(data.get(owner, {}), sender)
            if found is not None:
                return found
        return None

    # --- changing --------------------------------------------------------

    def add(self, user, kind, pattern):
        """Add `pattern` to a list; False when it was there already."""
        return self._change(user, kind, pattern, True)

    def remove(self, user, kind, pattern):
        """Take `pattern` off a list; False when it was not there."""
        return self._change(user, kind, pattern, False)

    def add_in_thread(self, user, kind, pattern):
        """L{add} off the reactor (it fsyncs): a Deferred."""
        return threads.deferToThread(self.add, user, kind, pattern)

    def _change(self, user, kind, pattern, adding):
        if kind not in KINDS:
            raise ListError(f"{kind!r}: allow or block")
        user, pattern = normal_user(user), normal_pattern(pattern)
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(self.path + ".lock", "a") as lock:
            _owned_like_directory(lock.fileno(), directory)
            # The CLI and the server change the file one at a time.
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = _read(self.path)
            except FileNotFoundError:
                data = {}
            entries = data.setdefault(user, {})
            patterns = entries.setdefault(kind, [])
            if (pattern in patterns) == adding:
                return False
            if adding:
                patterns.append(pattern)
            else:
                patterns.remove(pattern)
            data = {u: {k: sorted(v) for k, v in e.items() if v} for u, e in data.items()}
            _write(self.path, {u: e for u, e in data.items() if e})
        return True


def _read(path):
    """The file's lists: {user: {kind: [patterns]}}; FileNotFoundError when there is none."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read() or b"{}")
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ListError(f"{path}: not a lists file ({e})")
    if not isinstance(data, dict):
        raise ListError(f"{path}: must hold a JSON object of users")
    out = {}
    for user, entries in data.items():
        if not isinstance(entries, dict):
            raise ListError(f"{path}: {user!r} must hold {{\"allow\": [...], \"block\": [...]}}")
        for kind, patterns in entries.items():
            if kind not in KINDS or not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                raise ListError(f"{path}: {user!r}.{kind}: must be allow or block, a list of patterns")
        out[str(user).lower()] = {k: [p.lower() for p in v] for k, v in entries.items()}
    return out


def _owned_like_directory(fd, directory):
    """
    Run as root (the CLI), give the file to state_dir's owner: the server,
    running as its own user, must still read (and change) it.
    """
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if st.st_uid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def _write(path, data):
    """Replace the file whole: temporary file, fsync, rename, fsync the directory."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".lists.", dir=directory)
    try:
        _owned_like_directory(fd, directory)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- the `lists` check --------------------------------------------------------


class ListsCheck(Check):
    """
    Refuses at RCPT (550 5.7.1) a sender every local mailbox behind the
    recipient has block-listed; an alias some of whose members block the
    sender is accepted, and those members' copies go into Junk at
    delivery (L{folder_for}). Allow lists act at delivery only.
    """

    name = "lists"

    def __init__(self, lists, resolver):
        self.lists = lists
        self.resolver = resolver

    def rcpt(self, session, recipient):
        sender = session.sender
        if not sender or self.resolver is None or not self.resolver.is_local(recipient):
            return None

        def judged(targets):
            users = [t.address for t in targets if not t.remote]
            if users and all(self.lists.verdict(u, sender) == BLOCK for u in users):
                log.info("lists: {sender} is block-listed by {rcpt}", sender=sender, rcpt=recipient)
                return Verdict.reject("the recipient does not accept mail from you", 550, "5.7.1")
            return None

        # Unknown recipients and alias loops are for the delivery to answer.
        return self.resolver.resolve(recipient).addCallbacks(judged, lambda _: None)


def folder_for(lists, user, sender, chosen, default):
    """
    The folder one recipient's copy goes to, the user's word over the
    filters': allow-listed, the filter's folder (`chosen`, Junk) is
    ignored; block-listed (an alias member, see L{ListsCheck}), Junk.
    """
    if lists is None:
        return chosen or default
    verdict = lists.verdict(user, sender)
    if verdict == ALLOW:
        if chosen:
            log.info("lists: {sender} is allow-listed by {user}: not filed into {folder}",
                     sender=sender, user=user, folder=chosen)
        return default
    if verdict == BLOCK:
        return chosen or JUNK
    return chosen or default


JUNK = "Junk"


def from_section(section, context):
    """The `lists` check from its [checks.lists] table (docs/lists.md)."""
    lists = getattr(context, "sender_lists", None) or SenderLists.in_state_dir(context.state_dir)
    return ListsCheck(lists, getattr(context, "resolver", None))
