"""
Learning from the Junk folder (docs/check-rspamd.md, "Learning"): a
message a user moves into Junk over IMAP (MOVE, COPY, STORE $Junk) is
learnt by rspamd as spam, one moved out (or marked $NotJunk) as ham and
its sender allow-listed, after the IMAP answer and never failing it.

Against a real rspamd (Debian's package) with its Redis backend
(redis-server), both started here on free loopback ports from a directory
of their own, the controller behind a password; and against a stand-in
controller for what a real one is not easily made to do (never answer).
Without rspamd or redis-server the real tests skip, or fail when
MAILPLAT_TEST_RSPAMD_REQUIRED=1.
"""

import atexit
import imaplib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mailplat.spam.learn import JunkLearning, LearnRefused, RspamdLearner, sender_of
from mailplat.spam.lists import ALLOW, SenderLists
from tests.helpers import MailServer, client_tls, collect_log, free_port, in_thread
from tests.test_check_rspamd import ANSWER, REQUIRED, START_LIMIT, rspamd_binary, start_fake

PASSWORD = "learn-secret"
WORDS = (
    "account action address advice agreement answer april autumn balance bank benefit board bonus "
    "budget business button cash chance claim client company contract credit customer deal delivery "
    "deposit discount dollar email exclusive expire family finance free friend fund garden gift global "
    "guarantee holiday income insurance interest invest invoice limited loan lottery luxury market "
    "medicine member million money monthly offer online order package partner payment percent pills "
    "premium price prize profit promotion purchase quality rate receive refund reward risk sale save "
    "secret secure service shipping special status stock subscribe success summer supply support "
    "transfer trial unique update urgent value verify wallet watch weekly winner wire yearly"
).split()


def message(sender="promo@offers.test", envelope_sender=None, subject="your reward"):
    """A real-sized message (rspamd's bayes wants enough tokens), unique each time (a new Message-ID)."""
    token = "%016x" % random.getrandbits(64)
    rnd = random.Random(token)
    lines = [" ".join(rnd.choice(WORDS) for _ in range(14)) for _ in range(25)]
    head = ""
    if envelope_sender:
        head += f"Return-Path: <{envelope_sender}>\r\n"
    head += (f"From: Offers <{sender}>\r\nTo: alice@example.test\r\nSubject: {subject} {token[:6]}\r\n"
             f"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{token}@offers.test>\r\n"
             "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    return (head + "\r\n".join(lines) + "\r\n").encode()


def redis_command(port, *args):
    """One command to Redis over its protocol (RESP): the reply as str, int, list or None."""
    request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        f = s.makefile("rb")

        def reply():
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b"-"):
                return rest.decode()
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            if kind == b"*":
                return [reply() for _ in range(int(rest))]
            raise AssertionError(f"Redis said {line!r}")

        return reply()


