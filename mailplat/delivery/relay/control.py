"""
`mailplat queue ...` while the server runs, and without it: both ends of
the control-file protocol.

The running queue holds an exclusive lock on <state_dir>/queue/lock. When
the lock is held, a command is a file <state_dir>/queue/control/<id>.cmd
(JSON: {"action": "flush" | "delete" | "bounce", "id": ...}); the queue
polls that folder every second, runs the command and answers in <id>.done.
When no server runs, delete and flush act on the spool directly; bounce
needs the server (it sends a DSN through the queue).

While the server runs, the CLI asks it on the control socket first
(L{mailplat.control}: answered at once); the command files are the way
when no socket answers.
"""

import fcntl
import json
import os
import secrets
import time

from mailplat.delivery.relay.spool import PENDING, Spool


def run_commands(directory, actions):
    """
    The server's end: run each waiting command with `actions[name](id)`
    (a KeyError means no such message), answer it, remove it.
    @return: [(command file name, message)].
    """
    try:
        listing = os.listdir(directory)
    except FileNotFoundError:
        return []
    names = sorted(n for n in listing if n.endswith(".cmd"))
    for name in listing:
        # Answers nobody collected (the CLI gave up waiting).
        path = os.path.join(directory, name)
        if name.endswith(".done") and os.path.getmtime(path) < time.time() - 300:
            os.unlink(path)
    done = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                command = json.load(f)
            action = actions.get(command.get("action"))
            if action is None:
                answer = {"ok": False, "message": f"unknown action {command.get('action')!r}"}
            else:
                answer = {"ok": True, "message": action(command.get("id") or "")}
        except KeyError as e:
            answer = {"ok": False, "message": f"no such message in the queue: {e.args[0]}"}
        except (OSError, ValueError) as e:
            answer = {"ok": False, "message": f"bad command file: {e}"}
        tmp = path[: -len(".cmd")] + ".done.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(answer, f)
        os.rename(tmp, path[: -len(".cmd")] + ".done")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        done.append((name, answer["message"]))
    return done


class QueueControl:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.spool = Spool(os.path.join(state_dir, "queue"))

    def records(self):
        return self.spool.list()

    def server_running(self):
        """True when a server holds the queue lock."""
        if not os.path.exists(self.spool.lock_path):
            return False
        fd = os.open(self.spool.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def command(self, action, queue_id=None, wait=10.0):
        """
        Run `action`. @return: (ok, message).
        """
        self.spool.ensure()
        fd = os.open(self.spool.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return self._send(action, queue_id, wait)
            # No server: act on the spool, holding the lock so none starts meanwhile.
            return self._offline(action, queue_id)
        finally:
            os.close(fd)

    def _send(self, action, queue_id, wait):
        from mailplat import control

        try:
            ok, message, _ = control.ask(self.state_dir, f"queue.{action}", timeout=wait, id=queue_id or "")
        except (control.NotRunning, OSError):
            pass  # no socket to ask: the command files below
        else:
            if ok or not message.startswith("unknown action"):
                return ok, message
        self.spool.ensure()
        name = f"{time.time():.6f}-{secrets.token_hex(4)}"
        path = os.path.join(self.spool.control, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"action": action, "id": queue_id}, f)
        os.rename(path + ".tmp", path + ".cmd")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                with open(path + ".done", encoding="utf-8") as f:
                    answer = json.load(f)
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
                continue
            os.unlink(path + ".done")
            return answer["ok"], answer["message"]
        return False, f"the server did not answer within {wait:.0f} s (is the relay queue running?)"

    def _offline(self, action, queue_id):
        if action == "flush":
            count = 0
            for record in self.spool.list():
                for r in record["recipients"]:
                    if r["state"] in PENDING:
                        r["next"] = 0
                        count += 1
                self.spool.save(record)
            return True, f"no server running: {count} recipient(s) will be tried as soon as it starts"
        if self.spool.read(queue_id or "") is None:
            return False, f"no such message in the queue: {queue_id}"
        if action == "delete":
            self.spool.remove(queue_id)
            return True, f"{queue_id} deleted"
        return False, "no server running: bounce needs the server (it sends the DSN through the queue)"
