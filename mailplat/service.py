"""
Builds the running server: the backends chosen in the config, one portal,
and one listener per [listen] key, TLS-wrapped for smtps, imaps and pop3s.
"""

import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailplat import control as control_channel
from mailplat import oplog, plugin, proxyprotocol, tls
from mailplat.auth.dkim_sign import DKIMSigner, SigningDelivery
from mailplat.auth.verify import Verifier, VerifyingDelivery
from mailplat.config import TLS_WRAPPED, WEB_LISTENERS, ConfigError, require_service
from mailplat.delivery.addresses import AddressResolver
from mailplat.delivery.aliases import AliasesFile, AliasSources
from mailplat.delivery.fanout import FanOutDelivery
from mailplat.dns import SharedResolver
from mailplat.interfaces import BackendContext, IAliasSource
from mailplat.listeners import BoundListener
from mailplat.portal import make_portal
from mailplat.reload import HangupReload, Reloader
from mailplat.throttle import ConnectionLimiter, LoginThrottle

log = Logger()


class Backends:
    """The realm, store and delivery agent for one configuration."""

    def __init__(self, config):
        self.config = config
        context = BackendContext(config)
        # The one resolver of the server ([dns]): relay MX lookups and every
        # later DNS user ask it; plugins find it as context.dns.
        self.dns = SharedResolver(config.dns)
        context.dns = self.dns
        try:
            self.realm = plugin.build("realm", config.realm["backend"], config.realm, context)
            context.realm = self.realm
            self.aliases = AliasesFile(config.aliases_path)
            if IAliasSource.providedBy(self.realm):
                # A realm that keeps aliases (the sql realm) is asked after the file.
                self.aliases = AliasSources([self.aliases, self.realm])
            self.resolver = AddressResolver(
                self.realm, self.aliases, config.local_domains, config.recipient_delimiter
            )
            context.resolver = self.resolver
            self.store = plugin.build("store", config.store["backend"], config.store, context)
            # [quota]: every caller (local delivery, IMAP, POP3) goes through the quota wrapper.
            from mailplat import quota

            self.store = quota.wrap(self.store, self.realm, getattr(config, "quota", None))
            context.store = self.store
            self.delivery = plugin.build("delivery", config.delivery["local"], config.delivery, context)
        except plugin.PluginError as e:
            raise ConfigError(config.source, None, str(e))
        # The SMTP-stage filters of [checks] enabled, in order (a list of
        # mailplat.checks.EnabledCheck; empty when none are enabled).
        from mailplat import checks
        from mailplat.spam.lists import SenderLists

        # The users' allow and block lists (state_dir/lists.json, `mailplat lists`):
        # local delivery honours them, the `lists` check refuses block-listed senders.
        self.sender_lists = SenderLists.in_state_dir(config.state_dir)
        context.sender_lists = self.sender_lists
        if hasattr(self.delivery, "sender_lists"):
            self.delivery.sender_lists = self.sender_lists
        self.checks = checks.load(config, context)
        # Broken plugin modules nobody selected: reported, not fatal.
        self.plugin_problems = plugin.problems()
        for problem in self.plugin_problems:
            log.error("plugin not loaded: {problem}", problem=str(problem))
        # The relay queue (IRelayQueue) when [relay] is configured, else None:
        # the plugin `[relay] queue` names (default the built-in "spool").
        # DSNs for local senders go through the local delivery agent.
        context.delivery = self.delivery
        self.relay = _relay_queue(config, context)
        # DKIM signing of submitted mail ([dkim], keys under state_dir/dkim).
        self.dkim = DKIMSigner(config.dkim)
        # SPF/DKIM/DMARC checks and their policy on the MX port ([authentication]).
        self.verifier = Verifier(self.dns, config.authentication, config.hostname)


class ServerService(service.MultiService):
    """
    The listeners (its children, one per [listen] key) and the backends
    that run on their own (the relay queue): those start before the
    listeners and stop after them, so no accepted message finds them gone.
    They are not children, so iterating the service yields listeners only.
    """

    # [log] format = "json": the observer twistd is to log to (it asks the
    # application for an ILogObserver component before its own options).
    log_observer = None
    # The [listen] http root (mailplat.web.WebRoot) to mount pages on, or None.
    web = None

    def __init__(self, backends, control=None):
        service.MultiService.__init__(self)
        self.backends = backends
        # The control socket (mailplat.control) for `mailplat lockout|queue`.
        self.control = control
        # (A third-party relay queue that is no service has nothing to start.)
        # The DKIM signer's processes (mailplat.auth.signing_pool) run with the server.
        self.runners = [s for s in (backends.relay, control, getattr(backends, "dkim", None))
                        if s is not None and hasattr(s, "startService")]

    def setServiceParent(self, parent):
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)
        service.MultiService.setServiceParent(self, parent)

    def startService(self):
        for runner in self.runners:
            runner.startService()
        service.MultiService.startService(self)

    def stopService(self):
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        d.addBoth(lambda _: defer.DeferredList([defer.maybeDeferred(r.stopService) for r in self.runners]))
        d.addBoth(lambda _: self._close_store())
        d.addBoth(lambda _: self.backends.dns.close())
        return d

    def _close_store(self):
        """Stop the store's watchers and write its indexes (when it has any)."""
        close = getattr(self.backends.store, "close", None)
        return defer.maybeDeferred(close) if close else None


