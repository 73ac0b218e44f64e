"""
The tables of the sql store (PostgreSQL), versioned: `mailplat_store_schema`
holds the version the database is at, and L{ensure} brings an empty or an
older database up to L{VERSION} under an advisory lock, so that nodes
starting at the same moment create the tables once.

Every table name starts with `mailplat_`; the search_path of the DSN picks
the PostgreSQL schema they live in.
"""

VERSION = 1

# Taken (pg_advisory_xact_lock) while the tables are created or upgraded.
SCHEMA_LOCK = 0x6D706C73  # "mpls"

# One list of statements per version: STEPS[v - 1] takes a database from
# version v - 1 to v.
STEPS = (
    (
        """CREATE TABLE mailplat_accounts (
            id      BIGSERIAL PRIMARY KEY,
            address VARCHAR(320) NOT NULL UNIQUE
        )""",
        # UIDVALIDITY of a new mailbox (RFC 3501 2.3.1.1): unique across the
        # database, so a mailbox made again after DELETE never repeats an
        # old (UIDVALIDITY, UID); started at the clock, as Dovecot does.
        "CREATE SEQUENCE mailplat_uidvalidity MINVALUE 1 MAXVALUE 4294967295",
        "SELECT setval('mailplat_uidvalidity', extract(epoch FROM now())::bigint)",
        """CREATE TABLE mailplat_mailboxes (
            id            BIGSERIAL PRIMARY KEY,
            account       BIGINT NOT NULL REFERENCES mailplat_accounts ON DELETE CASCADE,
            name          TEXT NOT NULL,
            special_use   TEXT,
            uidvalidity   BIGINT NOT NULL,
            uidnext       BIGINT NOT NULL DEFAULT 1,
            highestmodseq BIGINT NOT NULL DEFAULT 1,
            first_recent  BIGINT NOT NULL DEFAULT 1,
            vanished_floor BIGINT NOT NULL DEFAULT 0,
            UNIQUE (account, name)
        )""",
        # Bodies once per content hash (SHA-256): 50 local recipients, one row.
        """CREATE TABLE mailplat_bodies (
            hash        BYTEA PRIMARY KEY,
            size        BIGINT NOT NULL,
            compression SMALLINT NOT NULL DEFAULT 0,
            data        BYTEA NOT NULL,
            last_used   TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        # What the IMAP layer computes once per body (envelope, body
        # structure): it depends on the bytes only, so it is kept per hash.
        """CREATE TABLE mailplat_body_index (
            hash   BYTEA PRIMARY KEY REFERENCES mailplat_bodies ON DELETE CASCADE,
            fields JSONB NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE mailplat_messages (
            mailbox      BIGINT NOT NULL REFERENCES mailplat_mailboxes ON DELETE CASCADE,
            uid          BIGINT NOT NULL,
            modseq       BIGINT NOT NULL,
            flags        TEXT[] NOT NULL DEFAULT '{}',
            keywords     TEXT[] NOT NULL DEFAULT '{}',
            internaldate DOUBLE PRECISION NOT NULL,
            savedate     DOUBLE PRECISION NOT NULL,
            size         BIGINT NOT NULL,
            body         BYTEA NOT NULL REFERENCES mailplat_bodies,
            PRIMARY KEY (mailbox, uid)
        )""",
        "CREATE INDEX mailplat_messages_changes ON mailplat_messages (mailbox, modseq)",
        "CREATE INDEX mailplat_messages_body ON mailplat_messages (body)",
        # Expunged UIDs with the modseq they went at (RFC 7162 VANISHED).
        """CREATE TABLE mailplat_expunged (
            mailbox BIGINT NOT NULL REFERENCES mailplat_mailboxes ON DELETE CASCADE,
            uid     BIGINT NOT NULL,
            modseq  BIGINT NOT NULL,
            PRIMARY KEY (mailbox, uid)
        )""",
        "CREATE INDEX mailplat_expunged_changes ON mailplat_expunged (mailbox, modseq)",
        """CREATE TABLE mailplat_subscriptions (
            account BIGINT NOT NULL REFERENCES mailplat_accounts ON DELETE CASCADE,
            name    TEXT NOT NULL,
            PRIMARY KEY (account, name)
        )""",
    ),
)

assert len(STEPS) == VERSION


def current_version(cursor):
    """The version the database is at: 0 when the store's tables are not there."""
    cursor.execute("SELECT to_regclass('mailplat_store_schema') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return 0
    cursor.execute("SELECT max(version) FROM mailplat_store_schema")
    row = cursor.fetchone()
    return row[0] or 0


def ensure(cursor):
    """
    Create or upgrade the tables, in the caller's transaction (blocking).

    @return: the version found before (0: created now).
    @raise ValueError: the database is at a newer version than this mailplat knows.
    """
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
    found = current_version(cursor)
    if found > VERSION:
        raise ValueError(f"the sql store's tables are at version {found}; this mailplat knows up to {VERSION}")
    if found == 0:
        cursor.execute("CREATE TABLE mailplat_store_schema (version INTEGER NOT NULL)")
    for step in STEPS[found:]:
        for statement in step:
            cursor.execute(statement)
    if found < VERSION:
        cursor.execute("DELETE FROM mailplat_store_schema")
        cursor.execute("INSERT INTO mailplat_store_schema (version) VALUES (%s)", (VERSION,))
    return found


def ddl():
    """The whole schema as SQL text, for an operator who creates it by hand."""
    lines = ["CREATE TABLE mailplat_store_schema (version INTEGER NOT NULL);"]
    for step in STEPS:
        lines.extend(statement.strip() + ";" for statement in step)
    lines.append(f"INSERT INTO mailplat_store_schema (version) VALUES ({VERSION});")
    return "\n".join(lines) + "\n"
