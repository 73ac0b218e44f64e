"""The mbox store and its local delivery agent (docs/mbox.md)."""

from mailplat.plugin import BackendPlugin, Key

KEYS = {"backend", "path", "inbox", "lock_timeout"}


def _mbox_store(section, context):
    from mailplat.store.mbox import MboxStore

    unknown = set(section) - KEYS
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(KEYS))}")
    path = section.get("path")
    if not path or not isinstance(path, str):
        raise ValueError("path: a mail directory template is required, e.g. 'var/mail/%d/%n'")
    inbox = section.get("inbox")
    if inbox is not None and (not isinstance(inbox, str) or not inbox):
        raise ValueError(f"inbox: a file path template is required, e.g. '/var/mail/%n', not {inbox!r}")
    timeout = section.get("lock_timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"lock_timeout: seconds to wait for a locked mbox, not {timeout!r}")
    return MboxStore(path, inbox_template=inbox, lock_timeout=float(timeout))


def _mbox_delivery(section, context):
    from mailplat.delivery.local import LocalDelivery
    from mailplat.store.mbox import MboxStore

    if not isinstance(context.store, MboxStore):
        raise ValueError("local delivery 'mbox' needs [store] backend = \"mbox\"")
    return LocalDelivery(context.resolver, context.store)


mbox_store = BackendPlugin(
    "store", "mbox", "mbox files (mboxrd) as mutt, Dovecot and Python's mailbox read them", _mbox_store,
    keys={
        "path": Key(str, doc="each user's folder of mbox files, %d the domain and %n the local part"),
        "inbox": Key(str, doc="the INBOX file when not in that folder, e.g. '/var/mail/%n'"),
        "lock_timeout": Key(float, doc="seconds to wait for a locked mbox (default 30)"),
    },
)
mbox_delivery = BackendPlugin(
    "delivery", "mbox", "Deliver local mail into the users' mbox INBOX, locked and fsync'd before 250", _mbox_delivery,
    keys=(),
)
