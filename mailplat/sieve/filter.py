"""
Sieve at local delivery: for each recipient with an active script, the
folders the message goes to.

Scripts live as Pigeonhole keeps them, so a Dovecot user's scripts work
unchanged: `<home>/sieve/NAME.sieve`, the active one the symlink
`<home>/.dovecot.sieve`. "home" is `[sieve] home` (default
`state_dir/home/%d/%n`), a tree of its own beside the mail, because
neither store layout has room for it: a maildir's subdirectories and an
mbox tree's files are both folders.

A script is compiled when it is first used and again when its file
changes (looked at no more than once a second, L{SieveFilter.recheck}). Whatever goes wrong — a script that no longer compiles, a run
that fails or hits a limit — the message is kept in the folder it would
have gone to without Sieve (RFC 5228 2.10.6), and one line is logged with
the user and the script's line. A broken script never loses mail.
"""

import os
import time

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailplat.sieve import SieveMessage, SieveRuntimeError, SieveSyntaxError, compile_script, outcome
from mailplat.sieve.core import FileInto, Keep, Redirect, Reject
from mailplat.sieve.duplicate import Tracker
from mailplat.sieve.engine import OverBudget, Run
from mailplat.sieve.vacation import Memory, Vacation, build, should_reply
from mailplat.store.source import BytesSource, PrefixedSource, ReplacedHeaderSource, SpooledSource

log = Logger()

ACTIVE = ".dovecot.sieve"
BODY_LIMIT = 1024 * 1024  # octets of a message a script's body test sees


MAX_REDIRECTS = 4  # per message and recipient (Pigeonhole's sieve_max_redirects)

# A run of compiled scripts over a message held in memory costs a fraction
# of a millisecond: it runs in the reactor, with this many steps at most;
# a longer run starts again in the thread pool with the whole budget.
INLINE_STEPS = 5000
INLINE_SIZE = 256 * 1024  # octets: a body test over a larger message is a thread's job
# Extensions that read or write the user's files while they run (include's
# scripts, vacation's and duplicate's memories): such scripts run in a thread.
TOUCHES_FILES = frozenset(("include", "vacation", "vacation-seconds", "duplicate"))


class _NotCached(Exception):
    """A script that is not compiled yet, or whose file changed: compiling it reads a file (a thread's job)."""


class Decision:
    """What the scripts decided for one recipient."""

    def __init__(self, folders, actions=(), error=None, redirects=(), reply=None, reject=None, edited=None):
        self.folders = folders  # [(folder, flags)]: one copy each; empty: discarded
        self.actions = list(actions)  # every action, for the log
        self.error = error
        self.redirects = list(redirects)  # addresses to send the message on to (the relay queue)
        self.reply = reply  # a vacation reply's bytes, to the envelope sender, or None
        self.reject = reject  # the reason when the script refused the message (RFC 5429)
        # editheader (RFC 5293): (new header, header for redirects, octets of the old one), or None
        self.edited = edited

    def source(self, original):
        """What this recipient's copies are made of: `original`, or it with the edited header."""
        if self.edited is None:
            return original
        return ReplacedHeaderSource(self.edited[0], original, self.edited[2])

    def redirect_source(self, original, prefix):
        """A redirected copy: `prefix` (Delivered-To) and the header as edited, without our Return-Path."""
        if self.edited is None:
            return PrefixedSource(prefix, original.source)
        return ReplacedHeaderSource(prefix + self.edited[1], original, self.edited[2])


