"""
Learning from the Junk folder (docs/check-rspamd.md, "Learning"): what a
user moves into Junk over IMAP is reported to rspamd as spam, what they
move out of it as ham, and the sender of a message moved out of Junk is
put on the user's allow list (mailplat.spam.lists), so the user's word
wins next time.

    into Junk:   MOVE or COPY into it, or STORE +FLAGS ($Junk)   -> POST /learnspam
    out of Junk: MOVE or COPY out of it (not to Trash), or
                 STORE +FLAGS ($NotJunk)                         -> POST /learnham

It is an observer of the IMAP sessions (L{mailplat.imap.events.IMailboxEvents})
the service registers: the IMAP command is answered first, the messages
are read in a thread and sent to rspamd's controller afterwards; a
failure is logged in one line, never raised.
"""

import collections
import email.parser
import email.policy
import email.utils
import hashlib
import json

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from mailplat.imap.events import IMailboxEvents

log = Logger(namespace="mailplat.plugins.rspamd")

DEFAULT_CONTROLLER = "http://127.0.0.1:11334"
SPAM, HAM = "spam", "ham"
JUNK_KEYWORD, NOT_JUNK_KEYWORD = "$junk", "$notjunk"  # RFC 5788 registered keywords, compared in lower case
NOT_HAM_TARGETS = ("trash", "deleted", "deleted items", "deleted messages")  # moving spam away is no verdict
REPLY_LIMIT = 64 * 1024
MAX_MESSAGE = 20 * 1024 * 1024
REMEMBERED = 4096  # lessons remembered, to ask rspamd once per message and kind


class LearnRefused(Exception):
    """rspamd's controller did not learn the message (its reason in the text)."""


