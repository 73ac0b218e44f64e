"""
The [relay] table and `mailplat queue` without a running server: every bad
key is named with the file, and the queue on disk can be read and changed
offline.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from mailplat import config as configuration
from mailplat.config import ConfigError
from mailplat.delivery.relay.spool import Spool, new_record
from mailplat.interfaces import Envelope
from mailplat.service import Backends
from mailplat.store.source import BytesSource

BASE = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[listen]
submission = "tcp:port=0:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "users"
"""


class RelayConfig(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-relay-config-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "mailplat.toml")

    def load(self, relay):
        with open(self.path, "w") as f:
            f.write(BASE + relay)
        return configuration.load(self.path, cwd=self.dir)

    def error(self, relay):
        with self.assertRaises(ConfigError) as caught:
            Backends(self.load(relay))
        text = str(caught.exception)
        self.assertTrue(text.startswith(self.path + ": "), text)
        return caught.exception

    def test_no_relay_table_means_no_queue(self):
        config = self.load("")
        self.assertIsNone(config.relay)
        self.assertIsNone(Backends(config).relay)

    def test_enabled_false_means_no_queue(self):
        self.assertIsNone(self.load("[relay]\nenabled = false\n").relay)

    def test_defaults(self):
        relay = self.load("[relay]\n").relay
        self.assertEqual(
            (relay["retry_initial"], relay["retry_max"], relay["max_age"], relay["mx_port"], relay["routes"]),
            (300, 4 * 3600, 5 * 86400, 25, {}),
        )

    def test_routes_as_strings_and_tables(self):
        relay = self.load(
            '[relay.routes]\n"Example.ORG" = "127.0.0.1:2526"\n'
            '"example.net" = { host = "[::1]:2527", tls = "starttls", tls_verify = true }\n'
        ).relay
        self.assertEqual(relay["routes"]["example.org"], {"host": "127.0.0.1", "port": 2526, "tls": "may", "verify": False})
        self.assertEqual(relay["routes"]["example.net"], {"host": "::1", "port": 2527, "tls": "starttls", "verify": True})

    def test_unknown_key_is_named(self):
        self.assertEqual(self.error("[relay]\nretries = 3\n").key, "relay.retries")

    def test_bad_tls_mode_is_named(self):
        self.assertEqual(self.error('[relay]\nsmarthost = "h:25"\nsmarthost_tls = "always"\n').key, "relay.smarthost_tls")

    def test_bad_route_is_named(self):
        e = self.error('[relay.routes]\n"example.org" = "127.0.0.1:port"\n')
        self.assertEqual(e.key, "relay.routes.example.org.host")

    def test_smarthost_needs_a_port(self):
        self.assertEqual(self.error('[relay]\nsmarthost = "relay.example.net"\n').key, "relay.smarthost")

    def test_bad_dns_server_is_named(self):
        self.assertEqual(self.error('[relay]\ndns_servers = ["127.0.0.1:x"]\n').key, "relay.dns_servers")

    def test_wrong_type_is_named(self):
        self.assertEqual(self.error('[relay]\nretry_initial = "5m"\n').key, "relay.retry_initial")

    def test_missing_auth_file_is_named(self):
        e = self.error('[relay]\nsmarthost = "127.0.0.1:587"\nsmarthost_auth_file = "nope"\n')
        self.assertEqual(e.key, "relay.smarthost_auth_file")
        self.assertIn("cannot read", str(e))

    def test_auth_file_without_a_password_is_named(self):
        with open(os.path.join(self.dir, "auth"), "w") as f:
            f.write("justauser\n")
        e = self.error('[relay]\nsmarthost = "127.0.0.1:587"\nsmarthost_auth_file = "auth"\n')
        self.assertIn("user:password", str(e))

    def test_credentials_never_appear_in_the_config(self):
        with open(os.path.join(self.dir, "auth"), "w") as f:
            f.write("relayuser:s3cret\n")
        config = self.load('[relay]\nsmarthost = "127.0.0.1:587"\nsmarthost_auth_file = "auth"\n')
        self.assertNotIn("s3cret", repr(config))
        self.assertEqual(Backends(config).relay.router.smarthost.auth, ("relayuser", "s3cret"))


class OfflineQueueCLI(unittest.TestCase):
    """`mailplat queue` with no server running acts on the spool itself."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-relay-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "mailplat.toml")
        with open(self.path, "w") as f:
            f.write(BASE + "[relay]\n")
        self.spool = Spool(os.path.join(self.dir, "var", "queue"))
        self.spool.ensure()
        record = new_record(Envelope("alice@example.test"), ["bob@example.org", "carol@example.org"])
        record["recipients"][0].update(state="deferred", attempts=2, error="451 4.3.0 try later")
        self.queue_id = self.spool.create(record, BytesSource(b"Subject: x\n\nx\n"))["id"]

    def cli(self, *args):
        done = subprocess.run(
            [sys.executable, "-m", "mailplat.cli", "--config", self.path, "queue", *args],
            cwd=self.dir, capture_output=True, text=True, timeout=30,
        )
        return done.returncode, done.stdout, done.stderr

    def test_list_shows_each_recipient_with_state_and_last_error(self):
        status, out, err = self.cli("list")
        self.assertEqual(status, 0, err)
        self.assertIn(self.queue_id, out)
        self.assertIn("alice@example.test", out)
        self.assertIn("bob@example.org  deferred  attempts=2", out)
        self.assertIn("last error: 451 4.3.0 try later", out)
        self.assertIn("carol@example.org  queued", out)
        self.assertIn("1 message(s) in the queue", out)

    def test_delete_removes_both_files(self):
        status, out, err = self.cli("delete", self.queue_id)
        self.assertEqual(status, 0, err)
        self.assertEqual(os.listdir(self.spool.messages), [])

    def test_flush_makes_everything_due(self):
        status, out, err = self.cli("flush")
        self.assertEqual(status, 0, err)
        record = self.spool.read(self.queue_id)
        self.assertEqual([r["next"] for r in record["recipients"]], [0, 0])

    def test_bounce_needs_the_server(self):
        status, out, err = self.cli("bounce", self.queue_id)
        self.assertEqual(status, 1)
        self.assertIn("needs the server", err)
        self.assertIsNotNone(self.spool.read(self.queue_id))

    def test_half_written_enqueue_is_dropped_on_load(self):
        with open(self.spool.eml("00000000000deadbeef"), "wb") as f:
            f.write(b"partial")
        records, problems = self.spool.load()
        self.assertEqual([r["id"] for r in records], [self.queue_id])
        self.assertFalse(os.path.exists(self.spool.eml("00000000000deadbeef")))
        with open(self.spool.state(self.queue_id)) as f:
            self.assertEqual(json.load(f)["sender"], "alice@example.test")
