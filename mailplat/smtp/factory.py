"""The SMTP listener factory: one per port, carrying that port's policy."""

from twisted.mail import smtp

from mailplat.smtp.server import MailplatSMTP
from mailplat.throttle import ConnectionLimiter, LoginThrottle


class SMTPFactory(smtp.SMTPFactory):
    """Builds SMTP sessions for one port (one `policy`)."""

    def __init__(
        self,
        policy,
        hostname,
        delivery,
        portal,
        local_domains,
        limits,
        spool_dir,
        tls_context=None,
        throttle=None,
        connections=None,
        allow_plaintext_auth=False,
        addresses=None,
        restrict_sender=True,
        relay_enabled=False,
        checks=(),
    ):
        smtp.SMTPFactory.__init__(self, portal)
        # Who may send as whom (AddressResolver.owns); None: anyone.
        self.addresses = addresses
        self.restrict_sender = restrict_sender and addresses is not None
        # Authenticated clients may send to remote domains (never on MX).
        self.relay_enabled = relay_enabled and policy != "mx"
        self.policy = policy
        self.hostname = hostname
        self.delivery = delivery
        self.local_domains = {d.lower() for d in local_domains}
        self.limits = limits
        self.spool_dir = spool_dir
        self.tls_context = tls_context
        self.throttle = throttle or LoginThrottle.from_limits(limits)
        self.connections = connections or ConnectionLimiter(limits["connections_per_ip"])
        self.allow_plaintext_auth = allow_plaintext_auth
        # [checks] enabled, in order (mailplat.checks.EnabledCheck).
        self.checks = list(checks)

    def is_local_domain(self, domain):
        return domain in self.local_domains

    def buildProtocol(self, addr):
        return MailplatSMTP(self)