class SieveFilter:
    # Seconds a script file's stamp is trusted before it is looked at again:
    # a stat per delivery in the reactor thread costs a GIL hand-over under
    # load; a script changed (ManageSieve, an editor) is used within this.
    recheck = 1.0

    def __init__(self, home, hostname="localhost", before=(), after=(), global_dir=None):
        self.home_template = home
        self.hostname = hostname  # for the Message-ID of vacation replies
        self.before, self.after = list(before), list(after)  # [sieve] before / after: every user's mail
        self.global_dir = global_dir  # include :global (RFC 6609)
        self._compiled = {}  # path -> ((inode, mtime_ns, size) or None, Script / SieveSyntaxError / None, checked at)

    def home(self, address):
        local, _, domain = address.rpartition("@")
        return self.home_template.replace("%d", domain).replace("%n", local).replace("%u", address)

    def decide(self, address, sender, source, default_folder, scores=None):
        """
        Deferred firing with a L{Decision}. `scores` are the checks'
        (L{mailplat.interfaces.Envelope.scores}), for spamtest/virustest.

        Compiled scripts over a message in memory (up to L{INLINE_SIZE})
        run at once: a few hundred microseconds, L{INLINE_STEPS} at most,
        cheaper than a thread's round trip. Compiling a script, a message
        spooled to disk, and scripts that touch the user's files go to the
        thread pool.
        """
        if source.size <= INLINE_SIZE and _in_memory(source):
            try:
                chain = self._chain(address, cached_only=True)
                runnable = [c for c in chain[0] if _runnable(c)]
                if not any(TOUCHES_FILES & c.required for c in runnable):
                    data = _read_start(source, BODY_LIMIT) if runnable else b""
                    return defer.succeed(self._decide(address, sender, source, default_folder, scores, data, chain, INLINE_STEPS))
            except (_NotCached, OverBudget, OSError):
                pass  # the thread's turn
            except Exception:
                return defer.fail()
        return threads.deferToThread(self._decide, address, sender, source, default_folder, scores)

    def _chain(self, address, cached_only=False):
        """([sieve] before + the user's active script + after, compiled or not), the active script's path."""
        path = os.path.join(self.home(address), ACTIVE)
        script = self._compile(path, address, cached_only)
        before = [self._compile(p, address, cached_only) for p in self.before]
        after = [self._compile(p, address, cached_only) for p in self.after]
        return before + [script] + after, path, script

    def _compile(self, path, address, cached_only=False):
        """
        The compiled script at `path` (cached by the file's mtime and size),
        a SieveSyntaxError, or None; with `cached_only`, L{_NotCached}
        rather than reading the file.
        """
        cached = self._compiled.get(path)
        now = time.monotonic()
        if cached is not None and now - cached[2] < self.recheck:
            return cached[1]  # looked at less than `recheck` seconds ago
        try:
            st = os.stat(path)  # follows the symlink to the active script
        except FileNotFoundError:
            self._compiled[path] = (None, None, now)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if cached is not None and cached[0] == stamp:
            self._compiled[path] = (stamp, cached[1], now)
            return cached[1]
        if cached_only:
            raise _NotCached(path)
        try:
            with open(path, "rb") as f:
                compiled = compile_script(f.read())
        except SieveSyntaxError as e:
            compiled = e
            log.error("sieve: {user}: script {script} does not compile ({error}); it is not run", user=address, script=_name(path), error=e)
        self._compiled[path] = (stamp, compiled, now)
        return compiled

    def _loader(self, address):
        """include's scripts (RFC 6609 3): the user's own, or the global ones."""

        def load(name, where):
            base = os.path.join(self.home(address), "sieve") if where == "personal" else self.global_dir
            if not base:
                return None
            script = self._compile(os.path.join(base, name + ".sieve"), address)
            if isinstance(script, SieveSyntaxError):
                raise SieveRuntimeError(f"include: {name} does not compile ({script})", 0)
            return script

        return load

    def _decide(self, address, sender, source, default_folder, scores=None, data=None, chain=None, limit=None):
        """
        The L{Decision} (blocking unless `chain` and `data` are given: the
        scripts compiled, the message's start read; `limit`: a smaller step
        budget, past which L{OverBudget} is raised before anything is done).
        """
        keep_default = Decision([(default_folder, ())])
        if chain is None:
            try:
                chain = self._chain(address)
            except OSError as e:
                log.error("sieve: {user}: cannot read the active script ({error}); mail is kept", user=address, error=e)
                return Decision(keep_default.folders, error=e)
        scripts, path, script = chain
        if isinstance(script, SieveSyntaxError):
            return Decision(keep_default.folders, error=script)
        scripts = [c for c in scripts if _runnable(c)]
        if not scripts:
            return keep_default
        if data is None:
            data = _read_start(source, BODY_LIMIT)
        message = SieveMessage(data, sender, address, size=source.size)
        environment = {"include": self._loader(address), "duplicates": Tracker(self.home(address)), "scores": scores or {}}
        run = Run(message, environment)
        if limit is not None:
            run.limit = limit
        try:
            # [sieve] before, the user's script, [sieve] after: one run, one result; stop ends it.
            for compiled in scripts:
                if compiled.run_in(run):
                    break
        except OverBudget:
            raise  # the caller runs it again in full
        except SieveRuntimeError as e:
            log.error("sieve: {user}: {script} stopped at {error}; mail is kept", user=address, script=_name(path), error=e)
            return Decision(keep_default.folders, error=e)
        actions = outcome(run)
        folders, redirects, reply, reject = [], [], None, None
        for action in actions:
            if isinstance(action, Keep):
                folders.append((default_folder, action.flags))
            elif isinstance(action, FileInto):
                folder = "INBOX" if action.folder.upper() == "INBOX" else action.folder
                if (folder, action.flags) not in folders:
                    folders.append((folder, action.flags))
            elif isinstance(action, Redirect):
                redirects.append(action.address)
            elif isinstance(action, Reject):
                reject = action.reason
            elif isinstance(action, Vacation):
                reply = self._reply(message, address, action)
        if redirects:
            # RFC 5228 4.2: no loops. A message we already delivered to this
            # user (our Delivered-To on it) is kept, not sent on again.
            seen = {v.strip().strip("<>").lower() for v in message.raw_headers("delivered-to")}
            if address.lower() in seen:
                log.warn("sieve: {user}: redirect loop (Delivered-To is already this user); the message is kept", user=address)
                redirects = []
                if not folders:
                    folders.append((default_folder, ()))
            elif len(redirects) > MAX_REDIRECTS:
                log.warn("sieve: {user}: {n} redirects, at most {max} are sent", user=address, n=len(redirects), max=MAX_REDIRECTS)
                redirects = redirects[:MAX_REDIRECTS]
        edited = None
        if message.edited:
            if message.header_complete:
                edited = (message.header_bytes(), message.header_bytes(without=("return-path",)), message.body_offset)
            else:
                log.warn("sieve: {user}: header longer than {limit} octets; editheader's changes are not kept",
                         user=address, limit=BODY_LIMIT)
        return Decision(folders, actions, redirects=redirects, reply=reply, reject=reject, edited=edited)

    def _reply(self, message, address, vacation):
        """The vacation reply's bytes, or None (RFC 5230 4.5-4.6 rules, response memory)."""
        why_not = should_reply(message, address, vacation)
        if why_not is not None:
            log.info("sieve: {user}: no vacation reply to <{sender}>: {why}", user=address, sender=message.envelope_from, why=why_not)
            return None
        if not Memory(self.home(address)).due(message.envelope_from, vacation):
            return None  # answered within the period
        return build(message, address, vacation, self.hostname)


