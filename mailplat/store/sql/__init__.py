"""
The sql store: mail in PostgreSQL, so several mailplat nodes serve one
user base (docs/store-sql.md).

- L{SQLStore} (store.py): IMailStore for SMTP delivery and POP3,
  IFolderStore for IMAP; the registry of open folders.
- L{SQLAccount} (account.py): IMailAccount, folders and subscriptions.
- L{SQLMailFolder} (folder.py): IMailFolder, IBatchOpen, IModSeqFolder:
  the in-memory view, kept in step by mod-sequence.
- mailbox.py: the SQL of a mailbox's messages, and why a row lock
  serialises them; schema.py: the tables, versioned; blobs.py: the
  IBlobStore seam for bodies; database.py: the adbapi pool;
  inbox.py: the POP3 view; listener.py: LISTEN/NOTIFY across nodes;
  quota.py: IQuotaStore, usage counted by the database; info.py: one
  message of the view; names.py, flags.py: mailbox names and flags.
"""

from mailplat.store.sql.account import SQLAccount
from mailplat.store.sql.database import StoreDatabase
from mailplat.store.sql.folder import SQLMailFolder
from mailplat.store.sql.store import SQLStore

__all__ = ["SQLAccount", "SQLMailFolder", "SQLStore", "StoreDatabase"]