def make_service(config, bound=None):
    """
    @param bound: the result of L{bind} when the ports are already bound
        (twistd); else each listener binds when the service starts.
    @raise ConfigError: for anything that stops the server from starting.
    """
    from mailplat.imap.server import IMAPFactory
    from mailplat.pop3.server import POP3Factory
    from mailplat.smtp.factory import SMTPFactory

    require_service(config)
    if tls.will_create(config):
        tls.check_creatable(config)  # before anything is created
    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    backends = Backends(config)
    portal = make_portal(backends.realm, backends.store)
    context = tls.context_factory(config)
    limits = config.limits
    # One throttle and one connection count per client address, across
    # every protocol: a password guesser gets no fresh start on another port.
    throttle = LoginThrottle.from_limits(limits)
    connections = ConnectionLimiter(limits["connections_per_ip"])
    spool = os.path.join(config.state_dir, "tmp")
    shared = dict(throttle=throttle, connections=connections, allow_plaintext_auth=config.allow_plaintext_auth)
    # IMAP moves into and out of Junk teach the filter that can learn ([checks.rspamd] learn).
    from mailplat.spam.learn import from_checks as junk_learning

    imap_events = junk_learning(backends.checks, backends.sender_lists)

    def smtp(policy):
        # Submitted mail is DKIM-signed on its way to the fan-out; MX mail is
        # checked (SPF, DKIM, DMARC) and given an Authentication-Results field.
        if policy == "mx":
            delivery = VerifyingDelivery(fanout, backends.verifier)
        else:
            delivery = SigningDelivery(fanout, backends.dkim)
        return SMTPFactory(
            policy,
            config.hostname,
            delivery,
            portal,
            config.local_domains,
            limits,
            spool,
            tls_context=context,
            addresses=backends.resolver,
            restrict_sender=config.restrict_sender,
            relay_enabled=relay is not None,
            checks=backends.checks,
            **shared,
        )

    # The SMTP side drives a fan-out: aliases resolved, local mailboxes to
    # the local agent, remote addresses to the relay queue when there is one.
    relay = getattr(backends, "relay", None)
    fanout = FanOutDelivery(backends.delivery, backends.resolver, relay, backend=config.delivery["local"])

    # A folder's first FETCH ENVELOPE is parsed by processes of its own, on the other cores.
    envelopes = None
    if {"imap", "imaps"} & set(config.listen):
        from mailplat.imap.envelope_pool import EnvelopePool

        envelopes = EnvelopePool()
    shared_imap = dict(mailbox_events=imap_events, envelopes=envelopes, **shared)

    makers = {
        "smtp": lambda: smtp("mx"),
        "submission": lambda: smtp("submission"),
        "smtps": lambda: smtp("smtps"),
        "imap": lambda: IMAPFactory(portal, context, limits, **shared_imap),
        "imaps": lambda: IMAPFactory(portal, context, limits, **shared_imap),
        "pop3": lambda: POP3Factory(portal, context, limits, **shared),
        "pop3s": lambda: POP3Factory(portal, context, limits, **shared),
    }
    # [sieve]: local delivery runs each user's active script (mailplat.sieve.filter);
    # [listen] managesieve lets users upload them (mailplat.managesieve).
    sieve = None
    if config.sieve["enabled"]:
        from mailplat.sieve.filter import SieveFilter

        from mailplat.sieve import core as sieve_core

        sieve = SieveFilter(config.sieve["home"], config.hostname, before=config.sieve["before"],
                            after=config.sieve["after"], global_dir=config.sieve["global_dir"])
        sieve_core.DELIMITER = config.recipient_delimiter or "+"  # subaddress :user / :detail (RFC 5233)
        if hasattr(backends.delivery, "sieve"):
            backends.delivery.sieve = sieve
            backends.delivery.outbound = relay  # redirect and vacation go through the relay queue
    if "managesieve" in config.listen:
        from mailplat.managesieve import ManageSieveFactory
        from mailplat.sieve.filter import SieveFilter

        homes = sieve or SieveFilter(config.sieve["home"])
        makers["managesieve"] = lambda: ManageSieveFactory(
            portal, context, homes, limits, throttle, connections, config.allow_plaintext_auth,
            config.sieve["max_scripts"], config.sieve["max_script_bytes"],
        )
    # [listen] metrics: the counters and gauges of this server, with its own
    # registry; the protocol factories' sessions are counted for it.
    metrics = None
    if "metrics" in config.listen:
        from mailplat.metrics import PROTOCOLS, ServerMetrics

        metrics = ServerMetrics(config.listen, _spool_queue(relay), local_backend=config.delivery["local"])
        makers["metrics"] = metrics.site
    # [listen] http: one twisted.web site; parts mount their pages on
    # top.web (mailplat.web), which is None when the key is not set.
    web = None
    if "http" in config.listen:
        from mailplat.web import WebRoot

        web = WebRoot()
        makers["http"] = web.site
        # Thunderbird autoconfig, Autodiscover, Apple profiles ([autoconfig]).
        from mailplat import autoconfig

        autoconfig.mount(web, config)
    control = control_channel.ControlService(config.state_dir)
    _add_lockout_actions(control, throttle)
    if _spool_queue(relay) is not None:
        _add_queue_actions(control, relay)
    top = ServerService(backends, control)
    top.envelopes = envelopes
    if envelopes is not None and envelopes.size:
        top.runners.append(envelopes)
    top.metrics = metrics
    top.web = web
    # Certificates: each new connection gets the one loaded last; SIGHUP
    # reloads the files (mailplat.reload), ACME keeps them current.
    top.certificates = context
    top.acme = None
    if config.acme is not None:
        from mailplat.acme import AcmeService

        top.acme = AcmeService(config.acme, context)
        if config.acme["challenge"] == "http-01":
            web.mount("/.well-known/acme-challenge", top.acme.http)
        top.runners.append(top.acme)

    # kill -HUP: the certificates and the [tls] keys that can change live.
    top.reload = Reloader(config, context, top.acme).reload
    top.runners.append(HangupReload(top.reload))
    if metrics is not None:
        top.runners.append(metrics)
    for name, endpoint in config.listen.items():
        if name not in makers:
            log.warn("[listen] {name}: not available in this version; not started", name=name)
            continue
        factory = makers[name]()
        if metrics is not None and name in PROTOCOLS:
            metrics.track(factory, name)
        if name in TLS_WRAPPED:
            factory = TLSMemoryBIOFactory(context, False, factory)
        if bound is not None and name in bound:
            port, stand_in = bound[name]
            stand_in.set(factory)
            svc = BoundListener(port, stand_in)
        else:
            try:
                svc = proxyprotocol.listening_service(endpoint, factory)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(config.source, f"listen.{name}", f"bad endpoint {endpoint!r}: {e}")
        svc.setName(name)
        svc.setServiceParent(top)
    _log_startup(config, backends, context.current.source.cert_path)
    return top


