"""
`kill -HUP`: reload what can change without a restart, and say what cannot.

Reloaded (new connections see it; open ones keep what they have):
  - the certificate files: `[tls] certificate` and `key` (replaced by
    certbot or by hand) and the ACME pair under state_dir/acme;
  - from the config file, re-read: `[tls] certificate` and `key` (other
    paths), and `[tls] acme`'s email, directory, domains, renew_days,
    account_key and ca_bundle, followed by an expiry check at once (a new
    domain orders a new certificate).
Everything else needs a restart: a changed key outside those is named in a
`reload-needs-restart` line, and a config that no longer loads is named in
`reload-failed` while the server goes on as it was (docs/operating.md,
"Certificates").

twistd leaves SIGHUP alone (it rotates its log on SIGUSR1), so the handler
is ours; it only schedules the reload on the reactor, which then runs it
between two events like any other call.
"""

import os
import signal
import threading

from twisted.application import service

from mailplat import config as configuration
from mailplat import oplog

# The [tls] keys a reload applies; the acme keys it applies in place.
RELOADABLE_TLS = ("certificate", "key", "acme")
RELOADABLE_ACME = ("email", "directory", "domains", "renew_days", "account_key", "ca_bundle")


class Reloader:
    """What a SIGHUP does (L{reload}), for one running server."""

    def __init__(self, config, certificates, acme=None):
        self.config = config  # as started: what needs a restart is compared with it
        self.certificates = certificates
        self.acme = acme
        # Where to read the file again from (twistd may chdir after start-up).
        self.cwd = os.getcwd()
        self.path = None if config.source == configuration.DEFAULTS_NAME else os.path.abspath(config.source)

    def reload(self):
        new = self._read()
        if new is not None:
            self._apply(new)
        self.certificates.reload()
        if self.acme is not None:
            self.acme.check()

    def _read(self):
        if self.path is None:
            return None
        try:
            return configuration.load(self.path, cwd=self.cwd)
        except configuration.ConfigError as e:
            oplog.emit("reload-failed", level="error", problem=str(e), file=self.path)
            return None

    def _apply(self, new):
        old = self.config
        restart = [name for name in sorted(set(old.raw) | set(new.raw))
                   if name != "tls" and old.raw.get(name) != new.raw.get(name)]
        old_tls, new_tls = old.raw.get("tls", {}), new.raw.get("tls", {})
        restart += [f"tls.{k}" for k in sorted(set(old_tls) | set(new_tls))
                    if k not in RELOADABLE_TLS and old_tls.get(k) != new_tls.get(k)]
        for source in self.certificates.sources:
            if source.key == "tls":
                source.cert_path, source.key_path = new.tls_certificate, new.tls_key
        if (old.acme is None) != (new.acme is None) or self.acme is None:
            if old.acme != new.acme:
                restart.append("tls.acme")
        elif old.acme["challenge"] != new.acme["challenge"]:
            restart.append("tls.acme.challenge")
        elif old.state_dir != new.state_dir:
            restart.append("tls.acme")  # its files live under the state_dir running
        else:
            self.acme.settings = dict(self.acme.settings, **{k: new.acme[k] for k in RELOADABLE_ACME})
        if restart:
            oplog.emit("reload-needs-restart", level="warn", keys=restart, file=self.path)


class HangupReload(service.Service):
    """Calls `reload()` on the reactor for each SIGHUP while running."""

    def __init__(self, reload, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.reload = reload
        self._previous = None
        self._installed = False

    def startService(self):
        service.Service.startService(self)
        # Signals reach the main thread only; a server built elsewhere (a
        # test's thread) reloads through reload() alone.
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGHUP, self._hangup)
            self._installed = True

    def stopService(self):
        service.Service.stopService(self)
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _hangup(self, signum, frame):
        # In a signal handler: only hand the work to the reactor.
        self.reactor.callFromThread(self._run)

    def _run(self):
        oplog.emit("reload", signal="HUP")
        try:
            self.reload()
        except Exception as e:  # a reload that fails leaves the server as it was
            oplog.emit("reload-failed", level="error", problem=f"{type(e).__name__}: {e}")
