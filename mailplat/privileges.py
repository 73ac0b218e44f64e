"""
Running as a service user (`[server] user` / `group`, or twistd's -u/-g):
the ports are bound as root first (mailplat.listeners), then everything the
server makes is made as that user, then root is given up for good.

Under twistd (the only supported way to start the server) the order is:

  1. bind every [listen] port, as root;
  2. L{prepare}: create state_dir (and the mail root when it lies outside
     it) owned by the user, and give the user the files under them still
     owned by root (a start as root before, `mailplat user add` run as
     root): mail, the passwd-file, TLS material, DKIM keys, the queue;
  3. L{acting_as}: with real and effective ids switched to the user (root
     kept as saved id only), L{check_readable} opens each file the server
     reads and L{mailplat.service.make_service} builds the server, so every
     file it creates belongs to the user and a file the user cannot read
     stops start-up with one line naming it (exit 2);
  4. root comes back only for twistd to write its pid and log files as
     usual, then twistd's own switch (setgid, initgroups, setuid) drops it
     for good before the reactor runs: no connection is served as root.

`[server] user` and twistd's -u/-g are the same thing said twice: either
works, both must name the same user.
"""

import grp
import os
import pwd
import stat
from contextlib import contextmanager
from dataclasses import dataclass

from twisted.logger import Logger

from mailplat.config import ConfigError

log = Logger()


@dataclass
class RunAs:
    """The user (and group) the server switches to."""

    name: str
    uid: int
    gid: int
    group: str
    groups: list  # supplementary group ids (the user's, as initgroups gives)
    home: str = ""


def _user(source, key, text):
    try:
        return pwd.getpwnam(text)
    except KeyError:
        pass
    if text.isdigit():
        try:
            return pwd.getpwuid(int(text))
        except KeyError:
            pass
    raise ConfigError(source, key, f"no such user: {text!r} (create it, e.g. `useradd --system --shell /usr/sbin/nologin {text}`)")


def _group(source, key, text):
    try:
        return grp.getgrnam(text)
    except KeyError:
        pass
    if text.isdigit():
        try:
            return grp.getgrgid(int(text))
        except KeyError:
            pass
    raise ConfigError(source, key, f"no such group: {text!r}")