class LearningRspamd:
    """One redis-server and one rspamd (bayes in that Redis, controller with a password) for this process."""

    instance = None

    def __init__(self):
        binary, redis = rspamd_binary(), shutil.which("redis-server")
        if binary is None or redis is None:
            text = "rspamd and redis-server are needed (Debian: apt-get install rspamd redis-server)"
            if REQUIRED:
                raise AssertionError(text + " and MAILPLAT_TEST_RSPAMD_REQUIRED=1")
            raise unittest.SkipTest(text)
        self.dir = tempfile.mkdtemp(prefix="mailplat-rspamd-learn-")
        self.processes = []
        self.redis_port = free_port()
        self.processes.append(subprocess.Popen(
            [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cache = os.environ.get("MAILPLAT_TEST_RSPAMD_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "mailplat-tests", "rspamd-db")
        os.makedirs(cache, exist_ok=True)
        for sub in ("local.d", "override.d", "run"):
            os.makedirs(os.path.join(self.dir, sub))
        self.port, self.controller_port = free_port(), free_port()
        files = {
            "local.d/worker-normal.inc": f'bind_socket = "127.0.0.1:{self.port}";\n',
            "local.d/worker-proxy.inc": f'bind_socket = "127.0.0.1:{free_port()}";\n',
            # Loopback is not trusted, so the password is what lets us learn.
            "override.d/worker-controller.inc": (
                f'bind_socket = "127.0.0.1:{self.controller_port}";\n'
                f'password = "{PASSWORD}";\nenable_password = "{PASSWORD}";\nsecure_ip = "192.0.2.254";\n'),
            "local.d/options.inc": 'dns { nameserver = ["127.0.0.1:9"]; timeout = 0.5s; retransmits = 1; }\n',
            "local.d/redis.conf": f'servers = "127.0.0.1:{self.redis_port}";\n',
            "local.d/classifier-bayes.conf": 'backend = "redis";\n',
        }
        for name, text in files.items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        self.log = open(os.path.join(self.dir, "out.log"), "wb")
        self.processes.append(subprocess.Popen(
            [binary, "-f", "-i", "-c", "/etc/rspamd/rspamd.conf", "--var", f"LOCAL_CONFDIR={self.dir}",
             "--var", f"DBDIR={cache}", "--var", f"RUNDIR={self.dir}/run", "--var", f"LOGDIR={self.dir}"],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT))
        atexit.register(self.stop)
        self._wait()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def controller(self):
        return f"http://127.0.0.1:{self.controller_port}"

    def _wait(self):
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise AssertionError(f"{process.args[0]} exited with {process.returncode}")
            try:
                with urllib.request.urlopen(self.controller + "/ping", timeout=2) as r:
                    if b"pong" in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"rspamd did not answer /ping in {START_LIMIT}s")

    def learns(self, kind):
        """How many messages rspamd's bayes holds as learnt `kind` (spam or ham), from its Redis."""
        value = redis_command(self.redis_port, "HGET", "RS", f"learns_{kind}")
        return int(value or 0)

    def stop(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.log.close()
        shutil.rmtree(self.dir, True)

    @classmethod
    def get(cls):
        if cls.instance is None:
            cls.instance = cls()
        return cls.instance


CHECKS = """
[checks]
enabled = ["rspamd"]

[checks.rspamd]
url = "{url}"
learn = {learn}
controller = "{controller}"
password = "{password}"
allow_on_not_junk = {allow}
"""


class IMAPUser:
    """alice over IMAPS (imaplib), with a Junk folder and a Trash folder."""

    def __init__(self, port):
        self.client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=20)
        self.client.login("alice@example.test", "pw")
        for folder in ("Junk", "Trash"):
            self.client.create(folder)

    def append(self, folder, data):
        """Put a message into `folder`; its UID there."""
        typ, answer = self.client.append(folder, None, None, data)
        assert typ == "OK", answer
        return answer[0].split(b"APPENDUID ")[1].split(b"]")[0].split()[1].decode()

    def command(self, folder, *command):
        """SELECT `folder`, then run `command` (a UID command): the tagged answer's (type, text)."""
        typ, answer = self.client.select(folder)
        assert typ == "OK", answer
        return self.client.uid(*command)

    def close(self):
        try:
            self.client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def as_user(port, work):
    """Run `work(IMAPUser)` in the thread of a blocking client; its result."""
    user = IMAPUser(port)
    try:
        return work(user)
    finally:
        user.close()


@defer.inlineCallbacks
def until(condition, what, limit=20.0):
    """Wait (without blocking the reactor) until `condition()` is true; fail naming `what` after `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        value = yield in_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"after {limit}s: {what}")
        yield deferLater(reactor, 0.1, lambda: None)


def observers(server):
    """The Junk learning observers the service gave its IMAP ports."""
    found = []
    for svc in server.service:
        factory = getattr(svc, "factory", None)
        factory = getattr(factory, "wrappedFactory", factory)
        found += [o for o in getattr(factory, "mailbox_events", ()) if isinstance(o, JunkLearning)]
    return found


@defer.inlineCallbacks
def settled(server):
    """Wait until every learning the IMAP commands started is done."""
    while any(o.pending for o in observers(server)):
        yield defer.DeferredList([d for o in observers(server) for d in list(o.pending)])


@defer.inlineCallbacks
def start_server(testcase, url, controller, password=PASSWORD, learn="true", allow="true"):
    server = MailServer(testcase, listeners=("imaps",), extra=CHECKS.format(
        url=url, controller=controller, password=password, learn=learn, allow=allow))
    yield server.start(users={"alice@example.test": "pw"})
    return server


class AgainstRealRspamd(unittest.TestCase):
    """IMAP moves into and out of Junk, learnt by a real rspamd (one for the whole class)."""

    @defer.inlineCallbacks
    def setUp(self):
        self.rspamd = yield in_thread(LearningRspamd.get)
        self.server = yield start_server(self, self.rspamd.url, self.rspamd.controller)
        self.port = self.server.port("imaps")
        self.lists = SenderLists.in_state_dir(self.server.state)

    @defer.inlineCallbacks
    def learnt(self, kind, before):
        yield until(lambda: self.rspamd.learns(kind) > before, f"rspamd has not learnt a message as {kind}")
        yield settled(self.server)

    @defer.inlineCallbacks
    def test_a_message_moved_into_junk_is_learnt_as_spam(self):
        before = yield in_thread(self.rspamd.learns, "spam")

        def move(user):
            uid = user.append("INBOX", message())
            return user.command("INBOX", "MOVE", uid, "Junk")

        typ, _ = yield in_thread(as_user, self.port, move)
        self.assertEqual(typ, "OK")
        yield self.learnt("spam", before)

    @defer.inlineCallbacks
    def test_a_message_moved_out_of_junk_is_learnt_as_ham_and_its_sender_allow_listed(self):
        before = yield in_thread(self.rspamd.learns, "ham")

        def move(user):
            uid = user.append("Junk", message("news@gitlab.test", envelope_sender="bounce-1234@gitlab.test"))
            return user.command("Junk", "MOVE", uid, "INBOX")

        typ, _ = yield in_thread(as_user, self.port, move)
        self.assertEqual(typ, "OK")
        yield self.learnt("ham", before)
        # The envelope sender, what delivery matches the lists against.
        self.assertEqual(self.lists.verdict("alice@example.test", "bounce-1234@gitlab.test"), ALLOW)
        self.assertEqual(self.lists.show("alice@example.test")["allow"], ["bounce-1234@gitlab.test"])

    @defer.inlineCallbacks
    def test_copy_into_junk_then_expunge_is_learnt_as_spam(self):
        before = yield in_thread(self.rspamd.learns, "spam")

        def copy(user):
            uid = user.append("INBOX", message())
            typ, _ = user.command("INBOX", "COPY", uid, "Junk")
            user.client.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
            user.client.expunge()
            return typ

        self.assertEqual((yield in_thread(as_user, self.port, copy)), "OK")
        yield self.learnt("spam", before)

    @defer.inlineCallbacks
    def test_the_junk_keyword_is_spam_and_not_junk_is_ham(self):
        spam, ham = yield in_thread(lambda: (self.rspamd.learns("spam"), self.rspamd.learns("ham")))

        def mark(user, flag):
            uid = user.append("INBOX", message("friend@pals.test"))
            return user.command("INBOX", "STORE", uid, "+FLAGS", f"({flag})")

        typ, _ = yield in_thread(as_user, self.port, lambda user: mark(user, "$Junk"))
        self.assertEqual(typ, "OK")
        yield self.learnt("spam", spam)
        typ, _ = yield in_thread(as_user, self.port, lambda user: mark(user, "$NotJunk"))
        self.assertEqual(typ, "OK")
        yield self.learnt("ham", ham)
        self.assertEqual(self.lists.verdict("alice@example.test", "friend@pals.test"), ALLOW)

    @defer.inlineCallbacks
    def test_moving_into_junk_and_setting_junk_is_learnt_once_without_complaint(self):
        texts = collect_log(self)
        before = yield in_thread(self.rspamd.learns, "spam")

        def both(user):
            uid = user.append("INBOX", message())
            user.command("INBOX", "STORE", uid, "+FLAGS", "($Junk)")
            return user.command("INBOX", "MOVE", uid, "Junk")[0]

        self.assertEqual((yield in_thread(as_user, self.port, both)), "OK")
        yield self.learnt("spam", before)
        yield settled(self.server)
        self.assertEqual((yield in_thread(self.rspamd.learns, "spam")), before + 1)
        self.assertEqual([t for t in texts if "did not learn" in t], [])

    @defer.inlineCallbacks
    def test_a_wrong_password_is_logged_and_the_imap_command_still_succeeds(self):
        texts = collect_log(self)
        server = yield start_server(self, self.rspamd.url, self.rspamd.controller, password="wrong")
        before = yield in_thread(self.rspamd.learns, "spam")

        def move(user):
            uid = user.append("INBOX", message())
            answer = user.command("INBOX", "MOVE", uid, "Junk")
            return answer, user.client.noop()[0]

        (typ, _), noop = yield in_thread(as_user, server.port("imaps"), move)
        self.assertEqual((typ, noop), ("OK", "OK"))
        yield until(lambda: any("did not learn" in t for t in texts), "no log line for the refused learning")
        yield settled(server)
        (line,) = [t for t in texts if "did not learn" in t]
        self.assertIn("Unauthorized", line)
        self.assertEqual((yield in_thread(self.rspamd.learns, "spam")), before)
        self.assertEqual(self.flushLoggedErrors(), [])


class WithAStandIn(unittest.TestCase):
    """Against a stand-in controller: what rspamd is told, and what is not learnt."""

    @defer.inlineCallbacks
    def setUp(self):
        self.fake = start_fake(self, {"success": True})
        self.server = yield start_server(self, self.fake.url, self.fake.url + "/")
        self.port = self.server.port("imaps")
        self.lists = SenderLists.in_state_dir(self.server.state)
        self.addCleanup(self._answer_pending)

    def _answer_pending(self):
        for request in self.fake.pending:
            if not request.finished and not request._disconnected:
                request.write(b'{"success": true}')
                request.finish()
        return settled(self.server)

    @defer.inlineCallbacks
    def test_learning_never_slows_the_imap_command(self):
        self.fake.silent = True  # the controller never answers
        data = message()

        def move(user):
            uid = user.append("INBOX", data)
            typ, _ = user.command("INBOX", "MOVE", uid, "Junk")
            return typ, user.client.noop()[0]

        self.assertEqual((yield in_thread(as_user, self.port, move)), ("OK", "OK"))
        yield until(lambda: self.fake.requests, "the controller was not asked")
        ((path, headers, body),) = self.fake.requests
        self.assertEqual(path, b"/learnspam")
        self.assertEqual(headers.getRawHeaders(b"Password"), [PASSWORD.encode()])
        self.assertEqual(body.replace(b"\r\n", b"\n"), data.replace(b"\r\n", b"\n"))
        self.assertEqual(len(self.fake.pending), 1)  # still unanswered: the IMAP answer did not wait

    @defer.inlineCallbacks
    def test_moving_junk_to_trash_is_no_verdict(self):
        def moves(user):
            first = user.append("Junk", message("a@one.test"))
            second = user.append("Junk", message("b@two.test"))
            user.command("Junk", "MOVE", first, "Trash")
            user.command("Junk", "MOVE", second, "INBOX")

        yield in_thread(as_user, self.port, moves)
        yield until(lambda: self.fake.requests, "the controller was not asked")
        yield settled(self.server)
        self.assertEqual([r[0] for r in self.fake.requests], [b"/learnham"])
        self.assertIn(b"b@two.test", self.fake.requests[0][2])
        self.assertIsNone(self.lists.verdict("alice@example.test", "a@one.test"))
        self.assertEqual(self.lists.verdict("alice@example.test", "b@two.test"), ALLOW)

    @defer.inlineCallbacks
    def test_moves_between_other_folders_are_not_learnt(self):
        def moves(user):
            uid = user.append("INBOX", message())
            user.command("INBOX", "MOVE", uid, "Trash")
            uid = user.append("Junk", message("c@three.test"))
            user.command("Junk", "COPY", uid, "INBOX")

        yield in_thread(as_user, self.port, moves)
        yield until(lambda: self.fake.requests, "the controller was not asked")
        yield settled(self.server)
        self.assertEqual([r[0] for r in self.fake.requests], [b"/learnham"])


class Configured(unittest.TestCase):
    """`learn` and `allow_on_not_junk` each on their own."""

    @defer.inlineCallbacks
    def test_allow_on_not_junk_without_learning(self):
        fake = start_fake(self, {"success": True})
        server = yield start_server(self, fake.url, fake.url, learn="false", allow="true")

        def move(user):
            uid = user.append("Junk", message("d@four.test"))
            return user.command("Junk", "MOVE", uid, "INBOX")

        yield in_thread(as_user, server.port("imaps"), move)
        yield settled(server)
        lists = SenderLists.in_state_dir(server.state)
        self.assertEqual(lists.verdict("alice@example.test", "d@four.test"), ALLOW)
        self.assertEqual(fake.requests, [])

    @defer.inlineCallbacks
    def test_learning_without_allow_on_not_junk(self):
        fake = start_fake(self, {"success": True})
        server = yield start_server(self, fake.url, fake.url, learn="true", allow="false")

        def move(user):
            uid = user.append("Junk", message("e@five.test"))
            return user.command("Junk", "MOVE", uid, "INBOX")

        yield in_thread(as_user, server.port("imaps"), move)
        yield until(lambda: fake.requests, "the controller was not asked")
        yield settled(server)
        self.assertIsNone(SenderLists.in_state_dir(server.state).verdict("alice@example.test", "e@five.test"))

    @defer.inlineCallbacks
    def test_neither_registers_no_observer(self):
        fake = start_fake(self, ANSWER)
        server = yield start_server(self, fake.url, fake.url, learn="false", allow="false")
        self.assertEqual(observers(server), [])

    def test_an_unknown_key_is_refused(self):
        from mailplat import config as configuration
        from mailplat.service import Backends

        server = MailServer(self, listeners=("imaps",), extra=CHECKS.format(
            url="http://127.0.0.1:1", controller="http://127.0.0.1:2", password="x", learn="true", allow="true")
            + "lern = true\n")
        os.makedirs(server.state, exist_ok=True)
        with open(server.config_path, "w") as f:
            f.write(server.config_text())
        config = configuration.load(server.config_path, cwd=server.dir)
        with self.assertRaises(configuration.ConfigError) as caught:
            Backends(config)
        self.assertIn("checks.rspamd.lern", str(caught.exception))


class Sender(unittest.TestCase):
    def test_the_envelope_sender_first_then_from(self):
        self.assertEqual(sender_of(b"Return-Path: <B@x.test>\nFrom: a@y.test\n\nbody"), "b@x.test")
        self.assertEqual(sender_of(b"From: Someone <A@Y.test>\r\n\r\nbody"), "a@y.test")
        self.assertIsNone(sender_of(b"Return-Path: <>\nSubject: bounce\n\nbody"))


class Learner(unittest.TestCase):
    """The controller client on its own, against a stand-in."""

    @defer.inlineCallbacks
    def test_a_silent_controller_ends_at_the_timeout(self):
        fake = start_fake(self, {"success": True})
        fake.silent = True
        learner = RspamdLearner(fake.url, timeout=0.3)
        yield self.assertFailure(learner.learn("ham", message()), defer.TimeoutError)
        self.assertEqual([r[0] for r in fake.requests], [b"/learnham"])
        self.assertIsNone(fake.requests[0][1].getRawHeaders(b"Password"))

    @defer.inlineCallbacks
    def test_already_learnt_is_no_failure_and_an_error_is_one(self):
        fake = start_fake(self, {"success": True})
        answer = yield RspamdLearner(fake.url, password="pw").learn("spam", message())
        self.assertEqual(answer, {"success": True})
        self.assertEqual(fake.requests[0][1].getRawHeaders(b"Password"), [b"pw"])
        fake.answer = {"error": "Unauthorized"}
        failure = yield self.assertFailure(RspamdLearner(fake.url).learn("spam", message()), LearnRefused)
        self.assertIn("Unauthorized", str(failure))
