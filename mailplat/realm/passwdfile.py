"""
A Dovecot-compatible passwd-file realm: one user per line,
`address:{SCHEME}hash[:more:fields]`, `#` comments.

The file is re-read whenever it changes on disk, so `mailplat user add` (or
an editor) takes effect without a restart. A broken line is logged with its
number and skipped; every other user keeps working.
"""

import os
import tempfile

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat import oplog
from mailplat.interfaces import IQuotaSource, IRealmAdmin, IRealmBackend, NoSuchUser, PermanentFailure, TemporaryFailure
from mailplat.realm import passwords

log = Logger()


def normalize(address):
    """Addresses are compared case-insensitively (as Dovecot's %Lu does)."""
    return address.strip().lower()


def parse(text, path, quotas=None):
    """
    @param quotas: a dict to fill with {address: [quota rules]} from the
        `userdb_quota_rule` extra fields, or None.
    @return: (users, problems): users maps address to stored hash; problems
        lists "path:line: reason" strings for the lines that were skipped
        (and the quota rules that are ignored).
    """
    users, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        address, sep, rest = stripped.partition(":")
        address = normalize(address)
        stored = _hash_field(rest)
        if not sep or not address:
            problems.append(f"{path}:{number}: expected address:{{SCHEME}}hash")
            continue
        if "@" not in address:
            problems.append(f"{path}:{number}: user {address!r} is not an address (user@domain)")
            continue
        if not stored:
            problems.append(f"{path}:{number}: {address} has no password")
            continue
        try:
            passwords.check_scheme(stored)
        except passwords.UnknownScheme as e:
            problems.append(f"{path}:{number}: {address}: {e}")
            continue
        if address in users:
            problems.append(f"{path}:{number}: {address} appears again; the first line wins")
            continue
        users[address] = stored
        rules, bad = _quota_rules(rest[len(stored) :])
        problems += [f"{path}:{number}: {address}: {reason}; ignored" for reason in bad]
        if rules and quotas is not None:
            quotas[address] = rules
    return users, problems


def _quota_rules(tail):
    """
    Dovecot's quota rules from the fields after the password: the extra
    fields are the 8th field on (`user:pass:uid:gid:gecos:home:shell:extra`,
    colons in them allowed), space-separated `key=value`;
    `userdb_quota_rule`, `userdb_quota_rule2`, ... (or without the
    `userdb_` prefix). @return: (rules in order, problems).
    """
    from mailplat.quota.rules import check_rules

    fields = tail.split(":")[1:]
    found, problems = {}, []
    if any("quota_rule" in f for f in fields[:5]):
        problems.append("quota_rule must be in the extra fields (the 8th field: user:pass:uid:gid:gecos:home:shell:extra)")
    for item in ":".join(fields[5:]).split():
        key, sep, value = item.partition("=")
        name = key.lower().removeprefix("userdb_")
        if not sep or not name.startswith("quota_rule"):
            continue
        suffix = name[len("quota_rule") :]
        if suffix and not suffix.isdigit():
            continue
        found[int(suffix or 1)] = value
    rules = [found[n] for n in sorted(found)]
    bad = dict(check_rules(rules))
    problems += [reason for reason in bad.values()]
    return [r for r in rules if r not in bad], problems


def _hash_field(rest):
    """The password field: `{SCHEME}value` up to the next colon after the value.

    Argon2 and bcrypt hashes contain no colon, so the field ends at the first
    colon after the scheme tag.
    """
    if rest.startswith("{"):
        end = rest.find("}")
        if end > 0:
            value = rest[end + 1 :].split(":", 1)[0]
            return rest[: end + 1] + value
    return rest.split(":", 1)[0]


def _keep_owner(tmp, path, directory):
    """
    Run as root (`mailplat user add`), give the new file the old one's owner,
    or the directory's: a server running as `[server] user` can still read it.
    """
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = os.stat(directory)
    os.chown(tmp, st.st_uid, st.st_gid)


