"""
The `sql` realm: users, password hashes and aliases in SQL tables, through
twisted.enterprise.adbapi (queries run in its thread pool, never in the
reactor thread). SQLite out of the box; PostgreSQL through psycopg when
`dsn` is set. The hashes are the passwd-file's: Dovecot's `{SCHEME}hash`.

Addresses are stored lower-cased, so lookups are case-insensitive and use
the primary key. See docs/realm-sql.md and `mailplat sql-schema`.
"""

import os
import threading

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.interfaces import (
    IAliasSource,
    IQuotaSource,
    IRealmAdmin,
    IRealmBackend,
    NoSuchUser,
    PermanentFailure,
    TemporaryFailure,
)
from mailplat.realm import passwords

log = Logger()

SCHEMA = """\
-- mailplat sql realm ({dialect})
-- One row per user: the address in lower case, the password as
-- {{SCHEME}}hash (ARGON2ID, BLF-CRYPT or PLAIN, as Dovecot writes them).
-- quota_storage (octets) and quota_messages override the [quota] defaults
-- for one user: NULL = the default, 0 = no limit.
CREATE TABLE IF NOT EXISTS mailplat_users (
    address        {text} PRIMARY KEY,
    password       {text} NOT NULL,
    quota_storage  BIGINT,
    quota_messages BIGINT
);
-- One row per (alias, target); targets are users, other aliases, or
-- remote addresses, all lower case.
CREATE TABLE IF NOT EXISTS mailplat_aliases (
    alias  {text} NOT NULL,
    target {text} NOT NULL,
    PRIMARY KEY (alias, target)
);
"""

DIALECTS = {"sqlite": "TEXT", "postgresql": "VARCHAR(320)"}

# Columns added since the first schema: (name, type). A table made before
# them gets them (ALTER TABLE ... ADD COLUMN) when the realm creates tables;
# otherwise the realm works without them (no per-user quotas) and says so.
ADDED_COLUMNS = (("quota_storage", "BIGINT"), ("quota_messages", "BIGINT"))


