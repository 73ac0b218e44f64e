"""
The `sql` realm (users, password hashes and aliases in SQLite or
PostgreSQL, docs/realm-sql.md), and the `sql` store with its local delivery
agent (mail in PostgreSQL, docs/store-sql.md).
"""

from mailplat.plugin import BackendPlugin, Key


def _sql_realm(section, context):
    # Imported here so that listing plugins never needs a database driver.
    from mailplat.realm.sql import SQLRealm

    return SQLRealm.from_config(section, context.state_dir)


def _imap_index(data):
    """
    What the IMAP server computes at a message's first FETCH (its cached
    'envelope', 'bodystructure' and 'body' fields), computed once per body
    at delivery instead. Wiring, not the store's own: the store never
    imports a protocol module.
    """
    from mailplat.imap import fetch, mime

    message = fetch.parse_message(data)
    return {
        "envelope": mime.envelope(message).decode("latin-1"),
        "bodystructure": mime.bodystructure(message, True).decode("latin-1"),
        "body": mime.bodystructure(message, False).decode("latin-1"),
    }


def _sql_store(section, context):
    from mailplat.store.sql import SQLStore, StoreDatabase

    dsn = section.get("dsn")
    if not dsn or not isinstance(dsn, str):
        raise ValueError("dsn: a PostgreSQL connection string is required, e.g. 'postgresql://mailplat@db/mail'")
    pool_size = section.get("pool_size", 8)
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size: a number of connections (1 or more), not {pool_size!r}")
    database = StoreDatabase(dsn, pool_size=pool_size, create_tables=section.get("create_tables", True))
    indexer = _imap_index if section.get("index_at_delivery", True) else None
    return SQLStore(database, indexer=indexer, listen=section.get("listen", True), quotas=_quotas(database, context))


def _quotas(database, context):
    """The [quota] limits (and the realm's per-user rules) as the store counts them, or None."""
    from mailplat.interfaces import IQuotaSource
    from mailplat.quota.rules import settings
    from mailplat.store.sql.quota import SQLQuotas

    options = settings(getattr(context.config, "quota", None) or {})
    if not (options["storage"] or options["messages"] or IQuotaSource.providedBy(context.realm)):
        return None
    return SQLQuotas(database, context.realm, options["storage"], options["messages"])


def _sql_delivery(section, context):
    from mailplat.delivery.local import LocalDelivery
    from mailplat.store.sql import SQLStore

    if not isinstance(context.store, SQLStore):
        raise ValueError("local delivery 'sql' needs [store] backend = \"sql\"")
    return LocalDelivery(context.resolver, context.store)


sql = BackendPlugin(
    "realm", "sql", "Users, password hashes and aliases in SQL tables (SQLite, or PostgreSQL with dsn)", _sql_realm,
    keys={
        "database": Key(str, doc="the SQLite file (default: users.sqlite in the state directory)"),
        "dsn": Key(str, doc="a PostgreSQL connection string instead, postgresql://user@host/db"),
        "create_tables": Key(bool, doc="create the tables when missing"),
        "pool_size": Key(int, doc="database connections (default 4)"),
    },
)
sql_store = BackendPlugin(
    "store", "sql", "Mail in PostgreSQL: several mailplat nodes serve one user base (docs/store-sql.md)", _sql_store,
    keys={
        "dsn": Key(str, required=True, doc="the PostgreSQL database, postgresql://user@host/db"),
        "pool_size": Key(int, doc="database connections of this node (default 8)"),
        "create_tables": Key(bool, doc="create or upgrade the tables at start (default true)"),
        "index_at_delivery": Key(bool, doc="compute ENVELOPE and BODYSTRUCTURE once at delivery (default true)"),
        "listen": Key(bool, doc="LISTEN for other nodes' changes, for IDLE push (default true)"),
    },
)
sql_delivery = BackendPlugin(
    "delivery", "sql", "Deliver local mail into the sql store's INBOX, answered 250 after COMMIT", _sql_delivery,
    keys=(),
)
