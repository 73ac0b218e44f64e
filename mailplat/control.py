"""
The control channel: how `mailplat lockout` and `mailplat queue` talk to
the running server.

The server listens on a UNIX socket, <state_dir>/control.sock (mode 0600,
in the 0700 state_dir: only the server's user and root can use it), always,
whatever [listen] and [relay] say. A request is one JSON object on one line,
{"action": "lockout.list", ...arguments}; the answer is one JSON line,
{"ok": true|false, "message": "...", "data": ...}, and the connection closes.
Parts of the server register their actions by name (L{ControlService.add});
an unknown action is answered with ok = false.

The relay queue registers queue.flush, queue.delete and queue.bounce; it
still reads command files from queue/control/ too (see
L{mailplat.delivery.relay.control}), for a CLI that finds no socket.
"""

import json
import os
import socket

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger()

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024


def socket_path(state_dir):
    return os.path.join(state_dir, SOCKET_NAME)


class ActionError(Exception):
    """An action that cannot be done; the message says why (ok = false)."""


class _ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST

    def lineReceived(self, line):
        self.lineReceived = lambda line: None  # one request per connection
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            self._answer({"ok": False, "message": f"bad request: {e}"})
            return
        d = defer.maybeDeferred(self.factory.run, request)
        d.addCallback(self._answer)

    def lineLengthExceeded(self, line):
        self._answer({"ok": False, "message": "request too long"})

    def _answer(self, answer):
        self.sendLine(json.dumps(answer).encode())
        self.transport.loseConnection()


class ControlService(service.Service, protocol.Factory):
    """The server's end: a UNIX socket and the actions registered on it."""

    protocol = _ControlProtocol
    noisy = False

    def __init__(self, state_dir):
        self.path = socket_path(state_dir)
        self.actions = {}
        self.port = None

    def add(self, name, action):
        """`action(**arguments)` -> (message, data), a Deferred of it; ActionError for ok = false."""
        self.actions[name] = action

    def run(self, request):
        name = request.pop("action", None)
        action = self.actions.get(name)
        if action is None:
            return {"ok": False, "message": f"unknown action {name!r}"}

        def done(result):
            message, data = result
            return {"ok": True, "message": message, "data": data}

        def failed(failure):
            if failure.check(ActionError, TypeError):
                return {"ok": False, "message": str(failure.value)}
            log.failure("control: {action} failed", failure, action=name)
            return {"ok": False, "message": f"{name} failed on the server (see its log)"}

        return defer.maybeDeferred(action, **request).addCallbacks(done, failed)

    def startService(self):
        service.Service.startService(self)
        from twisted.internet import reactor

        try:
            # wantPID: a stale socket from a killed server is replaced, a
            # live server's is not (the second server runs without one).
            self.port = reactor.listenUNIX(self.path, self, mode=0o600, wantPID=True)
        except error.CannotListenError as e:
            log.error("control: cannot listen on {path} ({reason}); `mailplat lockout` will not reach this server",
                      path=self.path, reason=e.socketError or e)

    def stopService(self):
        service.Service.stopService(self)
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class NotRunning(Exception):
    """No server answers on the control socket."""


def ask(state_dir, action, timeout=10.0, **arguments):
    """
    The CLI's end (blocking): send one request, return (ok, message, data).
    @raise NotRunning: when no server listens on the socket.
    """
    path = socket_path(state_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NotRunning(f"no server is running (nothing answers on {path}: {e.strerror})")
        s.sendall(json.dumps(dict(arguments, action=action)).encode() + b"\n")
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return False, f"the server did not answer within {timeout:.0f} s on {path}", None
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        s.close()
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        return False, f"the server closed {path} without an answer", None
    return answer.get("ok", False), answer.get("message", ""), answer.get("data")
