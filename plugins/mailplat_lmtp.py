"""The `lmtp` local delivery agent: hand each message to an LMTP server, e.g. Dovecot's (docs/delivery-lmtp.md)."""

from mailplat.plugin import BackendPlugin


def _lmtp(section, context):
    from mailplat.delivery import lmtp

    return lmtp.from_config(section, context)


lmtp = BackendPlugin(
    "delivery", "lmtp", "Hand local mail to an LMTP server (RFC 2033), e.g. Dovecot's, at a client endpoint", _lmtp,
    keys={"lmtp": ("endpoint", "lhlo", "timeout", "connect_timeout")},
)
