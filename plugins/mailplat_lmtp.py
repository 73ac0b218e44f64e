"""The `lmtp` local delivery agent: hand each message to an LMTP server, e.g. Dovecot's (docs/delivery-lmtp.md)."""

from mailplat.plugin import BackendPlugin, Key


def _lmtp(section, context):
    from mailplat.delivery import lmtp

    return lmtp.from_config(section, context)


lmtp = BackendPlugin(
    "delivery", "lmtp", "Hand local mail to an LMTP server (RFC 2033), e.g. Dovecot's, at a client endpoint", _lmtp,
    # The delivery plugin receives the whole [delivery] table: its own keys are in [delivery.lmtp].
    keys={
        "lmtp": Key(dict, required=True, doc="[delivery.lmtp]: where the LMTP server is", keys={
            "endpoint": Key(str, required=True, doc="a client endpoint, e.g. 'unix:path=/run/dovecot/lmtp'"),
            "lhlo": Key(str, doc="the name given in LHLO (default: [server] hostname)"),
            "timeout": Key(float, doc="seconds to wait for each reply (default 300)"),
            "connect_timeout": Key(float, doc="seconds to wait for the connection (default 30)"),
        }),
    },
)