@implementer(IRealmBackend, IRealmAdmin, IQuotaSource)
class PasswdFileRealm:
    """Users from a passwd-file, reloaded when the file changes."""

    def __init__(self, path, verify_in_thread=True):
        self.path = path
        self._verify_in_thread = verify_in_thread
        self._users = {}
        self._quotas = {}  # address -> Dovecot quota rules (userdb_quota_rule)
        self._stamp = None

    # reading

    def _current(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:
                log.warn("passwd-file {path} is gone; no users", path=self.path)
            self._users, self._stamp, self._quotas = {}, None, {}
            return self._users
        except OSError as e:
            raise self._unreadable(e)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError as e:
                raise self._unreadable(e)
            quotas = {}
            users, problems = parse(text, self.path, quotas)
            for problem in problems:
                log.error("passwd-file line skipped: {problem}", problem=problem)
            if self._stamp is not None:
                log.info("passwd-file {path} reloaded: {n} users", path=self.path, n=len(users))
            self._users, self._stamp, self._quotas = users, stamp, quotas
        return self._users

    def _unreadable(self, e):
        """
        The 4xx for a file we cannot read, logged each time with the file
        and the reason (the client is told the reason only, not the path).
        """
        oplog.emit("file-error", level="error", file=self.path, reason=e.strerror or str(e), kind="passwd-file")
        return TemporaryFailure(f"cannot read passwd-file: {e.strerror}")

    def problems(self):
        """Lines that would be skipped, for `check-config`."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return parse(f.read(), self.path)[1]
        except FileNotFoundError:
            return []

    def lookup(self, address):
        try:
            address = normalize(address)
            return defer.succeed(address if address in self._current() else None)
        except TemporaryFailure:
            return defer.fail()

    def check_password(self, address, password):
        try:
            address = normalize(address)
            stored = self._current().get(address)
        except TemporaryFailure:
            return defer.fail()
        known = stored is not None
        if not known:
            # Spend the same time as a real check so that timing does not
            # tell which addresses exist.
            stored = passwords.dummy_hash()
        if self._verify_in_thread:
            d = passwords.verify_later(stored, password)
        else:
            d = defer.succeed(passwords.verify(stored, password))

        def decide(ok):
            if ok and known:
                if stored.startswith("{PLAIN}") or not stored.startswith("{"):
                    log.warn("{address} has a PLAIN password; rehash it with `mailplat user passwd`", address=address)
                return address
            return None

        return d.addCallback(decide)

    def quota_rules(self, address):
        """L{IQuotaSource}: the user's `userdb_quota_rule` fields, in order."""
        try:
            self._current()
        except TemporaryFailure:
            return defer.fail()
        return defer.succeed(list(self._quotas.get(normalize(address), ())))

    def list_users(self):
        try:
            return defer.succeed(sorted(self._current()))
        except TemporaryFailure:
            return defer.fail()

    # writing (the CLI)

    def _rewrite(self, change):
        """Apply `change(lines) -> lines` to the file atomically (tmp, fsync, rename)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        lines = change(lines)
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".users.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            _keep_owner(tmp, self.path, directory)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._stamp = None

    @staticmethod
    def _line_address(line):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            return None
        return normalize(stripped.split(":", 1)[0])

    def add_user(self, address, password_hash):
        address = normalize(address)
        if address in self._current():
            raise PermanentFailure(f"user {address} exists already")

        self._rewrite(lambda lines: lines + [f"{address}:{password_hash}"])

    def set_password(self, address, password_hash):
        address = normalize(address)
        if address not in self._current():
            raise NoSuchUser(address)

        def change(lines):
            out = []
            for line in lines:
                if self._line_address(line) == address:
                    rest = line.strip().split(":", 1)[1]
                    tail = rest[len(_hash_field(rest)) :]
                    line = f"{address}:{password_hash}{tail}"
                out.append(line)
            return out

        self._rewrite(change)

    def delete_user(self, address):
        address = normalize(address)
        if address not in self._current():
            raise NoSuchUser(address)
        self._rewrite(lambda lines: [l for l in lines if self._line_address(l) != address])

