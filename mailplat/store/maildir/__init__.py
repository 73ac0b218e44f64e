"""The maildir store: folders as Dovecot, mutt and mbsync lay them out."""

from mailplat.store.maildir.store import MaildirStore

__all__ = ["MaildirStore"]
