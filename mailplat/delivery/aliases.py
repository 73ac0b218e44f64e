"""
The aliases file: `alias@domain: target, target` per line, `#` comments,
as Postfix's virtual_alias_maps in a file. Targets are users, other aliases
or remote addresses. Re-read when it changes on disk; a broken line is
logged with its number and skipped.
"""

import os

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.calls import call_backend
from mailplat.interfaces import IAliasSource

log = Logger()


def parse(text, path):
    """@return: ({alias: [targets]}, [problems naming path:line])."""
    table, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        alias, sep, rest = stripped.partition(":")
        alias = alias.strip().lower()
        targets = [t.strip().lower() for t in rest.replace(",", " ").split() if t.strip()]
        if not sep or "@" not in alias or alias.startswith("@"):
            problems.append(f"{path}:{number}: expected 'alias@domain: target, target'")
            continue
        bad = [t for t in targets if t.count("@") != 1 or t.startswith("@") or t.endswith("@")]
        if not targets or bad:
            problems.append(f"{path}:{number}: {alias}: targets must be addresses (user@domain)")
            continue
        if alias in table:
            problems.append(f"{path}:{number}: {alias} appears again; its targets are added")
        table.setdefault(alias, [])
        table[alias] += [t for t in targets if t not in table[alias]]
    return table, problems


@implementer(IAliasSource)
class AliasesFile:
    """The alias table, reloaded when the file's inode, size or mtime change."""

    def __init__(self, path):
        self.path = path
        self._table = {}
        self._stamp = None

    def table(self):
        if not self.path:
            return {}
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:
                log.warn("aliases file {path} is gone; no aliases", path=self.path)
            self._table, self._stamp = {}, None
            return self._table
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    table, problems = parse(f.read(), self.path)
            except OSError as e:
                log.error("cannot read aliases file {path}: {e}", path=self.path, e=e.strerror)
                return self._table
            for problem in problems:
                log.error("aliases line skipped: {problem}", problem=problem)
            self._table, self._stamp = table, stamp
        return self._table

    def problems(self):
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return parse(f.read(), self.path)[1]
        except (FileNotFoundError, TypeError):
            return []

    def targets(self, address):
        return self.table().get(address)


@implementer(IAliasSource)
class AliasSources:
    """
    Several alias sources asked in order; the first that knows an address
    answers (the aliases file first, then the sql realm's table). Targets
    may come back as Deferreds or coroutines, so the resolver calls
    `mailplat.calls.call_backend(aliases.targets, address)`.
    """

    def __init__(self, sources):
        self.sources = list(sources)

    @defer.inlineCallbacks
    def targets(self, address):
        for source in self.sources:
            found = yield call_backend(source.targets, address)
            if found:
                return found
        return None

    def problems(self):
        """The file sources' skipped lines, for `check-config`."""
        return [p for s in self.sources for p in getattr(s, "problems", lambda: [])()]
