"""
A config that refuses what it does not understand: every misspelt table
or key, in the core's tables and in a plugin's section, stops
`mailplat check-config` with `FILE: section.key: unknown key (did you mean
...?)`, exit 2, and nothing is created on the way (issue 12, item 1).
"""

import contextlib
import io
import json
import os
import shutil
import tempfile

from twisted.trial import unittest

from mailplat import cli
from mailplat import config as configuration

# A config using every table the core reads, each with a key spelt right.
BASE = {
    "server": {"hostname": "mail.example.test", "state_dir": "var"},
    "domains": {"local": ["example.test"]},
    "listen": {"smtp": "tcp:port=0:interface=127.0.0.1", "imaps": "tcp:port=0:interface=127.0.0.1"},
    "tls": {"create_self_signed": True},
    "realm": {"backend": "passwd-file", "path": "users"},
    "store": {"backend": "maildir", "path": "var/mail/%d/%n"},
    "delivery": {"local": "maildir"},
    "aliases": {},
    "smtp": {"restrict_sender": True},
    "limits": {"message_size": 1000000},
    "dns": {"timeout": 5},
    "dkim": {"enabled": True},
    "authentication": {"verify": True},
    "log": {"format": "text"},
}

# (what to change, the key named, the spelling suggested); a change is
# {table: {key: value}} merged into BASE, None removing a key.
MISSPELT = [
    ({"server": {"hostnme": "x"}}, "server.hostnme", "hostname"),
    ({"server": {"state_dr": "x"}}, "server.state_dr", "state_dir"),
    ({"domains": {"locl": ["x.test"]}}, "domains.locl", "local"),
    ({"listen": {"smpt": "tcp:port=0"}}, "listen.smpt", "smtp"),
    ({"listen": {"submision": "tcp:port=0"}}, "listen.submision", "submission"),
    ({"listen": {"imapss": "tcp:port=0"}}, "listen.imapss", "imaps"),
    ({"tls": {"certficate": "/x/cert.pem"}}, "tls.certficate", "certificate"),
    ({"tls": {"kye": "/x/key.pem"}}, "tls.kye", "key"),
    ({"tls": {"create_self_signd": False}}, "tls.create_self_signd", "create_self_signed"),
    ({"tls": {"allow_plaintext_aut": False}}, "tls.allow_plaintext_aut", "allow_plaintext_auth"),
    ({"realm": {"pth": "users"}}, "realm.pth", "path"),
    ({"realm": {"backed": "passwd-file"}}, "realm.backed", "backend"),
    ({"store": {"paht": "var/mail/%d/%n"}}, "store.paht", "path"),
    ({"delivery": {"lcal": "mbox"}}, "delivery.lcal", "local"),
    ({"delivery": {"recipient_delimeter": "-"}}, "delivery.recipient_delimeter", "recipient_delimiter"),
    ({"aliases": {"pth": "aliases"}}, "aliases.pth", "path"),
    ({"smtp": {"restrict_sendr": False}}, "smtp.restrict_sendr", "restrict_sender"),
    ({"limits": {"message_sise": 10}}, "limits.message_sise", "message_size"),
    ({"limits": {"conections_per_ip": 10}}, "limits.conections_per_ip", "connections_per_ip"),
    ({"relay": {"smarthst": "relay.example.net:25"}}, "relay.smarthst", "smarthost"),
    ({"relay": {"retry_frist": 60}}, "relay.retry_frist", "retry_first"),
    ({"relay": {"routes": {"example.org": {"host": "127.0.0.1:25", "tsl": "may"}}}},
     "relay.routes.example.org.tsl", "tls"),
    ({"dns": {"server": ["127.0.0.1:53"]}}, "dns.server", "servers"),
    ({"dkim": {"enabeld": True}}, "dkim.enabeld", "enabled"),
    ({"authentication": {"verfy": True}}, "authentication.verfy", "verify"),
    ({"authentication": {"domains": {"example.org": {"spf_fal": "reject"}}}},
     "authentication.domains.example.org.spf_fal", "spf_fail"),
    ({"log": {"fromat": "json"}}, "log.fromat", "format"),
    ({"checks": {"enabld": ["size"]}}, "checks.enabld", "enabled"),
    ({"checks": {"enabled": ["size"], "size": {"max_sise": 10}}}, "checks.size.max_sise", "max_size"),
    # a check table kept but not enabled is checked all the same
    ({"checks": {"junk": {"plugin": "header", "header": "X-Spam", "mach": "yes"}}}, "checks.junk.mach", "match"),
    # the plugins' own sections: mbox store, sql realm, lmtp delivery
    ({"store": {"backend": "mbox", "inbx": "/var/mail/%n"}, "delivery": {"local": "mbox"}}, "store.inbx", "inbox"),
    ({"realm": {"backend": "sql", "databse": "users.sqlite"}}, "realm.databse", "database"),
    ({"delivery": {"local": "lmtp", "lmtp": {"endpont": "tcp:host=127.0.0.1:port=24"}}},
     "delivery.lmtp.endpont", "endpoint"),
]

# Misspelt tables: (table name, the one suggested).
MISSPELT_TABLES = [
    ("listn", "listen"),
    ("servr", "server"),
    ("realn", "realm"),
    ("delivry", "delivery"),
    ("limts", "limits"),
    ("tsl", "tls"),
    ("aliasses", "aliases"),
    ("autentication", "authentication"),
    ("rely", "relay"),
]


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def to_toml(tables):
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        out.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())
        out.append("")
    return "\n".join(out)