def reject_notice(source, user, sender, reason, hostname):
    """
    The message telling `sender` that `user`'s script refused its mail
    (RFC 5429 2.1, when the SMTP reply could not carry it: several
    recipients). A plain auto-reply with the original header attached.
    """
    import email.utils

    data = _read_start(source, 64 * 1024)
    end = data.find(b"\n\n")
    header = data[: end + 1] if end >= 0 else data
    subject = SieveMessage(data).headers("subject")
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname or 'localhost'}>",
        f"To: {sender}",
        "Subject: Rejected: " + " ".join((subject[0] if subject else "").split())[:150],
        f"Date: {email.utils.formatdate()}",
        f"Message-ID: {email.utils.make_msgid(domain=hostname or 'localhost')}",
        "Auto-Submitted: auto-replied (rejected)",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="reject-notice"',
        "",
        "--reject-notice",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"Your message to <{user}> was rejected by the recipient's filter:",
        "",
        reason.replace("\r\n", "\n"),
        "",
        "--reject-notice",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    body = "\n".join(lines).encode("utf-8") + header + b"\n--reject-notice--\n"
    from mailplat.store.source import BytesSource

    return BytesSource(body)


def _runnable(compiled):
    return compiled is not None and not isinstance(compiled, SieveSyntaxError)


def _in_memory(source):
    """Whether all of the message is in memory (the SMTP spool keeps small ones there): read without blocking."""
    while isinstance(source, (PrefixedSource, ReplacedHeaderSource)):
        source = source.source
    return isinstance(source, BytesSource) or (isinstance(source, SpooledSource) and source._file is None)


def _read_start(source, limit):
    """Up to `limit` octets of the message (a read may return less than asked: loop)."""
    chunks, left = [], limit
    with source.open() as f:
        while left > 0:
            chunk = f.read(min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    return b"".join(chunks)


def _name(path):
    return os.path.basename(os.path.realpath(path))
