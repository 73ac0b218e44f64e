"""
Running as a service user (issue 12, item 7): `[server] user`/`group` or
twistd's -u/-g. Started as root, `twistd -n mailplat` binds its ports,
gives state_dir and what is under it to the user, makes every file as that
user and serves as it; a file the user cannot read stops start-up with one
line naming it (exit 2), never a 451 to every sender later. A passwd-file
that cannot be read at run time is logged with its path each time.

The tests that switch users need root (CI runs as root) and a user to
switch to (`nobody`); they skip with the reason otherwise. The server runs
as that user, so its interpreter must be one the user can read: when this
one is not (it lives under a directory only root may enter), the same
Python version is looked for on PATH and in /usr/local/bin and /usr/bin
(the virtualenv's packages are put on its path), or MAILPLAT_TEST_PYTHON
names one.
"""

import grp
import os
import pwd
import shutil
import signal
import site
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from tests.helpers import MailServer, free_port, in_thread

TWISTD_CODE = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
[server]
hostname = "mail.example.test"
state_dir = "var"
{server}

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port={smtp}:interface=127.0.0.1"
pop3 = "tcp:port={pop3}:interface=127.0.0.1"

[realm]
backend = "passwd-file"
{realm}
"""


def _service_user():
    """(uid, gid, user name, group name) of `nobody`, or None."""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid, pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name


def _giving_needs_root():
    """L{_service_user}, or SkipTest when not root or there is no `nobody` to give files to."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("giving files to another user needs root (CI runs as root)")
    user = _service_user()
    if user is None:
        raise unittest.SkipTest("no `nobody` user")
    return user


