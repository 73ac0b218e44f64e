"""The backends that ship with mailplat, registered like any other plugin."""

from mailplat.plugin import BackendPlugin, Key


def _passwd_file(section, context):
    from mailplat.realm.passwdfile import PasswdFileRealm

    return PasswdFileRealm(section["path"])


def _maildir_store(section, context):
    from mailplat.store.maildir import MaildirStore

    path = section.get("path")
    if not path or not isinstance(path, str):
        raise ValueError("path: a maildir path template is required, e.g. 'var/mail/%d/%n'")
    return MaildirStore(path)


def _maildir_delivery(section, context):
    from mailplat.delivery.local import LocalDelivery
    from mailplat.store.maildir import MaildirStore

    if not isinstance(context.store, MaildirStore):
        raise ValueError("local delivery 'maildir' needs [store] backend = \"maildir\"")
    return LocalDelivery(context.resolver, context.store)


def _spool_queue(section, context):
    from mailplat.delivery import relay

    # The [relay] keys are the server's own (mailplat.config checks them).
    return relay.build(context.config, local_agent=context.delivery, resolver=getattr(context, "dns", None))


passwd_file = BackendPlugin(
    "realm", "passwd-file", "Users in a Dovecot-compatible passwd-file, reloaded on change", _passwd_file,
    keys={"path": Key(str, required=True, doc="the passwd-file, e.g. 'etc/users' (relative to the config file)")},
)
maildir_store = BackendPlugin(
    "store", "maildir", "Maildir folders (Maildir++ layout) as Dovecot, mutt and mbsync use them", _maildir_store,
    keys={"path": Key(str, doc="the maildir of each user, %d the domain and %n the local part, e.g. 'var/mail/%d/%n'")},
)
maildir_delivery = BackendPlugin(
    "delivery", "maildir", "Deliver local mail into the users' maildir INBOX, fsync'd before 250", _maildir_delivery,
    keys=(),
)
spool_queue = BackendPlugin(
    "relay", "spool", "The persistent relay queue: spool on disk, MX/smarthost routes, retries, DSNs (docs/relay.md)",
    _spool_queue, keys={},
)
