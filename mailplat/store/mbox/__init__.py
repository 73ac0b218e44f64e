"""
The mbox store: users' folders as mbox files (mboxrd) that mutt, Dovecot's
mbox driver and Python's mailbox.mbox read too. See docs/mbox.md.

Choices, and why:

- UIDs, UIDVALIDITY and UIDNEXT are kept in a sidecar index
  (`<root>/.imap/<folder>/mailplat-index.json`), not in X-UID /
  X-IMAPbase headers: writing those means rewriting a message (and the
  first one) on every delivery, and a delivered message would no longer
  be the bytes that arrived. Messages are told apart across rewrites by
  other programs by a fingerprint, so mutt deleting or re-flagging mail
  keeps the other messages' UIDs. X-UID / X-IMAPbase written by Dovecot
  are honoured when a folder is first indexed.
- Flags are the headers mutt and Dovecot use (Status, X-Status,
  X-Keywords), written lazily (see folder.py).
- Locking: dotlock then fcntl (locking.py); rewrites go through a new
  file and a rename.

mboxrd.py (the format), locking.py, index.py (sidecar files), folder.py
(IMailFolder), maildrop.py (POP3's IFolder), fileio.py (reads, writes,
the rewrite's copy), account.py (IMailAccount), store.py (IFolderStore).
"""

from mailplat.store.mbox.store import MboxStore

__all__ = ["MboxStore"]