def schema(dialect="sqlite"):
    """The DDL for `dialect` ('sqlite' or 'postgresql')."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; known: {', '.join(DIALECTS)}")
    return SCHEMA.format(dialect=dialect, text=DIALECTS[dialect])


def _statements(dialect):
    text = "\n".join(line for line in schema(dialect).splitlines() if not line.startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def normalize(address):
    return address.strip().lower()


class Database:
    """
    One adbapi pool and the dialect's differences (parameter style, error
    classes). Every failure to reach the database becomes TemporaryFailure.
    """

    def __init__(self, database=None, dsn=None, create_tables=None, pool_size=4):
        # SQLite files are ours to set up; a PostgreSQL database is the
        # operator's (`mailplat sql-schema`), unless create_tables says so.
        self.create_tables = (not dsn) if create_tables is None else create_tables
        self._creating = threading.Lock()
        self._created = False
        if dsn:
            try:
                import psycopg
            except ImportError:
                raise ValueError("dsn: PostgreSQL needs psycopg (pip install 'mailplat[sql]')")
            self.dialect = "postgresql"
            self.module = psycopg
            self.where = _redact(dsn)
            self.pool = adbapi.ConnectionPool(
                "psycopg",
                dsn,
                connect_timeout=10,
                cp_min=1,
                cp_max=pool_size,
                cp_reconnect=True,
                cp_noisy=False,
                cp_openfun=self._opened,
            )
        else:
            import sqlite3

            self.dialect = "sqlite"
            self.module = sqlite3
            self.where = database
            # One connection: SQLite serialises writers anyway, and one
            # thread never sees "database is locked" from itself.
            self.pool = adbapi.ConnectionPool(
                "sqlite3",
                database,
                timeout=10,
                check_same_thread=False,
                cp_min=1,
                cp_max=1,
                cp_noisy=False,
                cp_openfun=self._opened,
            )

    def _opened(self, connection):
        """A new connection (in a pool thread): create the tables once, when asked."""
        if not self.create_tables:
            return
        with self._creating:
            if self._created:
                return
            cursor = connection.cursor()
            try:
                for statement in _statements(self.dialect):
                    cursor.execute(statement)
                self._add_columns(cursor)
                connection.commit()
            except self.module.IntegrityError:
                # Another process created them at the same moment
                # (PostgreSQL's IF NOT EXISTS is not atomic).
                connection.rollback()
            finally:
                cursor.close()
            self._created = True

    def _add_columns(self, cursor):
        """The schema migration: columns a table made by an older mailplat lacks."""
        if self.dialect == "sqlite":
            cursor.execute("PRAGMA table_info(mailplat_users)")
            have = {row[1] for row in cursor.fetchall()}
            for name, kind in ADDED_COLUMNS:
                if name not in have:
                    cursor.execute(f"ALTER TABLE mailplat_users ADD COLUMN {name} {kind}")
                    log.info("sql realm: column mailplat_users.{name} added", name=name)
        else:
            for name, kind in ADDED_COLUMNS:
                cursor.execute(f"ALTER TABLE mailplat_users ADD COLUMN IF NOT EXISTS {name} {kind}")

    def sql(self, text):
        """Queries are written with `?`; psycopg wants `%s`."""
        return text.replace("?", "%s") if self.dialect == "postgresql" else text

    def _unavailable(self, failure, what):
        if failure.check(TemporaryFailure, PermanentFailure):
            return failure
        log.error(
            "sql realm: {what} failed on {where}: {error}",
            what=what,
            where=self.where,
            error=failure.getErrorMessage(),
        )
        raise TemporaryFailure(f"user database unavailable: {failure.type.__name__}", "4.3.0")

    def query(self, what, text, *args):
        d = self.pool.runQuery(self.sql(text), args)
        return d.addErrback(self._unavailable, what)

    def interaction(self, what, function, *args):
        d = self.pool.runInteraction(function, *args)
        return d.addErrback(self._unavailable, what)

    def close(self):
        if self.pool.running:
            self.pool.close()


def _redact(dsn):
    """A DSN fit for the log: no password."""
    import re

    dsn = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


@implementer(IRealmBackend, IRealmAdmin, IAliasSource, IQuotaSource)
class SQLRealm:
    """Users and aliases in SQL tables (see L{schema})."""

    def __init__(self, database, verify_in_thread=True):
        self.db = database
        self._verify_in_thread = verify_in_thread
        self._quota_columns = True  # until a query says the table has none

    @classmethod
    def from_config(cls, section, state_dir):
        known = {"backend", "path", "database", "dsn", "create_tables", "pool_size"}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r} for the sql realm; known: database, dsn, create_tables, pool_size")
        dsn = section.get("dsn")
        if dsn is not None and (not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://", "host=", "dbname="))):
            raise ValueError(f"dsn: a PostgreSQL connection string is required (postgresql://user@host/db), not {dsn!r}")
        create = section.get("create_tables")
        if create is not None and not isinstance(create, bool):
            raise ValueError(f"create_tables: must be true or false, not {create!r}")
        pool_size = section.get("pool_size", 4)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size: must be a positive whole number, not {pool_size!r}")
        database = None
        if not dsn:
            database = section.get("database", os.path.join(state_dir, "users.sqlite"))
            if not isinstance(database, str) or not database:
                raise ValueError(f"database: a SQLite file path is required, not {database!r}")
            database = os.path.abspath(os.path.expanduser(database))
            os.makedirs(os.path.dirname(database), exist_ok=True)
        return cls(Database(database, dsn, create, pool_size))

    def close(self):
        """Stop the connection pool (the reactor's shutdown does it too)."""
        self.db.close()

    # --- IRealmBackend ---------------------------------------------------

    def lookup(self, address):
        address = normalize(address)
        d = self.db.query("lookup", "SELECT address FROM mailplat_users WHERE address = ?", address)
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    def check_password(self, address, password):
        address = normalize(address)
        d = self.db.query("password check", "SELECT password FROM mailplat_users WHERE address = ?", address)

        def verify(rows):
            stored = rows[0][0] if rows else None
            known = stored is not None
            if known:
                try:
                    passwords.check_scheme(stored)
                except passwords.UnknownScheme as e:
                    log.error("sql realm: {address}: {e}", address=address, e=e)
                    known = False
            if not known:
                # As long as a real check, so timing does not tell who exists.
                stored = passwords.dummy_hash()
            if self._verify_in_thread:
                checked = passwords.verify_later(stored, password)
            else:
                checked = defer.succeed(passwords.verify(stored, password))

            def decide(ok):
                if not (ok and known):
                    return None
                if passwords.split(stored)[0] == "PLAIN":
                    log.warn("{address} has a PLAIN password; rehash it with `mailplat user passwd`", address=address)
                return address

            return checked.addCallback(decide)

        return d.addCallback(verify)

    def quota_rules(self, address):
        """
        L{IQuotaSource}: the quota_storage / quota_messages columns as
        Dovecot rules (NULL: the default). A table without the columns
        (made before them, or a view) means no per-user quotas.
        """
        if not self._quota_columns:
            return defer.succeed([])
        d = self.db.pool.runQuery(
            self.db.sql("SELECT quota_storage, quota_messages FROM mailplat_users WHERE address = ?"),
            (normalize(address),),
        )

        def rules(rows):
            if not rows:
                return []
            storage, messages = rows[0]
            out = []
            if storage is not None:
                out.append(f"*:bytes={int(storage)}")
            if messages is not None:
                out.append(f"*:messages={int(messages)}")
            return out

        def no_columns(failure):
            text = failure.getErrorMessage().lower()
            if failure.check(self.db.module.Error) and "quota_" in text and ("column" in text or "no such" in text):
                self._quota_columns = False
                log.warn(
                    "sql realm: mailplat_users has no quota_storage / quota_messages columns: no per-user "
                    "quotas; add them with ALTER TABLE mailplat_users ADD COLUMN quota_storage BIGINT "
                    "(and quota_messages), or set create_tables = true"
                )
                return []
            return self.db._unavailable(failure, "quota lookup")

        return d.addCallbacks(rules, no_columns)

    def set_quota(self, address, storage=None, messages=None):
        """Set (or, with None, clear) a user's quota columns (tests and tools)."""
        address = normalize(address)

        def change(cursor):
            if not self._exists(cursor, address):
                raise NoSuchUser(address)
            cursor.execute(
                self.db.sql("UPDATE mailplat_users SET quota_storage = ?, quota_messages = ? WHERE address = ?"),
                (storage, messages, address),
            )

        return self.db.interaction("set quota", change)

    def list_users(self):
        d = self.db.query("list", "SELECT address FROM mailplat_users ORDER BY address")
        return d.addCallback(lambda rows: sorted(r[0] for r in rows))

    # --- IRealmAdmin -----------------------------------------------------

    def _exists(self, cursor, address):
        cursor.execute(self.db.sql("SELECT 1 FROM mailplat_users WHERE address = ?"), (address,))
        return cursor.fetchone() is not None

    def add_user(self, address, password_hash):
        address = normalize(address)
        _check_hash(password_hash)

        def add(cursor):
            if self._exists(cursor, address):
                raise PermanentFailure(f"user {address} exists already")
            cursor.execute(
                self.db.sql("INSERT INTO mailplat_users (address, password) VALUES (?, ?)"), (address, password_hash)
            )

        return self.db.interaction("add user", add)

    def set_password(self, address, password_hash):
        address = normalize(address)
        _check_hash(password_hash)

        def change(cursor):
            if not self._exists(cursor, address):
                raise NoSuchUser(address)
            cursor.execute(
                self.db.sql("UPDATE mailplat_users SET password = ? WHERE address = ?"), (password_hash, address)
            )

        return self.db.interaction("set password", change)

    def delete_user(self, address):
        address = normalize(address)

        def delete(cursor):
            if not self._exists(cursor, address):
                raise NoSuchUser(address)
            cursor.execute(self.db.sql("DELETE FROM mailplat_users WHERE address = ?"), (address,))

        return self.db.interaction("delete user", delete)

    # --- aliases (IAliasSource) --------------------------------------------

    def targets(self, address):
        d = self.db.query(
            "alias lookup", "SELECT target FROM mailplat_aliases WHERE alias = ? ORDER BY target", normalize(address)
        )
        return d.addCallback(lambda rows: [r[0] for r in rows] or None)

    def add_alias(self, alias, target):
        """Add one alias target (tests and tools; operators may use SQL)."""
        alias, target = normalize(alias), normalize(target)

        def add(cursor):
            cursor.execute(
                self.db.sql("SELECT 1 FROM mailplat_aliases WHERE alias = ? AND target = ?"), (alias, target)
            )
            if cursor.fetchone() is None:
                cursor.execute(
                    self.db.sql("INSERT INTO mailplat_aliases (alias, target) VALUES (?, ?)"), (alias, target)
                )

        return self.db.interaction("add alias", add)


def _check_hash(password_hash):
    try:
        passwords.check_scheme(password_hash)
    except passwords.UnknownScheme as e:
        raise PermanentFailure(str(e))