def _add_lockout_actions(control, throttle):
    """`mailplat lockout list|clear` (docs/operating.md)."""

    def listing():
        rows = throttle.report()
        return f"{len(rows)} address(es) with failed logins", rows

    def clear(address=""):
        try:
            cleared = throttle.clear(address)
        except ValueError as e:
            raise control_channel.ActionError(str(e))
        if not cleared:
            raise control_channel.ActionError(f"no failed logins recorded from {address}")
        return f"cleared {', '.join(cleared)}", cleared

    control.add("lockout.list", listing)
    control.add("lockout.clear", clear)


def _spool_queue(relay):
    """The relay queue when it is the built-in spool (queue commands and gauges know only that one)."""
    from mailplat.delivery.relay.queue import RelayQueue

    return relay if isinstance(relay, RelayQueue) else None


def _relay_queue(config, context):
    """The relay queue plugin `[relay] queue` names, built from [relay] (None without relaying)."""
    if config.relay is None:
        return None
    name = config.relay.get("queue", "spool")
    section = dict(config.relay)
    own = config.raw.get("relay", {}).get(name)
    if isinstance(own, dict):
        section[name] = own
    try:
        return plugin.build("relay", name, section, context)
    except plugin.PluginError as e:
        raise ConfigError(config.source, None, str(e))


def _add_queue_actions(control, relay):
    """`mailplat queue flush|delete|bounce`, answered at once rather than at the next poll."""

    def queue_action(method):
        def run(id=""):
            def unknown(failure):
                failure.trap(KeyError)
                raise control_channel.ActionError(f"no such message in the queue: {failure.value.args[0]}")

            # The spool answers at once; the sql queue (several nodes) with a Deferred.
            return defer.maybeDeferred(method, id).addCallbacks(lambda message: (message, None), unknown)

        return run

    control.add("queue.flush", lambda id="": defer.maybeDeferred(relay.flush).addCallback(lambda message: (message, None)))
    control.add("queue.delete", queue_action(relay.delete))
    control.add("queue.bounce", queue_action(relay.bounce))


def _log_startup(config, backends, certificate=None):
    """The start-up summary: each service and endpoint, the backends, the certificate."""
    for name, endpoint in config.listen.items():
        tls_kind = "implicit" if name in TLS_WRAPPED else "none" if name in WEB_LISTENERS else "starttls"
        oplog.emit("service", name=name, endpoint=endpoint, tls=tls_kind)
    oplog.emit(
        "backends",
        realm=config.realm["backend"],
        store=config.store["backend"],
        delivery=config.delivery["local"],
        relay="on" if backends.relay is not None else "off",
        checks=[c.name for c in backends.checks] or None,
    )
    try:
        certificate = certificate or config.tls_certificate
        subject, expires = tls.describe(certificate)
    except Exception as e:  # loaded already; a description is only for the log
        oplog.emit("certificate", level="warn", file=certificate, problem=str(e))
    else:
        oplog.emit("certificate", subject=subject, expires=expires, file=certificate)