def _name_of_group(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _name_of_user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def resolve(config, twistd_uid=None, twistd_gid=None):
    """
    Who to run as: `[server] user`/`group`, or twistd's -u/-g.

    @return: a L{RunAs} when the process (root) is to switch, None when it
        runs as whoever started it (no user asked for, or it is that user already).
    @raise ConfigError: an unknown user or group, -u/-g naming someone
        else, or a process that is not root asked to become another user.
    """
    source = config.source
    if config.user is None and twistd_uid is None:
        return None
    if config.user is not None:
        pw = _user(source, "server.user", config.user)
        key = "server.user"
        if twistd_uid is not None and twistd_uid != pw.pw_uid:
            raise ConfigError(source, key, f"is {pw.pw_name} (uid {pw.pw_uid}) but twistd -u asks for uid {twistd_uid}: "
                                           "give one of them, or the same user to both")
    else:
        key = "twistd -u"
        try:
            pw = pwd.getpwuid(twistd_uid)
        except KeyError:
            raise ConfigError(source, None, f"twistd -u {twistd_uid}: no such user")
    if config.group is not None:
        gid = _group(source, "server.group", config.group).gr_gid
        if twistd_gid is not None and twistd_gid != gid:
            raise ConfigError(source, "server.group", f"is {config.group} (gid {gid}) but twistd -g asks for gid {twistd_gid}: "
                                                      "give one of them, or the same group to both")
    elif twistd_gid is not None:
        gid = twistd_gid
    else:
        gid = pw.pw_gid
    run_as = RunAs(pw.pw_name, pw.pw_uid, gid, _name_of_group(gid), os.getgrouplist(pw.pw_name, gid), pw.pw_dir)
    euid = os.geteuid()
    if euid == 0:
        return None if run_as.uid == 0 and run_as.gid == os.getegid() else run_as
    if euid == run_as.uid and run_as.gid in (os.getegid(), *os.getgroups()):
        return None  # started as that user already (systemd User=): nothing to switch
    raise ConfigError(
        source, key,
        f"the server runs as {_name_of_user(euid)} (uid {euid}), not root, so it cannot switch to "
        f"{run_as.name}:{run_as.group}: start it as root (it binds its ports, then switches), or as "
        f"{run_as.name} itself (systemd User=, with AmbientCapabilities=CAP_NET_BIND_SERVICE for ports below 1024)",
    )


def problems(config):
    """
    For `check-config`: a `[server] user` or `group` that does not exist
    here (the server would not start; the config may be meant for another machine).
    """
    out = []
    for key, name, look_up in (("server.user", config.user, _user), ("server.group", config.group, _group)):
        if name is not None:
            try:
                look_up(config.source, key, name)
            except ConfigError as e:
                out.append(f"{key}: {e.problem}; the server will not start until it exists")
    return out


def mail_root(config):
    """The fixed directory above the store's `%d/%n` path (None when it has none)."""
    path = config.store.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        return None
    head = path.split("%", 1)[0]
    if "%" in path and not head.endswith(os.sep):
        head = os.path.dirname(head)
    return os.path.normpath(head) if head and head != os.sep else None


def _inside(path, directory):
    return os.path.commonpath([path, directory]) == directory


def prepare(config, run_as):
    """
    As root, before anything else is made: create state_dir (and the mail
    root outside it) owned by `run_as`, and give it every file and
    directory under them that root still owns. Files the operator keeps
    elsewhere (a passwd-file in /etc, a certificate from certbot) are not
    touched: L{check_readable} names them if the user cannot read them.

    @return: how many entries changed owner.
    """
    roots = [config.state_dir]
    mail = mail_root(config)
    if mail is not None and not _inside(mail, config.state_dir):
        roots.append(mail)
    changed = 0
    if run_as.uid == 0:
        return changed
    for root in roots:
        key = "server.state_dir" if root == config.state_dir else "store.path"
        try:
            if not os.path.isdir(root):
                os.makedirs(root, mode=0o700, exist_ok=True)
            if os.lstat(root).st_uid == 0:
                os.chown(root, run_as.uid, run_as.gid, follow_symlinks=False)
                changed += 1
            # Relative to each directory's descriptor, never following a
            # link: a link swapped in by the user cannot point us elsewhere.
            for directory, dirs, files, dirfd in os.fwalk(root, follow_symlinks=False):
                for name in dirs + files:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                    if st.st_uid != 0:
                        continue
                    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                        # A hard link to a file of root's elsewhere: not ours to give.
                        log.warn("not giving {path} to {user}: it has other hard links",
                                 path=os.path.join(directory, name), user=run_as.name)
                        continue
                    os.chown(name, run_as.uid, run_as.gid, dir_fd=dirfd, follow_symlinks=False)
                    changed += 1
        except OSError as e:
            raise ConfigError(config.source, key, f"cannot give {e.filename or root} to {run_as.name}: {e.strerror}")
    if changed:
        log.info("gave {n} file(s) under {roots} to {user}:{group} (they belonged to root)",
                 n=changed, roots=", ".join(roots), user=run_as.name, group=run_as.group)
    return changed


@contextmanager
def acting_as(run_as):
    """
    Real and effective user and group ids set to `run_as` (saved ids stay
    root, so root comes back when the block ends); nothing when None.
    Files made inside belong to the user; access checks are the user's.
    """
    if run_as is None:
        yield
        return
    groups = os.getgroups()
    os.setgroups(run_as.groups)
    os.setresgid(run_as.gid, run_as.gid, 0)
    os.setresuid(run_as.uid, run_as.uid, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)
        os.setgroups(groups)


def drop(run_as):
    """Give up root for good (when no twistd does it after L{acting_as})."""
    if run_as is None:
        return
    os.setgroups(run_as.groups)
    os.setgid(run_as.gid)
    os.setuid(run_as.uid)


def files_read(config):
    """(config key, path, kind) of each file and directory the server reads or writes, where it exists."""
    wanted = [("server.state_dir", config.state_dir, "dir")]
    if config.realm.get("backend") == "passwd-file" and config.realm.get("path"):
        wanted.append(("realm.path", config.realm["path"], "file"))
    if config.aliases_path:
        wanted.append(("aliases.path", config.aliases_path, "file"))
    wanted.append(("tls.certificate", config.tls_certificate, "file"))
    wanted.append(("tls.key", config.tls_key, "file"))
    mail = mail_root(config)
    if mail is not None:
        wanted.append(("store.path", mail, "dir"))
    for sub in ("tmp", "queue", "dkim"):
        wanted.append(("server.state_dir", os.path.join(config.state_dir, sub), "dir"))
    dkim = os.path.join(config.state_dir, "dkim")
    if os.path.isdir(dkim):
        for directory, _, files in os.walk(dkim):
            for name in sorted(files):
                wanted.append(("dkim", os.path.join(directory, name), "file"))
    relay = config.relay or {}
    for name in ("smarthost_auth_file", "tls_trust_file"):
        if relay.get(name):
            wanted.append((f"relay.{name}", relay[name], "file"))
    return [(key, path, kind) for key, path, kind in wanted if os.path.lexists(path)]


def check_readable(config):
    """
    Open each file the server reads (the passwd-file, aliases, TLS material,
    DKIM keys, ...) and check each of its directories can be written, as
    the user the server runs as now: the first that cannot is a
    L{ConfigError} naming it, said before any client can meet it as a 451.
    """
    uid = os.geteuid()
    who = _name_of_user(uid)
    for key, path, kind in files_read(config):
        try:
            if kind == "dir":
                os.listdir(path)
                if not os.access(path, os.W_OK | os.X_OK):
                    raise PermissionError(13, "Permission denied (not writable)", path)
            else:
                with open(path, "rb"):
                    pass
        except OSError as e:
            st = _owner(path)
            raise ConfigError(
                config.source, key,
                f"cannot {'use' if kind == 'dir' else 'read'} {path} as {who}: {e.strerror}{st}; "
                f"give it to that user (chown {who} {path}) or to its group",
            )


def permission_problem(config, e):
    """A PermissionError met while the server is built, as the one-line L{ConfigError} naming the file."""
    who = _name_of_user(os.geteuid())
    path = e.filename or "a file"
    return ConfigError(config.source, None, f"cannot use {path} as {who}: {e.strerror}{_owner(path) if e.filename else ''}")


def _owner(path):
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f" (owned by {_name_of_user(st.st_uid)}:{_name_of_group(st.st_gid)}, mode {st.st_mode & 0o777:o})"