class RspamdLearner:
    """rspamd's controller: POST /learnspam or /learnham with the message (the `Password` header when set)."""

    def __init__(self, controller=DEFAULT_CONTROLLER, password=None, timeout=30, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.controller = controller.rstrip("/")
        self.password = password
        self.timeout = timeout
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def __repr__(self):
        return f"<RspamdLearner {self.controller}>"

    def learn(self, kind, data):
        """
        Deferred firing with rspamd's JSON answer (`already` when it had
        learnt it); fails with L{LearnRefused}, or TimeoutError after
        `timeout` seconds for the whole exchange.
        """
        d = self._ask(kind, data)
        late = []

        def give_up():
            late.append(True)
            d.cancel()

        call = self.reactor.callLater(self.timeout, give_up)

        def done(result):
            if call.active():
                call.cancel()
            if late and isinstance(result, Failure):
                # twisted.web reports the cancelled request as ResponseNeverReceived: say why.
                raise defer.TimeoutError(f"{self.controller} did not answer in {self.timeout}s")
            return result

        return d.addBoth(done)

    @defer.inlineCallbacks
    def _ask(self, kind, data):
        headers = Headers({b"Content-Type": [b"message/rfc822"]})
        if self.password:
            headers.setRawHeaders(b"Password", [self.password.encode("utf-8")])
        url = f"{self.controller}/learn{kind}".encode("ascii")
        response = yield self.agent.request(b"POST", url, headers, FileBodyProducer(_bytes_io(data)))
        body = yield readBody(response)
        try:
            answer = json.loads(body[:REPLY_LIMIT])
        except ValueError:
            answer = {"error": body[:200].decode("utf-8", "replace")}
        if response.code == 208:
            # "already learned as <kind>": a client that moves into Junk and sets $Junk asks twice.
            return {"success": True, "already": True}
        if response.code != 200 or not isinstance(answer, dict) or not answer.get("success", False):
            why = answer.get("error") if isinstance(answer, dict) else answer
            raise LearnRefused(f"HTTP {response.code}: {why}")
        return answer


@implementer(IMailboxEvents)
class JunkLearning:
    """
    Turns a user's moves into and out of the Junk folder into learning
    (`learner`, an L{RspamdLearner}; None: no learning) and, out of Junk,
    the sender onto the user's allow list (`lists`; None: not).
    """

    def __init__(self, learner, lists=None, junk="Junk"):
        self.learner = learner
        self.lists = lists
        self.junk = junk.lower()
        self.pending = set()  # Deferreds of work started and not done (for tests and shutdown)
        self._tails = {}  # user -> the Deferred of their last lesson not yet done
        self._learnt = collections.OrderedDict()  # (user, sha256 of the message) -> kind, the latest last

    def __repr__(self):
        return f"<JunkLearning {self.learner!r} lists={self.lists is not None}>"

    def _is_junk(self, folder):
        return folder.name.lower() == self.junk

    # --- IMailboxEvents --------------------------------------------------

    def copied(self, account, source, target, pairs, moved):
        into, out = self._is_junk(target), self._is_junk(source)
        if into == out or not pairs:
            return None
        if out and target.name.lower() in NOT_HAM_TARGETS:
            return None
        # The messages are read from where they are now.
        return self._start(account.address, SPAM if into else HAM, target, [new for _, new in pairs])

    def flags_stored(self, account, folder, uids, flags, mode):
        if mode == "-":
            return None
        lowered = {f.lower() for f in flags}
        if JUNK_KEYWORD in lowered and NOT_JUNK_KEYWORD not in lowered:
            return self._start(account.address, SPAM, folder, uids)
        if NOT_JUNK_KEYWORD in lowered and JUNK_KEYWORD not in lowered:
            return self._start(account.address, HAM, folder, uids)
        return None

    # --- the work, after the IMAP answer ----------------------------------

    def _start(self, user, kind, folder, uids):
        """
        One user's lessons go one after another, in the order of the
        commands: a client that sets $Junk and then MOVEs into Junk asks
        rspamd once (L{_remember}), and a message moved into Junk and
        back out is learnt as spam, then as ham.
        """
        done = defer.Deferred()

        def run(_=None):
            d = self._learn_all(user, kind, folder, list(uids))
            d.addErrback(lambda f: log.failure("junk learning: {user}: failed", f, user=user))
            d.addBoth(lambda _: done.callback(None))

        def finished(result):
            if self._tails.get(user) is done:
                del self._tails[user]
            self.pending.discard(done)
            return result

        previous = self._tails.get(user)
        self._tails[user] = done
        self.pending.add(done)
        done.addBoth(finished)
        if previous is None:
            run()
        else:
            previous.addBoth(lambda result: (run(), result)[1])
        return done

    @defer.inlineCallbacks
    def _learn_all(self, user, kind, folder, uids):
        for uid in uids:
            try:
                data = yield _read(folder, uid)
            except Exception as e:
                # Moved on or expunged since: a later event (the MOVE) learns it from there.
                log.info("junk learning: {user}: cannot read message {uid} of {folder}: {e}",
                         user=user, uid=uid, folder=folder.name, e=e)
                continue
            if data is None:
                continue
            key = (user, hashlib.sha256(data).digest())
            if self.learner is not None and self._learnt.get(key) != kind:
                try:
                    yield self.learner.learn(kind, data)
                    self._remember(key, kind)
                    log.info("junk learning: {user}: message {uid} of {folder} learnt as {kind}",
                             user=user, uid=uid, folder=folder.name, kind=kind)
                except Exception as e:
                    # One line: rspamd down or refusing costs only this lesson.
                    log.warn("junk learning: {user}: {learner!r} did not learn message {uid} as {kind}: {e}",
                             user=user, learner=self.learner, uid=uid, kind=kind, e=f"{e.__class__.__name__}: {e}")
            if kind == HAM and self.lists is not None:
                yield self._allow(user, data)

    def _remember(self, key, kind):
        """
        What was learnt lately, so a client that sets $Junk and MOVEs into
        Junk asks once (rspamd notes what it learnt only after answering).
        """
        self._learnt[key] = kind
        self._learnt.move_to_end(key)
        while len(self._learnt) > REMEMBERED:
            self._learnt.popitem(last=False)

    @defer.inlineCallbacks
    def _allow(self, user, data):
        from mailplat.spam.lists import ALLOW, ListError

        sender = sender_of(data)
        if not sender:
            return
        try:
            added = yield self.lists.add_in_thread(user, ALLOW, sender)
        except (ListError, OSError) as e:
            log.warn("junk learning: {user}: cannot allow-list {sender}: {e}", user=user, sender=sender, e=e)
            return
        if added:
            log.info("junk learning: {user}: {sender} allow-listed (moved out of Junk)", user=user, sender=sender)


def sender_of(data):
    """
    The sender to allow-list: the envelope sender (Return-Path, what the
    lists are matched against at delivery), else the From address.
    """
    header = data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
    for name in ("Return-Path", "From"):
        value = message.get(name)
        if value:
            address = email.utils.parseaddr(str(value))[1].strip().lower()
            if "@" in address:
                return address
    return None


def _read(folder, uid):
    """The message's bytes, read in a thread (None when it is gone or too large)."""
    d = defer.maybeDeferred(folder.open, uid)

    def read(f):
        with f:
            data = f.read(MAX_MESSAGE + 1)
        return None if len(data) > MAX_MESSAGE else data

    return d.addCallback(lambda f: threads.deferToThread(read, f))


def _bytes_io(data):
    import io

    return io.BytesIO(data)


def from_checks(enabled_checks, lists):
    """
    The Junk learning observers for the enabled checks that can learn
    (those with a `junk_learning` attribute, the rspamd plugin's), or [].
    """
    observers = []
    for enabled in enabled_checks:
        settings = getattr(enabled.check, "junk_learning", None)
        if settings is None:
            continue
        learner = settings.get("learner")
        allow = lists if settings.get("allow_on_not_junk") else None
        if learner is not None or allow is not None:
            observers.append(JunkLearning(learner, allow, settings.get("folder", "Junk")))
    return observers


def rspamd_from_section(section, context):
    """
    The rspamd check (mailplat.spam.rspamd) with what its learning needs
    (`learn`, `controller`, `password`, `allow_on_not_junk`) noted on it
    as `junk_learning`, for the service to register (L{from_checks}).
    """
    from mailplat.spam import rspamd

    controller = section.get("controller", DEFAULT_CONTROLLER)
    if not controller.startswith(("http://", "https://")):
        raise ValueError(f"controller: the address of rspamd's controller worker, e.g. {DEFAULT_CONTROLLER!r}, "
                         f"not {controller!r}")
    check = rspamd.from_section(section, context)
    learner = RspamdLearner(controller, section.get("password")) if section.get("learn", False) else None
    check.junk_learning = {
        "learner": learner,
        "allow_on_not_junk": section.get("allow_on_not_junk", True),
        "folder": section.get("folder", "Junk"),
    }
    return check
