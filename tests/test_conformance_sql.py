"""
The conformance kit's realm suite against the sql realm: SQLite always,
PostgreSQL when MAILPLAT_TEST_PG_DSN names a database (CI starts one; see
.ci/run). Each PostgreSQL test gets a schema of its own, so parallel
test runs share the database safely.
"""

import os
import shutil
import tempfile
import uuid
from urllib.parse import quote

from twisted.trial import unittest

from mailplat.realm.sql import Database, SQLRealm
from mailplat.testing import RealmConformance

PG_DSN = os.environ.get("MAILPLAT_TEST_PG_DSN")
PG_SKIP = None
if not PG_DSN:
    if os.environ.get("MAILPLAT_TEST_PG_REQUIRED"):
        PG_SKIP = None  # fail loudly in setUp instead
    else:
        PG_SKIP = "set MAILPLAT_TEST_PG_DSN=postgresql://user@host:port/db to run the PostgreSQL tests"


class SQLiteConforms(RealmConformance, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-sql-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.count = 0

    def _realm(self, database, create=None):
        realm = SQLRealm(Database(database, create_tables=create))
        self.addCleanup(realm.close)
        return realm

    def make_realm(self, users):
        self.count += 1
        realm = self._realm(os.path.join(self.dir, f"users{self.count}.sqlite"))
        return add_users(realm, users)

    def make_unavailable_realm(self):
        # A folder where the database file should be: SQLite cannot open it.
        return self._realm(self.dir)


def add_users(realm, users):
    from twisted.internet import defer

    d = defer.gatherResults([realm.add_user(a, h) for a, h in users.items()]) if users else defer.succeed(None)
    return d.addCallback(lambda _: realm)


def pg_dsn_with_schema(dsn, schema):
    """The DSN with a search_path, so that the realm's tables land in `schema`."""
    option = quote(f"-c search_path={schema}")
    return f"{dsn}{'&' if '?' in dsn else '?'}options={option}"


class PostgreSQLConforms(RealmConformance, unittest.TestCase):
    skip = PG_SKIP

    def setUp(self):
        if not PG_DSN:
            self.fail("MAILPLAT_TEST_PG_REQUIRED is set but MAILPLAT_TEST_PG_DSN is not: PostgreSQL did not start")
        import psycopg

        self.schema = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(PG_DSN, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {self.schema}")
        self.addCleanup(self._drop)

    def _drop(self):
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {self.schema} CASCADE")

    def make_realm(self, users):
        realm = SQLRealm(Database(dsn=pg_dsn_with_schema(PG_DSN, self.schema), create_tables=True))
        self.addCleanup(realm.close)
        return add_users(realm, users)

    def make_unavailable_realm(self):
        from tests.helpers import free_port

        realm = SQLRealm(Database(dsn=f"postgresql://mailplat@127.0.0.1:{free_port()}/nothing"))
        self.addCleanup(realm.close)
        return realm
