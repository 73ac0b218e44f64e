"""
Moving users' mail from one store to another (`mailplat migrate`,
docs/store-sql.md "Migration") so that IMAP clients do not notice: every
folder keeps its UIDVALIDITY, UIDNEXT and each message its UID, flags,
keywords and internal date; subscriptions and special-use attributes go
too. A client that cached the folder before finds the same (UIDVALIDITY,
UID) pairs afterwards and downloads nothing again (RFC 3501 2.3.1.1).

    snapshot.py        read a user's account through the store interfaces
                       (any store: maildir, mbox, sql)
    sql_target.py      write it into the sql store, in one transaction
    maildir_target.py  write it as a Dovecot-compatible maildir
    command.py         the `mailplat migrate` subcommand

A target that already holds mail of the user is refused, never merged:
running the same migration twice changes nothing the second time.
"""

from mailplat.store.migration.snapshot import AlreadyMigrated, MigrationError, NoSuchAccount

__all__ = ["AlreadyMigrated", "MigrationError", "NoSuchAccount"]
