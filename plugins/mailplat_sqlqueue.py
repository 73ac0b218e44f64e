"""The `sql` relay queue: one queue in PostgreSQL that several mailplat nodes share (docs/relay.md)."""

from mailplat.plugin import BackendPlugin, Key


def _sql_queue(section, context):
    # Imported here so that listing plugins never needs a database driver.
    import functools

    from mailplat.delivery import relay
    from mailplat.delivery.relay.sqlqueue import QueueTable, SQLRelayQueue

    own = section.get("sql") or {}
    dsn = own.get("dsn")
    store = getattr(context.config, "store", None) or {}
    if not dsn and store.get("backend") == "sql":
        dsn = store.get("dsn")  # the sql store's database, when there is one
    if not dsn:
        raise ValueError("relay.sql.dsn: the PostgreSQL database of the queue is required, "
                         "e.g. 'postgresql://mailplat@db.example.org/mail'")
    lease = own.get("lease", 300)
    if not isinstance(lease, (int, float)) or lease < 5:
        raise ValueError("relay.sql.lease: seconds, at least 5")
    table = QueueTable(dsn, pool_size=own.get("pool_size", 4))
    make = functools.partial(SQLRelayQueue, table, lease=lease)
    return relay.build(context.config, local_agent=context.delivery, resolver=getattr(context, "dns", None),
                       make_queue=make)


sql_queue = BackendPlugin(
    "relay", "sql", "The relay queue in PostgreSQL, shared by several nodes: any accepts, any sends (docs/relay.md)",
    _sql_queue,
    keys={"sql": Key(dict, doc="the queue's own keys", keys={
        "dsn": Key(str, doc="PostgreSQL connection string (default: the sql store's dsn)"),
        "lease": Key(float, default=300, doc="seconds a node holds a message without renewing; a dead node's wait this long"),
        "pool_size": Key(int, default=4, doc="database connections of this node"),
    })},
)
