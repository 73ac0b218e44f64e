"""The `sql` realm: users, password hashes and aliases in SQLite or PostgreSQL (docs/realm-sql.md)."""

from mailplat.plugin import BackendPlugin, Key


def _sql_realm(section, context):
    # Imported here so that listing plugins never needs a database driver.
    from mailplat.realm.sql import SQLRealm

    return SQLRealm.from_config(section, context.state_dir)


sql = BackendPlugin(
    "realm", "sql", "Users, password hashes and aliases in SQL tables (SQLite, or PostgreSQL with dsn)", _sql_realm,
    keys={
        "database": Key(str, doc="the SQLite file (default: users.sqlite in the state directory)"),
        "dsn": Key(str, doc="a PostgreSQL connection string instead, postgresql://user@host/db"),
        "create_tables": Key(bool, doc="create the tables when missing"),
        "pool_size": Key(int, doc="database connections (default 4)"),
    },
)