def merged(change):
    tables = {name: dict(table) for name, table in BASE.items()}
    for name, keys in change.items():
        table = tables.setdefault(name, {})
        for key, value in keys.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return tables


class CheckConfigRefusesMisspellings(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-strict-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "mailplat.toml")
        with open(os.path.join(self.dir, "users"), "w") as f:
            f.write("alice@example.test:{PLAIN}pw\n")
        self.cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, self.cwd)

    def check_config(self, tables):
        with open(self.path, "w") as f:
            f.write(to_toml(tables))
        return self.run_check_config()

    def run_check_config(self):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["--config", self.path, "check-config"])
        return status, out.getvalue() + err.getvalue()

    def assertRefused(self, tables, expected):
        with open(self.path, "w") as f:
            f.write(to_toml(tables))
        before = sorted(os.listdir(self.dir))
        status, out = self.run_check_config()
        self.assertEqual(status, 2, out)
        self.assertIn(f"{self.path}: {expected}", out)
        self.assertEqual(len(out.strip().splitlines()), 1, out)
        self.assertEqual(sorted(os.listdir(self.dir)), before, "check-config created files")

    def assertEveryCase(self, cases):
        """Each (tables, expected) refused; every case that is not, reported together."""
        failures = []
        for tables, expected in cases:
            try:
                self.assertRefused(tables, expected)
            except self.failureException as e:
                failures.append(f"{expected}\n    {e}")
        if failures:
            self.fail(f"{len(failures)} not refused as expected:\n" + "\n".join(failures))

    def test_the_base_config_is_accepted(self):
        status, out = self.check_config(BASE)
        self.assertEqual(status, 0, out)
        self.assertIn("OK", out)

    def test_every_misspelt_key_is_named_with_the_right_spelling(self):
        self.assertGreaterEqual(len(MISSPELT) + len(MISSPELT_TABLES), 30)
        self.assertEveryCase(
            (merged(change), f"{key}: unknown key (did you mean {suggestion}?)") for change, key, suggestion in MISSPELT
        )

    def test_every_misspelt_table_is_named_with_the_right_spelling(self):
        def cases():
            for table, suggestion in MISSPELT_TABLES:
                tables = merged({})
                tables[table] = {"x": 1}
                yield tables, f"{table}: unknown table (did you mean {suggestion}?)"

        self.assertEveryCase(cases())

    def test_a_key_like_no_other_lists_the_known_ones(self):
        self.assertRefused(merged({"smtp": {"banner": "hi"}}), "smtp.banner: unknown key; known: restrict_sender")

    def test_a_config_that_turns_on_no_service_is_refused(self):
        tables = merged({})
        tables["listen"] = {"smtp": ""}
        self.assertRefused(tables, "listen: no service is turned on")

    def test_a_config_without_listen_is_refused(self):
        tables = merged({})
        del tables["listen"]
        self.assertRefused(tables, "listen: no service is turned on")

    def test_a_log_format_that_is_neither_text_nor_json_is_refused(self):
        self.assertRefused(merged({"log": {"format": "xml"}}), "log.format: must be one of text, json")

    def test_a_certificate_in_a_missing_directory_is_refused_naming_the_key(self):
        missing = os.path.join(self.dir, "nonexistent")
        tables = merged({"tls": {"certificate": os.path.join(missing, "cert.pem")}})
        self.assertRefused(tables, f"tls.certificate: cannot create {missing}/cert.pem: directory {missing} does not exist")
        self.assertFalse(os.path.exists(missing))


class PluginKeys(unittest.TestCase):
    """How a plugin says which keys its section holds (mailplat.plugin)."""

    def test_a_plugin_that_takes_any_key_is_not_checked(self):
        from mailplat import plugin

        p = plugin.BackendPlugin("check", "free", "takes anything", lambda s, c: None, keys=plugin.ANY_KEYS)
        self.assertTrue(plugin.check_section("check", p, {"whatever": 1}, "checks.free"))

    def test_a_plugin_that_declares_nothing_is_reported_unchecked(self):
        from mailplat import plugin

        p = plugin.BackendPlugin("check", "old", "no keys declared", lambda s, c: None)
        self.assertFalse(plugin.check_section("check", p, {"whatever": 1}, "checks.old"))

    def test_a_sub_table_is_checked_against_its_declared_keys(self):
        from mailplat import plugin

        p = plugin.BackendPlugin("delivery", "x", "x", lambda s, c: None, keys={"sub": ("a", "b")})
        e = self.assertRaises(plugin.PluginError, plugin.check_section, "delivery", p, {"sub": {"c": 1}}, "delivery")
        self.assertEqual(str(e), "delivery.sub.c: unknown key; known: a, b")


class LoadRefusesMisspellings(unittest.TestCase):
    """The same refusals from configuration.load, which twistd uses."""

    def test_the_error_names_the_file_and_the_key(self):
        d = tempfile.mkdtemp(prefix="mailplat-strict-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "mailplat.toml")
        with open(path, "w") as f:
            f.write(to_toml(merged({"server": {"hostnme": "x"}})))
        e = self.assertRaises(configuration.ConfigError, configuration.load, path, d)
        self.assertEqual(e.key, "server.hostnme")
        self.assertEqual(str(e), f"{path}: server.hostnme: unknown key (did you mean hostname?)")
