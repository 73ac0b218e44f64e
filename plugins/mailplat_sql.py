"""The `sql` realm: users, password hashes and aliases in SQLite or PostgreSQL (docs/realm-sql.md)."""

from mailplat.plugin import BackendPlugin


def _sql_realm(section, context):
    # Imported here so that listing plugins never needs a database driver.
    from mailplat.realm.sql import SQLRealm

    return SQLRealm.from_config(section, context.state_dir)


sql = BackendPlugin(
    "realm", "sql", "Users, password hashes and aliases in SQL tables (SQLite, or PostgreSQL with dsn)", _sql_realm,
    keys=("database", "dsn", "create_tables", "pool_size"),
)
