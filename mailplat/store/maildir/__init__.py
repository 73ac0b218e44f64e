"""
The maildir store: folders as Dovecot, mutt and mbsync lay them out.

- L{MaildirStore} (store.py): IMailStore for SMTP delivery and POP3,
  IFolderStore for IMAP (`account(address)`).
- L{MaildirAccount} (account.py): IMailAccount, the folder list,
  subscriptions and special-use folders of one user.
- L{MaildirMailFolder} (mailfolder.py): IMailFolder, one per folder per
  process, over the view of the disk it keeps (view.py: L{MessageInfo},
  scanning, the index); UIDs from uidlist.py, flags from keywords.py, the
  index files in index.py; folder names and paths in layout.py, file names
  in names.py.
- L{MaildirFolder} (folder.py): the plain IFolder POP3 reads.
"""

from mailplat.store.maildir.account import MaildirAccount
from mailplat.store.maildir.mailfolder import MaildirMailFolder
from mailplat.store.maildir.store import MaildirStore
from mailplat.store.maildir.view import FolderGone, MessageInfo

__all__ = ["FolderGone", "MaildirAccount", "MaildirMailFolder", "MaildirStore", "MessageInfo"]