def _temporary_dir(case):
    """A new directory, removed when `case` ends."""
    directory = tempfile.mkdtemp(prefix="mailplat-privileges-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def _environment():
    # Only the checkout and the virtualenv's packages: an inherited PYTHONPATH
    # (trial -j puts this interpreter's whole sys.path there) could bring in
    # a standard library the service user cannot read.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([REPO, *site.getsitepackages()])
    return env


_interpreters = {}


def _candidates():
    """MAILPLAT_TEST_PYTHON, this interpreter, then the same Python version on PATH and in the usual places."""
    yield from filter(None, [os.environ.get("MAILPLAT_TEST_PYTHON"), sys.executable])
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    places = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/local/bin", "/usr/bin"]
    for place in dict.fromkeys(places):
        python = os.path.join(place, name) if place else None
        if python and os.access(python, os.X_OK) and "shims" not in place:
            yield python


def interpreter_for(uid, gid):
    """A Python that `uid` can run with mailplat and Twisted importable, or None."""
    if (uid, gid) in _interpreters:
        return _interpreters[uid, gid]
    found = None
    for python in _candidates():
        try:
            done = subprocess.run(
                [python, "-c", "import gzip, twisted.scripts.twistd, mailplat.service, prometheus_client"],
                user=uid, group=gid, extra_groups=[], env=_environment(), cwd="/", capture_output=True, timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            found = python
            break
    _interpreters[uid, gid] = found
    return found


class ServiceUserCase(unittest.TestCase):
    """A server directory anyone may enter, and twistd run from it."""

    def setUp(self):
        self.dir = _temporary_dir(self)
        os.chmod(self.dir, 0o755)
        self.config = os.path.join(self.dir, "mailplat.toml")
        self.log = os.path.join(self.dir, "twistd.out")
        self.smtp, self.pop3 = free_port(), free_port()
        self.python = sys.executable

    def need_root_and_user(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("switching users needs root (CI runs these as root)")
        user = _service_user()
        if user is None:
            raise unittest.SkipTest("no `nobody` user to switch to")
        self.uid, self.gid, self.user, self.group = user
        python = interpreter_for(self.uid, self.gid)
        if python is None:
            raise unittest.SkipTest(
                f"{self.user} cannot run {sys.executable} (set MAILPLAT_TEST_PYTHON to a Python {self.user} can read)"
            )
        self.python = python

    def write_config(self, server="", realm='path = "var/users"'):
        with open(self.config, "w") as f:
            f.write(CONFIG.format(server=server, realm=realm, smtp=self.smtp, pop3=self.pop3))

    def write_users(self, path, mode=0o600):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("alice@example.test:{PLAIN}alice-pw\n")
        os.chmod(path, mode)

    def command(self, *twistd_args):
        return [self.python, "-c", TWISTD_CODE, "-n", "--pidfile=", *twistd_args, "mailplat", "--config", self.config]

    def run_twistd(self, *twistd_args, **popen):
        done = subprocess.run(self.command(*twistd_args), cwd=self.dir, env=_environment(), capture_output=True,
                              text=True, timeout=60, **popen)
        return done.returncode, done.stdout + done.stderr

    def start_twistd(self, *twistd_args):
        out = open(self.log, "wb")
        self.addCleanup(out.close)
        proc = subprocess.Popen(self.command(*twistd_args), cwd=self.dir, env=_environment(), stdout=out,
                                stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

        self.addCleanup(stop)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                self.fail(f"twistd exited with {proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.fail(f"twistd did not greet on {self.smtp}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.smtp), timeout=1) as s:
                    s.settimeout(10)
                    if s.recv(1):
                        return proc
            except OSError:
                time.sleep(0.05)

    def output(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def ids(self, pid):
        """(real, effective, saved uids), (the same gids), supplementary gids of a running process."""
        fields = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        return [int(v) for v in fields["Uid"][:3]], [int(v) for v in fields["Gid"][:3]], [int(v) for v in fields["Groups"]]

    def owner(self, *parts):
        st = os.stat(os.path.join(self.dir, *parts))
        return st.st_uid, st.st_gid

    def send_mail(self):
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=10) as s:
            s.sendmail("carol@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nhello\r\n")


class ServerUser(ServiceUserCase):
    def test_serves_as_the_user_with_no_root_id_left(self):
        self.need_root_and_user()
        self.write_users(os.path.join(self.dir, "var", "users"))
        self.write_config(server=f'user = "{self.user}"')
        proc = self.start_twistd()
        uids, gids, groups = self.ids(proc.pid)
        self.assertEqual(uids, [self.uid] * 3)
        self.assertEqual(gids, [self.gid] * 3)
        self.assertNotIn(0, groups)

    def test_mail_and_state_files_it_makes_belong_to_the_user(self):
        self.need_root_and_user()
        self.write_users(os.path.join(self.dir, "var", "users"))
        self.write_config(server=f'user = "{self.user}"\ngroup = "{self.group}"')
        self.start_twistd()
        self.send_mail()
        new = os.path.join(self.dir, "var", "mail", "example.test", "alice", "new")
        (name,) = os.listdir(new)
        self.assertEqual(self.owner(new, name), (self.uid, self.gid))
        self.assertEqual(self.owner("var", "mail", "example.test"), (self.uid, self.gid))
        self.assertEqual(self.owner("var", "tls", "key.pem"), (self.uid, self.gid))
        self.assertEqual(self.owner("var"), (self.uid, self.gid))

    def test_a_root_owned_passwd_file_in_state_dir_is_given_to_the_user(self):
        # The case: made by root (mode 0600), and every login failed.
        self.need_root_and_user()
        self.write_users(os.path.join(self.dir, "var", "users"))
        self.assertEqual(self.owner("var", "users"), (0, 0))
        self.write_config(server=f'user = "{self.user}"')
        self.start_twistd()
        self.assertEqual(self.owner("var", "users"), (self.uid, self.gid))
        self.send_mail()  # RCPT reads the passwd-file: a 451 raises here

    def test_state_dir_that_does_not_exist_is_created_for_the_user(self):
        self.need_root_and_user()
        etc = os.path.join(self.dir, "etc")
        self.write_users(os.path.join(etc, "users"), mode=0o644)
        self.write_config(server=f'user = "{self.user}"', realm=f'path = "{etc}/users"')
        self.start_twistd()
        self.assertEqual(self.owner("var"), (self.uid, self.gid))
        self.assertEqual(os.stat(os.path.join(self.dir, "var")).st_mode & 0o777, 0o700)

    def test_an_unreadable_passwd_file_outside_state_dir_stops_startup_naming_it(self):
        self.need_root_and_user()
        etc = os.path.join(self.dir, "etc")
        users = os.path.join(etc, "users")
        self.write_users(users, mode=0o600)  # root's, outside state_dir: not ours to change
        self.write_config(server=f'user = "{self.user}"', realm=f'path = "{users}"')
        status, out = self.run_twistd()
        self.assertEqual(status, 2, out)
        self.assertIn("realm.path", out)
        self.assertIn(users, out)
        self.assertIn("Permission denied", out)
        self.assertNotIn("Traceback", out)
        self.assertEqual(self.owner("etc", "users"), (0, 0))

    def test_twistd_u_and_g_do_the_same_as_server_user(self):
        self.need_root_and_user()
        self.write_users(os.path.join(self.dir, "var", "users"))
        self.write_config()
        proc = self.start_twistd("-u", str(self.uid), "-g", str(self.gid))
        self.send_mail()
        self.assertEqual(self.ids(proc.pid)[0], [self.uid] * 3)
        self.assertEqual(self.owner("var", "users"), (self.uid, self.gid))
        new = os.path.join(self.dir, "var", "mail", "example.test", "alice", "new")
        (name,) = os.listdir(new)
        self.assertEqual(self.owner(new, name), (self.uid, self.gid))
        self.assertNotIn("should we be root", self.output())

    def test_server_user_and_twistd_u_naming_different_users_are_refused(self):
        self.need_root_and_user()
        self.write_config(server=f'user = "{self.user}"')
        status, out = self.run_twistd("-u", "0")
        self.assertEqual(status, 2, out)
        self.assertIn("server.user", out)
        self.assertIn("twistd -u", out)

    def test_started_as_another_user_it_cannot_switch_and_says_so(self):
        self.need_root_and_user()
        self.write_config(server='user = "root"')
        status, out = self.run_twistd(user=self.uid, group=self.gid, extra_groups=[])
        self.assertEqual(status, 2, out)
        self.assertIn("server.user", out)
        self.assertIn("not root", out)
        self.assertNotIn("Traceback", out)

    def test_started_as_the_user_with_a_root_only_state_dir_stops_naming_it(self):
        # systemd User=mailplat over a state_dir an earlier root start made.
        self.need_root_and_user()
        state = os.path.join(self.dir, "var")
        self.write_users(os.path.join(state, "users"))
        os.chmod(state, 0o700)
        self.write_config()
        status, out = self.run_twistd(user=self.uid, group=self.gid, extra_groups=[])
        self.assertEqual(status, 2, out)
        self.assertIn("server.state_dir", out)
        self.assertIn(state, out)
        self.assertNotIn("Traceback", out)

    def test_an_unknown_user_is_named(self):
        self.write_config(server='user = "no-such-mailplat-user"')
        status, out = self.run_twistd()
        self.assertEqual(status, 2, out)
        self.assertIn("server.user", out)
        self.assertIn("no-such-mailplat-user", out)

    def test_a_group_without_a_user_is_refused(self):
        self.write_config(server='group = "nogroup"')
        status, out = self.run_twistd()
        self.assertEqual(status, 2, out)
        self.assertIn("server.group", out)


class UnreadablePasswdFileAtRunTime(unittest.TestCase):
    """Item 2: every 4xx for an unreadable passwd-file is logged with the file and the reason."""

    @defer.inlineCallbacks
    def test_each_tempfail_is_logged_naming_the_file(self):
        server = MailServer(self, listeners=("smtp",))
        yield server.start(users={"alice@example.test": "pw"})
        users = os.path.join(server.state, "users")
        os.unlink(users)
        os.mkdir(users)  # unreadable as a file, even for root
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def rcpt():
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
                s.ehlo("client.test")
                s.mail("carol@remote.test")
                return [s.rcpt("alice@example.test"), s.rcpt("alice@example.test")]

        answers = yield in_thread(rcpt)
        for code, text in answers:
            self.assertEqual(code, 451)
            self.assertNotIn(users.encode(), text)  # the path is for the operator, not the client
        lines = [e for e in events if e.get("oplog_event") == "file-error"]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[0]["oplog_fields"]["file"], users)
        self.assertEqual(lines[0]["oplog_fields"]["kind"], "passwd-file")
        self.assertTrue(lines[0]["oplog_fields"]["reason"])


UNIT = os.path.join(REPO, "etc", "mailplat.service")


class SystemdUnit(unittest.TestCase):
    """etc/mailplat.service: the unit docs/operating.md installs."""

    def unit(self):
        with open(UNIT) as f:
            return f.read()

    def settings(self):
        out = {}
        for line in self.unit().splitlines():
            if line and not line.startswith(("#", "[")) and "=" in line:
                key, _, value = line.partition("=")
                out.setdefault(key, []).append(value)
        return out

    def test_runs_twistd_in_the_foreground_with_the_etc_config(self):
        (start,) = self.settings()["ExecStart"]
        words = start.split()
        self.assertTrue(words[0].endswith("/twistd"))
        self.assertIn("-n", words)
        self.assertEqual(words[words.index("mailplat") + 1:], ["--config", "/etc/mailplat/mailplat.toml"])

    def test_binds_low_ports_as_its_user_by_capability(self):
        s = self.settings()
        self.assertEqual(s["User"], ["mailplat"])
        self.assertEqual(s["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"])
        self.assertEqual(s["NoNewPrivileges"], ["yes"])
        self.assertEqual(s["ProtectSystem"], ["strict"])
        self.assertIn("/var/lib/mailplat", s["ReadWritePaths"])

    def test_systemd_analyze_verify_finds_nothing_to_say(self):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        # Its commands must exist to be verified: this virtualenv's.
        bin_dir = os.path.dirname(shutil.which("twistd") or sys.executable)
        for command in ("twistd", "mailplat"):
            if not os.access(os.path.join(bin_dir, command), os.X_OK):
                raise unittest.SkipTest(f"no {command} script next to {sys.executable}")
        directory = tempfile.mkdtemp(prefix="mailplat-unit-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "mailplat.service")
        with open(path, "w") as f:
            f.write(self.unit().replace("/opt/mailplat/bin", bin_dir))
        done = subprocess.run([analyze, "verify", path], capture_output=True, text=True, timeout=120)
        problems = [line for line in (done.stdout + done.stderr).splitlines() if "mailplat.service" in line]
        self.assertEqual((done.returncode, problems), (0, []))


class AdminCommandsAsRoot(unittest.TestCase):
    """`mailplat user add` run as root must not leave the server a passwd-file it cannot read."""

    def setUp(self):
        self.uid, self.gid = _giving_needs_root()[:2]
        self.dir = _temporary_dir(self)
        os.chown(self.dir, self.uid, self.gid)
        self.users = os.path.join(self.dir, "users")

    def add(self, address):
        from mailplat.realm import passwords
        from mailplat.realm.passwdfile import PasswdFileRealm

        PasswdFileRealm(self.users).add_user(address, passwords.hash_password("pw", "PLAIN"))

    def test_a_rewritten_passwd_file_keeps_its_owner(self):
        self.add("alice@example.test")
        os.chown(self.users, self.uid, self.gid)
        self.add("bob@example.test")
        st = os.stat(self.users)
        self.assertEqual((st.st_uid, st.st_gid), (self.uid, self.gid))

    def test_a_new_passwd_file_takes_the_owner_of_its_directory(self):
        self.add("alice@example.test")
        st = os.stat(self.users)
        self.assertEqual((st.st_uid, st.st_gid), (self.uid, self.gid))


class CheckConfig(unittest.TestCase):
    def test_an_unknown_server_user_is_a_warning_naming_it(self):
        import contextlib
        import io

        from mailplat import cli

        directory = _temporary_dir(self)
        path = os.path.join(directory, "mailplat.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(server='user = "no-such-mailplat-user"', realm=f'path = "{directory}/users"',
                                  smtp=free_port(), pop3=free_port()).replace('"var"', f'"{directory}/var"'))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = cli.main(["--config", path, "check-config"])
        self.assertEqual(status, 0)
        self.assertIn("warning: server.user: no such user: 'no-such-mailplat-user'", out.getvalue())


class GivingStateDir(unittest.TestCase):
    """privileges.prepare: root's files under state_dir become the user's; nothing outside it does."""

    def setUp(self):
        _giving_needs_root()
        from mailplat import config as configuration
        from mailplat import privileges

        self.privileges = privileges
        self.dir = _temporary_dir(self)
        self.state = os.path.join(self.dir, "var")
        os.makedirs(os.path.join(self.state, "mail", "example.test", "alice", "new"))
        self.outside = os.path.join(self.dir, "outside")
        with open(self.outside, "w") as f:
            f.write("root's\n")
        path = os.path.join(self.dir, "mailplat.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(server='user = "nobody"', realm='path = "var/users"', smtp=1, pop3=2))
        self.config = configuration.load(path, cwd=self.dir)
        self.run_as = privileges.resolve(self.config)

    def test_everything_root_owned_under_state_dir_is_given(self):
        new = os.path.join(self.state, "mail", "example.test", "alice", "new")
        with open(os.path.join(new, "1.msg"), "w") as f:
            f.write("x")
        self.privileges.prepare(self.config, self.run_as)
        for path in (self.state, new, os.path.join(new, "1.msg")):
            self.assertEqual(os.lstat(path).st_uid, self.run_as.uid, path)

    def test_a_symlink_to_a_file_outside_gives_only_the_link(self):
        os.symlink(self.outside, os.path.join(self.state, "users"))
        self.privileges.prepare(self.config, self.run_as)
        self.assertEqual(os.stat(self.outside).st_uid, 0)
        self.assertEqual(os.lstat(os.path.join(self.state, "users")).st_uid, self.run_as.uid)

    def test_a_hard_link_to_a_file_outside_is_left_alone(self):
        os.link(self.outside, os.path.join(self.state, "users"))
        self.privileges.prepare(self.config, self.run_as)
        self.assertEqual(os.stat(self.outside).st_uid, 0)
